"""Prompt -> text with a Hugging Face causal LM in this process, streamed or in one piece.

The model is loaded by ``load()``, which every method that needs it calls first, so building a
pipeline, validating a config or ingesting documents never pays for a generator. ``count_tokens``
measures a formatted prompt exactly as ``stream``/``generate`` will feed it to the model, which is
what lets the prompt builder pack retrieved chunks up to the real context window instead of guessing
from characters. Prompt format and stop strings: rag.generation.common.
"""

from __future__ import annotations

import copy
import queue
import threading
from collections.abc import Generator as PyGenerator
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rag.errors import GenerationError, ModelError
from rag.generation.common import (
    FALLBACK_CONTEXT,
    SMALL_GENERATOR,
    PromptFormat,
    answer_settings,
    cut_at_stop,
    model_context_window,
    stop_strings,
    too_long,
    until_stop,
    with_request_options,
)
from rag.hub import DEFAULT_GENERATION_MODEL, MODEL_LOADING, pick_device, resolve_model_path, torch_dtype
from rag.types import Completion


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


class _OwnSampler:
    """Draws the next token from the (temperature- and top-p-shaped) distribution with a random
    generator of its own, and leaves only that token standing for generate()'s greedy step.

    Sampling through torch's process-wide generator, re-seeded per request, made a seeded answer
    depend on what other requests drew meanwhile: two concurrent requests with one seed got
    different answers. Each request now owns its stream of random numbers.
    """

    def __init__(self, seed: int | None):
        self.seed = seed
        self.rng: Any = None

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import torch

        if self.rng is None:  # on the scores' device, which is only known now
            self.rng = torch.Generator(device=scores.device)
            if self.seed is None:
                self.rng.seed()  # fresh entropy: unseeded sampling differs from call to call
            else:
                self.rng.manual_seed(self.seed)
        probs = torch.softmax(scores.float(), dim=-1)
        chosen = torch.multinomial(probs, 1, generator=self.rng)
        return torch.full_like(scores, float("-inf")).scatter_(1, chosen, 0.0)


