"""Prompt -> text from an OpenAI-compatible model server (``generation.backend: openai``): the model runs
elsewhere (Ollama, vLLM, llama.cpp's server, a GPU box down the hall); this process packs the prompt and
reads the answer as it streams (``POST {base_url}/chat/completions`` with ``stream: true``).

The same contract as the in-process generator. The server applies the model's chat template, so a
"formatted prompt" here is the user turn itself. With ``tokenizer`` (a local copy of the served
model's tokenizer) it is counted exactly as the server will see it, the template applied here too;
without one, by an estimate that errs high, with a tenth of the context window left free (said once).
"auto" answer settings follow the model's size when the tokenizer's folder holds the model's config
(its parameters counted without loading weights); otherwise the model is taken to be large.

A stream that is cut, stalls for ``timeout`` seconds, or turns unreadable after text has arrived ends
the answer there, and the Completion says why (``interrupted``); before any text, every failure raises
ModelServerError.
"""

from __future__ import annotations

import threading
from collections.abc import Generator as PyGenerator
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from rag.errors import ConfigError, GenerationError, ModelError, ModelServerError
from rag.generation.common import (
    FALLBACK_CONTEXT,
    SMALL_GENERATOR,
    PromptFormat,
    answer_settings,
    estimate_tokens,
    model_context_window,
    neutralize_common,
    stop_strings,
    too_long,
    until_stop,
    with_request_options,
)
from rag.hub import DEFAULT_GENERATION_MODEL, MODEL_LOADING, resolve_model_path
from rag.modelserver import ModelServer
from rag.text import note, one_line
from rag.types import Completion, Interrupted

ESTIMATE_MARGIN = 0.1  # of the context window, left free when prompts are counted by estimate
TEMPLATE_ALLOWANCE = 32  # tokens a chat template adds around the messages, in an estimate
MAX_STOP = 4  # stop strings OpenAI's API takes; any more are applied here only
# Events read after a stop string showed, waiting for the server's own end (and its usage), before
# the stream is closed: a server that ignores stop strings would otherwise run on to max_tokens.
DRAIN_EVENTS = 16


