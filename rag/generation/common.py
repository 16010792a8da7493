"""What both generators share: the answer settings a request may change, "auto" answer lengths, how a
prompt is formatted and counted with a tokenizer, untrusted text neutralized, and stop strings cut.

Prompt format: when the tokenizer has a chat template, the user message (and the system prompt, if
any) go through it with the generation prompt appended, and the result is encoded *without* adding
special tokens again (the template already has them). Without a chat template the plain format is
``"{system}\\n\\n{user}\\n\\nAnswer:"`` (the system part and its blank line left out when there is no
system prompt), encoded with the tokenizer's usual special tokens.

Stop strings: the text ends just before the earliest stop string, and no piece of a stream ever holds
part of one (a tail as long as the longest stop string, less one character, is held back).
"""

from __future__ import annotations

import copy
import math
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

from rag.errors import GenerationError

# What one request may change (with_options); the rest is the model's and the server's.
REQUEST_OPTIONS = ("max_new_tokens", "temperature", "top_p", "stop", "seed")
# Generators with fewer parameters are "small": the pipeline shows them the best sentences instead of
# whole chunks and a short-answer template, and their "auto" answer is one short line: longer
# completions from a 135M model were the answer followed by restatement and drift.
SMALL_GENERATOR = 1_000_000_000
SHORT_ANSWER: dict[str, Any] = {"max_new_tokens": 48, "stop": ("\n",)}
LONG_ANSWER: dict[str, Any] = {"max_new_tokens": 256, "stop": ()}
# Some configs advertise windows of 128k+ tokens; a default that large would let packing build
# prompts that are slow and memory-hungry on small machines. Set context_window to go beyond it.
MAX_DEFAULT_CONTEXT = 32768
# Used only when neither the config, the model nor the tokenizer says anything sensible.
FALLBACK_CONTEXT = 2048
CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length", "max_seq_len")
PLAIN_ANSWER_CUE = "Answer:"
# Put inside a special token's text so the tokenizer no longer matches it; invisible when printed.
ZERO_WIDTH_SPACE = "\u200b"
# Special-token spellings of the common chat formats (ChatML and Llama 3's <|...|>, Llama 2's [INST]
# and <s>, Gemma's turns): what untrusted text is cleaned of when no tokenizer says which ones it has.
COMMON_SPECIAL = re.compile(r"<\|[^|<>\s]{1,40}\|>|</?s>|\[/?INST\]|<(?:start|end)_of_turn>|<(?:bos|eos|pad)>")


def answer_settings(small: bool, max_new_tokens: int | str, stop: Sequence[str] | str) -> tuple[int, tuple[str, ...]]:
    """``max_new_tokens`` and ``stop`` with "auto" settled by the generator's size."""
    chosen = SHORT_ANSWER if small else LONG_ANSWER
    length = chosen["max_new_tokens"] if max_new_tokens == "auto" else int(max_new_tokens)
    stops = chosen["stop"] if stop == "auto" else stop_strings(stop)
    return length, tuple(stops)


def stop_strings(stop: Sequence[str] | str) -> tuple[str, ...]:
    """The stop setting as a tuple of non-empty strings (one string is one stop string)."""
    return (stop,) if isinstance(stop, str) and stop else tuple(s for s in stop if s)


def model_context_window(config: Any, tokenizer: Any) -> int | None:
    """The smallest sensible limit a model config and its tokenizer state, capped at
    MAX_DEFAULT_CONTEXT; None when neither says anything."""
    configs = [config, getattr(config, "text_config", None)] if config is not None else []
    limits = [getattr(c, key) for c in configs if c is not None for key in CONTEXT_KEYS
              if isinstance(getattr(c, key, None), int) and getattr(c, key) > 0]
    tok_max = getattr(tokenizer, "model_max_length", None)
    if isinstance(tok_max, int) and 0 < tok_max < 1_000_000:
        limits.append(tok_max)
    return min(*limits, MAX_DEFAULT_CONTEXT) if limits else None


def check_options(options: Mapping[str, Any]) -> None:
    unknown = set(options) - set(REQUEST_OPTIONS)
    if unknown:
        raise GenerationError(f"unknown generation options {sorted(unknown)}; use {', '.join(REQUEST_OPTIONS)}")


_G = TypeVar("_G")


def with_request_options(generator: _G, options: Mapping[str, Any]) -> _G:
    """A copy of ``generator`` (loaded first, so the copy shares its model or tokenizer and
    connections) with other answer settings for one request: a server's requests each ask for their
    own without touching the shared generator."""
    check_options(options)
    generator.load()  # type: ignore[attr-defined]  # both generators have load(); a Protocol bound would lose the subclass
    other = copy.copy(generator)
    for name, value in options.items():
        if value is not None:
            setattr(other, name, stop_strings(value) if name == "stop" else value)
    return other


def too_long(tokens: int, max_new_tokens: int, window: int) -> GenerationError:
    return GenerationError(
        f"the prompt is {tokens} tokens and generation.max_new_tokens is {max_new_tokens}: together more than "
        f"the context window of {window} tokens; shorten the prompt (fewer or smaller chunks), lower "
        "generation.max_new_tokens, or raise generation.context_window if the model supports it")