class Generator:
    """A local causal LM behind ``format_prompt`` / ``count_tokens`` / ``stream`` / ``generate``.

    ``temperature == 0`` means greedy decoding; otherwise sampling with ``temperature`` and
    ``top_p`` from a random generator seeded with ``seed`` for each call (``seed=None``: not seeded),
    so a given prompt gives the same answer each time, whatever else runs at once.
    ``max_new_tokens`` and ``stop`` may be "auto": settled by the model's size (SHORT_ANSWER for
    small ones, LONG_ANSWER) by ``load()``. Values are checked by the settings (rag.config), which is
    where they come from.
    """

    def __init__(
        self,
        model: str = DEFAULT_GENERATION_MODEL,
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
        self.max_new_tokens: int | str = max_new_tokens
        self.temperature = temperature
        self.top_p = top_p
        self.repetition_penalty = repetition_penalty
        self.stop: tuple[str, ...] | str = stop if stop == "auto" else stop_strings(stop)
        self.seed = seed
        self.system_prompt = system_prompt
        self.context_window: int | None = context_window
        self.parameters: int | None = None  # known once loaded
        self._model: Any = None
        self._format: PromptFormat | None = None
        self._lock = threading.Lock()

    def with_options(self, **options: Any) -> Generator:
        """This generator with other answer settings for one request (``max_new_tokens``,
        ``temperature``, ``top_p``, ``stop``, ``seed``), sharing the loaded model and tokenizer, so a
        server's requests can each ask for their own without touching the shared one."""
        return with_request_options(self, options)

    # ----------------------------------------------------------------- loading

    @property
    def loaded(self) -> bool:
        """Whether the model and tokenizer are in memory yet."""
        return self._model is not None

    def load(self) -> Generator:
        """Load the tokenizer and model, and settle the "auto" answer settings and the context window
        by them; returns ``self``. Done once (later calls return at once), before the first use."""
        with self._lock, MODEL_LOADING:
            if self._model is None:
                tokenizer, model = self._load()
                self.parameters = sum(p.numel() for p in model.parameters())
                self.max_new_tokens, self.stop = answer_settings(self.small, self.max_new_tokens, self.stop)
                if self.context_window is None:
                    self.context_window = model_context_window(model.config, tokenizer) or FALLBACK_CONTEXT
                self._format = PromptFormat(tokenizer, self.system_prompt, self.model_name)
                self._model = model
        return self

    def _load(self) -> tuple[Any, Any]:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        name = self.model_name
        source = resolve_model_path(name, "generation.model")
        looks_local = Path(source).is_dir()
        device = pick_device(self.device)
        dtype = torch_dtype(self.dtype, device, "generation.dtype")
        try:
            tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=self.trust_remote_code)
            model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, trust_remote_code=self.trust_remote_code)
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
        model.to(device)  # type: ignore[arg-type]  # transformers' decorator hides .to()'s signature from mypy
        model.eval()
        # Lengths come from max_new_tokens alone; a max_length saved with the model would only make
        # transformers warn on every call that the two were both set.
        model.generation_config.max_length = None
        return tokenizer, model

    def _loaded(self) -> tuple[Any, PromptFormat]:
        """The model and the prompt format, loading them first if need be."""
        self.load()
        assert self._format is not None
        return self._model, self._format

    @property
    def model(self) -> Any:
        """The transformers model (after ``load()``)."""
        if self._model is None:
            raise GenerationError(f"generator {self.model_name!r} is not loaded yet: call load() first")
        return self._model

    @property
    def tokenizer(self) -> Any:
        """The model's tokenizer (after ``load()``)."""
        if self._format is None:
            raise GenerationError(f"generator {self.model_name!r} is not loaded yet: call load() first")
        return self._format.tokenizer

    @property
    def small(self) -> bool:
        """Whether the model has fewer than SMALL_GENERATOR parameters (after ``load()``)."""
        if self.parameters is None:
            raise GenerationError(f"generator {self.model_name!r} is not loaded yet: call load() first")
        return self.parameters < SMALL_GENERATOR

    # ----------------------------------------------------------------- prompts and tokens

    def prompt_budget(self) -> int:
        """Tokens a formatted prompt may take: the context window less the answer's room. The
        pipeline packs sources up to it; a prompt over it is refused before generation starts."""
        self.load()
        assert isinstance(self.context_window, int) and isinstance(self.max_new_tokens, int)
        return self.context_window - self.max_new_tokens

    @property
    def uses_chat_template(self) -> bool:
        """Whether prompts go through the tokenizer's chat template (else the plain format)."""
        return self._loaded()[1].uses_chat_template

    def format_prompt(self, user_message: str) -> str:
        """The full text the model sees for ``user_message``: chat-templated, or the plain format."""
        return self._loaded()[1].render(user_message)

    def format_chat(self, messages: Sequence[Mapping[str, str]]) -> str:
        """The full text the model sees for a conversation (roles system, user, assistant)."""
        return self._loaded()[1].render_chat(messages)

    def neutralize(self, text: str) -> str:
        """Untrusted text (document chunks, the question) with every special token's text broken by a
        zero-width space: a document holding ``<|im_end|><|im_start|>system`` must not end its turn
        and open a new one in the chat template; the tokenizer then reads it as ordinary text."""
        return self._loaded()[1].neutralize(text)

    def count_tokens(self, text: str) -> int:
        """Exactly how many tokens ``stream``/``generate`` will feed the model for this formatted text."""
        return len(self._loaded()[1].encode(text))

    def _decode(self, ids: Any) -> str:
        # No clean-up of tokenization spaces: it can rewrite text already streamed and it alters
        # genuine text for byte-level tokenizers.
        return self.tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    # ----------------------------------------------------------------- generation

    def _prepare(self, prompt: str) -> tuple[Any, Any, Any, Any]:
        """Input ids and attention mask on the model's device, the generation config and the logits
        processors."""
        import torch
        from transformers import LogitsProcessorList, TemperatureLogitsWarper, TopPLogitsWarper

        model, prompt_format = self._loaded()
        ids = prompt_format.encode(prompt)
        budget = self.prompt_budget()
        if len(ids) > budget:
            raise too_long(len(ids), int(self.max_new_tokens), budget + int(self.max_new_tokens))
        input_ids = torch.tensor([ids], dtype=torch.long, device=model.device)
        attention_mask = torch.ones_like(input_ids)

        config = copy.deepcopy(model.generation_config)
        # Set every sampling knob explicitly: generate() fills unset (None) ones from the model's own
        # generation_config (e.g. Qwen's temperature=0.7, top_k=20, repetition_penalty=1.05), which
        # would silently change what was asked for. generate() itself always takes the most likely
        # token; sampling is done by the processors below (temperature, top_p, then an own draw).
        config.update(max_new_tokens=self.max_new_tokens, min_new_tokens=None, min_length=0, do_sample=False,
                      num_beams=1, temperature=1.0, top_p=1.0, top_k=50, typical_p=1.0,
                      repetition_penalty=self.repetition_penalty)
        if config.pad_token_id is None:
            pad = self.tokenizer.pad_token_id
            if pad is None:
                eos = config.eos_token_id
                pad = eos[0] if isinstance(eos, (list, tuple)) else eos
            config.pad_token_id = pad
        processors = LogitsProcessorList()
        if self.temperature > 0:
            if self.temperature != 1.0:
                processors.append(TemperatureLogitsWarper(self.temperature))
            if self.top_p < 1.0:
                processors.append(TopPLogitsWarper(self.top_p))
            processors.append(_OwnSampler(self.seed))
        return input_ids, attention_mask, config, processors

    def _stopping(self, prompt_len: int, cancel: threading.Event | None = None) -> Any:
        from transformers import StoppingCriteriaList

        return StoppingCriteriaList([_StopCriteria(self._decode, prompt_len, self._stops(), cancel)])

    def _stops(self) -> tuple[str, ...]:
        return stop_strings(self.stop)

    def generate(self, prompt: str) -> tuple[str, dict[str, int]]:
        """The whole completion for a formatted prompt, and ``{"prompt_tokens", "completion_tokens"}``."""
        import torch

        input_ids, attention_mask, config, processors = self._prepare(prompt)
        prompt_len = input_ids.shape[1]
        with torch.inference_mode():
            output = self.model.generate(
                input_ids=input_ids,
                attention_mask=attention_mask,
                generation_config=config,
                logits_processor=processors,
                stopping_criteria=self._stopping(prompt_len),
            )
        new_tokens = output[0, prompt_len:]
        text, _ = cut_at_stop(self._decode(new_tokens), self._stops())
        return text, {"prompt_tokens": prompt_len, "completion_tokens": int(new_tokens.shape[0])}

    def stream(self, prompt: str) -> Completion:
        """The completion in pieces as it is generated (see Completion).

        ``model.generate`` runs in a worker thread feeding a ``TextIteratorStreamer``. A tail as long
        as the longest stop string (minus one) is held back, so a stop string split across pieces is
        never partly yielded. A prompt that does not fit raises here, before any piece.
        """
        prepared = self._prepare(prompt)
        usage = {"prompt_tokens": int(prepared[0].shape[1]), "completion_tokens": 0}
        return Completion(self._stream(*prepared, usage), usage)

    def stream_chat(self, messages: Sequence[Mapping[str, str]]) -> Completion:
        """A conversation's next assistant turn, streamed (no retrieval: the messages as they are)."""
        return self.stream(self.format_chat(messages))

    def _stream(self, input_ids: Any, attention_mask: Any, config: Any, processors: Any,
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
                        logits_processor=processors,
                        stopping_criteria=self._stopping(prompt_len, cancel),
                        streamer=streamer,
                    )
            except BaseException as exc:  # handed to the consumer thread, which re-raises it
                result["error"] = exc
                streamer.end()  # unblock the consumer

        worker = threading.Thread(target=work, name="rag-generate", daemon=True)
        worker.start()
        try:
            # Once a stop string shows, the worker is told to halt; its last pieces are drained.
            yield from until_stop(_pieces(streamer, worker), self._stops(), cancel.set)
        finally:
            cancel.set()
            worker.join()
        if "error" in result:
            raise result["error"]
        usage["completion_tokens"] = int(result["output"].shape[1] - prompt_len)


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