class OpenAIGenerator:
    """A model behind an OpenAI-compatible server, with the in-process Generator's contract.

    ``model`` is the server's name for it (what its ``/v1/models`` lists); ``temperature``, ``top_p``,
    ``max_new_tokens`` (as ``max_tokens``), ``stop`` and ``seed`` are sent with every request.
    """

    def __init__(
        self,
        model: str = DEFAULT_GENERATION_MODEL,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        tokenizer: str | None = None,
        timeout: float = 120.0,
        retries: int = 2,
        trust_remote_code: bool = False,
        max_new_tokens: int | str = "auto",
        temperature: float = 0.0,
        top_p: float = 1.0,
        stop: Sequence[str] | str = "auto",
        seed: int | None = 0,
        context_window: int | None = None,
        system_prompt: str | None = None,
    ):
        if not base_url:
            raise ConfigError("generation.base_url: set the model server's address (e.g. http://127.0.0.1:11434/v1) "
                              "for generation.backend: openai")
        self.model_name = str(model)
        self.tokenizer_source = tokenizer
        self.trust_remote_code = trust_remote_code
        self.max_new_tokens: int | str = max_new_tokens
        self.temperature = temperature
        self.top_p = top_p
        self.stop: tuple[str, ...] | str = stop if stop == "auto" else stop_strings(stop)
        self.seed = seed
        self.context_window: int | None = context_window
        self.system_prompt = system_prompt
        self.parameters: int | None = None  # known after load() when the tokenizer's folder has the config
        self.server = ModelServer(base_url, model=self.model_name, api_key=api_key, timeout=timeout,
                                  retries=retries, section="generation")
        self._format: PromptFormat | None = None
        self._loaded = False
        self._lock = threading.Lock()

    def with_options(self, **options: Any) -> OpenAIGenerator:
        """This generator with other answer settings for one request (rag.generation.REQUEST_OPTIONS),
        sharing the tokenizer and the connections."""
        return with_request_options(self, options)

    # ----------------------------------------------------------------- settling

    def load(self) -> OpenAIGenerator:
        """Load the local tokenizer (if any) and settle the context window and the "auto" answer
        settings; returns ``self``. Nothing is asked of the server: its first request tells."""
        with self._lock, MODEL_LOADING:
            if self._loaded:
                return self
            config, tokenizer = self._load_tokenizer() if self.tokenizer_source else (None, None)
            said = []
            if tokenizer is not None:
                self._format = PromptFormat(tokenizer, self.system_prompt, self.model_name)
                self.parameters = _parameters(config)
            else:
                said.append(f"generation.tokenizer is not set, so prompts for {self.model_name!r} are packed by an "
                            f"estimate of their tokens with {ESTIMATE_MARGIN:.0%} of the context window left free; "
                            "set it to the served model's tokenizer (hub id, folder or .gguf) for exact packing")
            if self.context_window is None:
                self.context_window = model_context_window(config, tokenizer)
                if self.context_window is None:
                    self.context_window = FALLBACK_CONTEXT
                    said.append(f"generation.context_window is not set: assuming {FALLBACK_CONTEXT} tokens; set it to "
                                "what the server runs the model with (e.g. Ollama's num_ctx)")
            self.max_new_tokens, self.stop = answer_settings(self._small(), self.max_new_tokens, self.stop)
            for line in said:
                note(line)
            self._loaded = True
        return self

    def _load_tokenizer(self) -> tuple[Any, Any]:
        from transformers import AutoConfig, AutoTokenizer

        assert self.tokenizer_source is not None
        source = resolve_model_path(self.tokenizer_source, "generation.tokenizer")
        try:
            tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=self.trust_remote_code)
        except Exception as exc:
            raise ModelError(f"generation.tokenizer: cannot load a tokenizer from {self.tokenizer_source!r}: point it "
                             f"at the served model's hub id, folder or .gguf ({one_line(exc)})") from None
        config = None
        if not Path(source).is_dir() or (Path(source) / "config.json").is_file():
            try:
                config = AutoConfig.from_pretrained(source, trust_remote_code=self.trust_remote_code)
            except Exception:  # a tokenizer without its model's config: sizes stay unknown
                config = None
        return config, tokenizer

    def _small(self) -> bool:
        return self.parameters is not None and self.parameters < SMALL_GENERATOR

    @property
    def small(self) -> bool:
        """Whether the served model has fewer than SMALL_GENERATOR parameters, as far as the tokenizer's
        folder tells (after ``load()``); a model of unknown size counts as large."""
        if not self._loaded:
            raise GenerationError(f"generator {self.model_name!r} is not loaded yet: call load() first")
        return self._small()

    @property
    def tokenizer(self) -> Any:
        """The local tokenizer (after ``load()``), or None when prompts are counted by estimate."""
        return self._format.tokenizer if self._format is not None else None

    # ----------------------------------------------------------------- prompts and tokens

    def prompt_budget(self) -> int:
        """Tokens a prompt may take: the context window less the answer's room, and less a margin
        when prompts are counted by estimate."""
        self.load()
        assert isinstance(self.context_window, int) and isinstance(self.max_new_tokens, int)
        margin = 0 if self._format is not None else int(self.context_window * ESTIMATE_MARGIN)
        return self.context_window - self.max_new_tokens - margin

    def format_prompt(self, user_message: str) -> str:
        """The user turn itself: the server puts it through the model's chat template."""
        return user_message

    def neutralize(self, text: str) -> str:
        """Untrusted text with special tokens' texts broken (see the in-process Generator): the local
        tokenizer's, or those of the common chat formats without one."""
        self.load()
        return self._format.neutralize(text) if self._format is not None else neutralize_common(text)

    def count_tokens(self, text: str) -> int:
        """The tokens the server will feed the model for this user turn: exact with a local tokenizer
        (the chat template applied as the server does), else an estimate that errs high."""
        return self._count(self._messages([{"role": "user", "content": text}]))

    def _count(self, messages: list[dict[str, str]]) -> int:
        self.load()
        if self._format is not None:
            return len(self._format.encode(self._format.render_chat(messages)))
        return sum(estimate_tokens(m["content"]) for m in messages) + TEMPLATE_ALLOWANCE

    def _messages(self, messages: Sequence[Mapping[str, str]]) -> list[dict[str, str]]:
        turns = [{"role": str(m["role"]), "content": str(m["content"])} for m in messages]
        if self.system_prompt and not any(turn["role"] == "system" for turn in turns):
            turns.insert(0, {"role": "system", "content": self.system_prompt})
        return turns

    # ----------------------------------------------------------------- generation

    def stream(self, prompt: str) -> Completion:
        """The answer to one user turn, in pieces as the server sends them (see Completion). A prompt
        that does not fit, or a server that fails before answering, raises here, before any piece."""
        return self.stream_chat([{"role": "user", "content": prompt}])

    def stream_chat(self, messages: Sequence[Mapping[str, str]]) -> Completion:
        """A conversation's next assistant turn, streamed."""
        turns = self._messages(messages)
        tokens = self._count(turns)
        if self._format is not None and tokens > self.prompt_budget():
            assert isinstance(self.context_window, int)
            raise too_long(tokens, int(self.max_new_tokens), self.context_window)
        response = self.server.open_stream("chat/completions", self.request(turns))
        usage = {"prompt_tokens": tokens, "completion_tokens": 0}
        return Completion(self._stream(response, usage), usage)

    def generate(self, prompt: str) -> tuple[str, dict[str, int]]:
        """The whole answer for one user turn, and its usage."""
        completion = self.stream(prompt)
        return "".join(completion), completion.usage

    def request(self, messages: list[dict[str, str]]) -> dict[str, Any]:
        """The body sent to the server for these messages (a benchmark replays it directly)."""
        body: dict[str, Any] = {
            "model": self.model_name, "messages": messages, "stream": True, "max_tokens": self.max_new_tokens,
            "temperature": self.temperature, "top_p": self.top_p, "stream_options": {"include_usage": True},
        }
        stops = stop_strings(self.stop)
        if stops:
            body["stop"] = list(stops[:MAX_STOP])
        if self.seed is not None:
            body["seed"] = self.seed
        return body

    def _stream(self, response: Any, usage: dict[str, int]) -> PyGenerator[str, None, None]:
        reported: dict[str, int] = {}
        received: list[str] = []
        state: dict[str, Any] = {"stopped": False}

        def stopped() -> None:
            state["stopped"] = True

        try:
            yield from until_stop(self._deltas(response, reported, received, state), stop_strings(self.stop), stopped)
        finally:
            response.close()
        # The server's own counts when it reported them (most do, asked with include_usage).
        usage["prompt_tokens"] = reported.get("prompt_tokens", usage["prompt_tokens"])
        usage["completion_tokens"] = reported.get("completion_tokens") or self._count_text("".join(received))
        if state.get("interrupted"):
            raise Interrupted(state["interrupted"])

    def _deltas(self, response: Any, reported: dict[str, int], received: list[str],
                state: dict[str, Any]) -> Iterator[str]:
        """The text deltas of a stream, and what it reports, until it ends. A stream that fails after
        text has arrived sets ``state["interrupted"]``; one that fails before raises ModelServerError."""
        httpx = self.server.httpx
        where = f"the model server at {self.server.url}"
        finished = False
        after_stop = 0
        failure: ModelServerError | None = None
        try:
            for event in self.server.events(response):
                if isinstance(event.get("usage"), dict):
                    reported.update({k: int(v) for k, v in event["usage"].items()
                                     if k in ("prompt_tokens", "completion_tokens") and isinstance(v, int)})
                for choice in event.get("choices") or []:
                    finished = finished or bool(choice.get("finish_reason"))
                    text = (choice.get("delta") or {}).get("content")
                    if text:
                        received.append(text)
                        yield text
                if state["stopped"]:
                    after_stop += 1
                    if after_stop > DRAIN_EVENTS:
                        return
        except httpx.TimeoutException:
            failure = self.server.timed_out("nothing more")
        except httpx.TransportError as exc:
            failure = ModelServerError(f"generation.base_url: the connection to {where} broke "
                                       f"({one_line(exc) or type(exc).__name__})")
        except ModelServerError as exc:
            failure = exc
        if failure is None and not finished:
            failure = ModelServerError(f"generation.base_url: {where} ended its stream before the answer was finished")
        if failure is None or state["stopped"]:
            return  # finished, or complete at its stop string and only the drain after it failed
        if not received:
            raise failure
        state["interrupted"] = f"{failure}; the answer ends where it stopped"

    def _count_text(self, text: str) -> int:
        if self._format is not None:
            return len(self._format.tokenizer(text, add_special_tokens=False)["input_ids"])
        return estimate_tokens(text)


def _parameters(config: Any) -> int | None:
    """The model's parameter count from its config alone (built on the meta device: no weights, no
    memory), or None when it cannot be built."""
    if config is None:
        return None
    try:
        import torch
        from transformers import AutoModelForCausalLM

        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
        return sum(p.numel() for p in model.parameters())
    except Exception:  # an architecture this transformers cannot build: the size stays unknown
        return None