class PromptFormat:
    """How a model with this tokenizer sees a prompt: its chat template (or the plain format), the exact
    token ids, and its special tokens' texts, which untrusted text must not be able to spell."""

    def __init__(self, tokenizer: Any, system_prompt: str | None, model_name: str):
        self.tokenizer = tokenizer
        self.system_prompt = system_prompt
        self.model_name = model_name
        self.uses_chat_template = bool(getattr(tokenizer, "chat_template", None))
        decoder = getattr(tokenizer, "added_tokens_decoder", {}) or {}
        texts = {str(t) for t in getattr(tokenizer, "all_special_tokens", [])}
        texts |= {t.content for t in decoder.values() if getattr(t, "special", False)}
        longest_first = sorted((t for t in texts if len(t) > 1), key=len, reverse=True)
        self.special = re.compile("|".join(map(re.escape, longest_first))) if longest_first else re.compile(r"(?!)")

    def render(self, user_message: str) -> str:
        """The full text the model sees for one user message: chat-templated, or the plain format."""
        if not self.uses_chat_template:
            parts = [self.system_prompt] if self.system_prompt else []
            return "\n\n".join([*parts, user_message, PLAIN_ANSWER_CUE])
        return self.render_chat([{"role": "user", "content": user_message}])

    def render_chat(self, messages: Sequence[Mapping[str, str]]) -> str:
        """The full text the model sees for a conversation (the system prompt first unless it has one)."""
        turns = [{"role": str(m["role"]), "content": str(m["content"])} for m in messages]
        if self.system_prompt and not any(turn["role"] == "system" for turn in turns):
            turns.insert(0, {"role": "system", "content": self.system_prompt})
        if not self.uses_chat_template:
            if [turn["role"] for turn in turns if turn["role"] != "system"] == ["user"]:
                system = [turn["content"] for turn in turns if turn["role"] == "system"]
                return "\n\n".join([*system, turns[-1]["content"], PLAIN_ANSWER_CUE])
            lines = [f"{turn['role'].capitalize()}: {turn['content']}" for turn in turns]
            return "\n\n".join([*lines, "Assistant:"])
        try:
            return self._apply_chat_template(turns)
        except GenerationError:
            if turns[0]["role"] != "system" or len(turns) < 2 or turns[1]["role"] != "user":
                raise
        # Some chat templates (e.g. Gemma's) refuse a system turn: fold it into the first user turn.
        folded = {"role": "user", "content": f"{turns[0]['content']}\n\n{turns[1]['content']}"}
        return self._apply_chat_template([folded, *turns[2:]])

    def _apply_chat_template(self, messages: list[dict[str, str]]) -> str:
        try:
            text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        except Exception as exc:
            raise GenerationError(f"the chat template of {self.model_name!r} failed: {exc}") from exc
        return str(text)

    def encode(self, text: str) -> list[int]:
        # A chat-templated prompt carries its own special tokens; adding them again would double BOS.
        return list(self.tokenizer(text, add_special_tokens=not self.uses_chat_template)["input_ids"])

    def neutralize(self, text: str) -> str:
        return self.special.sub(_broken, text)


def neutralize_common(text: str) -> str:
    """Untrusted text with the common chat formats' special-token spellings broken (no tokenizer known)."""
    return COMMON_SPECIAL.sub(_broken, text)


def _broken(match: re.Match[str]) -> str:
    return match[0][0] + ZERO_WIDTH_SPACE + match[0][1:]


def estimate_tokens(text: str) -> int:
    """More tokens than most tokenizers make of ``text``, without one: a character of ASCII for a
    third of a token (English runs about four characters a token, code about three) and each byte of
    other characters for half a token (a CJK character is three bytes, one or two tokens)."""
    other = sum(len(ch.encode("utf-8")) for ch in text if ord(ch) > 127)
    ascii_chars = sum(1 for ch in text if ord(ch) <= 127)
    return math.ceil(ascii_chars / 3 + other / 2)


def cut_at_stop(text: str, stops: Sequence[str]) -> tuple[str, bool]:
    """``text`` up to the earliest stop string, and whether one was found."""
    cuts = [i for i in (text.find(stop) for stop in stops) if i >= 0]
    if not cuts:
        return text, False
    return text[: min(cuts)], True


def until_stop(pieces: Iterable[str], stops: Sequence[str], stopped: Callable[[], None]) -> Iterator[str]:
    """The text of ``pieces`` up to the earliest stop string, in pieces that never hold part of one.

    ``stopped`` is called once, when a stop string first shows; the rest of ``pieces`` is still read
    (the generation halts at the same stop string), and the earliest stop string in the complete text
    decides the cut, exactly as ``cut_at_stop`` does on the whole text.
    """
    hold = max((len(s) for s in stops), default=1) - 1
    buffer = ""
    emitted = 0
    found = False
    for piece in pieces:
        buffer += piece
        if found:
            continue
        found = cut_at_stop(buffer, stops)[1]
        if found:
            stopped()
            continue
        safe = len(buffer) - hold
        if safe > emitted:
            yield buffer[emitted:safe]
            emitted = safe
    text, _ = cut_at_stop(buffer, stops)
    if len(text) > emitted:
        yield text[emitted:]
