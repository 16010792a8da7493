"""Texts -> unit-length vectors with transformers + torch, the query side and the document side.

The model folder is read the way sentence-transformers lays it out (``modules.json``,
``1_Pooling/config.json``, ``sentence_bert_config.json``, ``config_sentence_transformers.json``), so
pooling, normalization, the maximum sequence length and query/document prompts come from the model's
own files instead of guesses. sentence-transformers itself is not needed at run time.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rag.embedding.common import content_tokens, prefixes
from rag.errors import ConfigError, ModelError
from rag.hub import (
    DEFAULT_EMBEDDING_MODEL,
    MODEL_LOADING,
    local_folder,
    pick_device,
    resolve_model_path,
    torch_dtype,
)

# embedding.batch_tokens: auto on the CPU: padded tokens per forward pass (see Embedder._batches).
CPU_BATCH_TOKENS = 2048

def _return_freed_memory() -> None:
    """Hand the heap pages torch freed back to the system after a batch of documents: without it,
    glibc's fragmented heap makes peak memory grow with the length of an ingest."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):  # not glibc
            ctypes.CDLL("libc.so.6").malloc_trim(0)


def _read_json(folder: Path | None, name: str) -> dict[str, Any]:
    if folder is None or not (folder / name).is_file():
        return {}
    return json.loads((folder / name).read_text(encoding="utf-8"))


class Embedder:
    """Encodes queries and documents into L2-normalized vectors, in length-sorted batches."""

    def __init__(
        self,
        model: str = DEFAULT_EMBEDDING_MODEL,
        *,
        device: str = "auto",
        batch_size: int = 32,
        batch_tokens: int | str | None = "auto",
        pooling: str | None = None,
        normalize: bool = True,
        max_length: int | None = None,
        query_prefix: str | None = None,
        document_prefix: str | None = None,
        dtype: str = "auto",
        quantize: str = "none",
        trust_remote_code: bool = False,
    ):
        self.model_name = model
        self.path = resolve_model_path(model, "embedding.model")
        self.device = pick_device(device)
        self.batch_size = batch_size
        self.batch_tokens: int | None = (CPU_BATCH_TOKENS if self.device == "cpu" else None) \
            if batch_tokens == "auto" else (int(batch_tokens) if batch_tokens else None)
        self.normalize = normalize
        self.trust_remote_code = trust_remote_code
        self.quantize = None if quantize == "none" else quantize
        self._dtype = dtype
        self._model: torch.nn.Module | None = None
        try:
            from transformers import AutoConfig, AutoTokenizer

            self.tokenizer = AutoTokenizer.from_pretrained(self.path, trust_remote_code=trust_remote_code)
            self.config = AutoConfig.from_pretrained(self.path, trust_remote_code=trust_remote_code)
        except Exception as exc:
            raise ModelError(
                f"embedding.model: cannot load {model!r} ({type(exc).__name__}). Point it at a local "
                "model folder, or run once with network access so it can be downloaded."
            ) from None
        folder = local_folder(self.path)
        st_config = _read_json(folder, "config_sentence_transformers.json")
        self.pooling = pooling or self._pooling_from_files(folder)
        self.max_length = max_length or self._max_length_from_files(folder)
        self.query_prefix, self.document_prefix = prefixes(model, st_config.get("prompts") or {}, query_prefix,
                                                           document_prefix)
        self.dimension = int(getattr(self.config, "hidden_size", 0) or 0)

    # -- what the model's files say ------------------------------------------------------------

    @staticmethod
    def _pooling_from_files(folder: Path | None) -> str:
        modules = _read_json(folder, "modules.json") if folder else {}
        pooling_dir = next(
            (m.get("path") for m in modules if isinstance(m, dict) and "Pooling" in m.get("type", "")),
            "1_Pooling",
        ) if isinstance(modules, list) else "1_Pooling"
        config = _read_json(folder / pooling_dir, "config.json") if folder else {}
        if config.get("pooling_mode_cls_token"):
            return "cls"
        if config.get("pooling_mode_lasttoken"):
            return "last"
        if config.get("pooling_mode_max_tokens"):
            return "max"
        return "mean"

    def _max_length_from_files(self, folder: Path | None) -> int:
        limits = [
            _read_json(folder, "sentence_bert_config.json").get("max_seq_length"),
            getattr(self.config, "max_position_embeddings", None),
        ]
        tokenizer_max = getattr(self.tokenizer, "model_max_length", None)
        if tokenizer_max and tokenizer_max < 1_000_000:
            limits.append(tokenizer_max)
        known = [int(x) for x in limits if x]
        return min(known) if known else 512

    # -- the model -----------------------------------------------------------------------------

    @property
    def max_content_tokens(self) -> int:
        """The most text tokens one input can carry, prefix and special tokens excluded."""
        return content_tokens(self.tokenizer, self.max_length, self.document_prefix)

    @property
    def torch_dtype(self) -> torch.dtype:
        """The configured dtype; ``auto`` is rag.hub.auto_dtype for this device (and float32 when
        ``quantize`` is set, since dynamic int8 quantization starts from float32 weights)."""
        if self._dtype == "auto" and self.quantize:
            return torch.float32
        return torch_dtype(self._dtype, self.device, "embedding.dtype")

    @property
    def dtype_name(self) -> str:
        """The dtype the vectors are computed in, as a collection records it (e.g. ``"bfloat16"``)."""
        return str(self.torch_dtype).removeprefix("torch.")

    def _load(self) -> torch.nn.Module:
        if self._model is not None:
            return self._model
        from transformers import AutoModel

        with MODEL_LOADING:
            if self._model is not None:  # another thread loaded it meanwhile
                return self._model
            try:
                model = AutoModel.from_pretrained(self.path, dtype=self.torch_dtype,
                                                  trust_remote_code=self.trust_remote_code)
            except Exception as exc:
                raise ModelError(f"embedding.model: cannot load weights of {self.model_name!r}: {exc}") from None
            model.eval()
            if self.quantize == "int8":
                if self.device != "cpu":
                    raise ConfigError("embedding.quantize: int8 runs on the CPU only; set embedding.device: cpu")
                model = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
            self._model = model.to(self.device)
        return self._model

    def embed_queries(self, texts: Sequence[str]) -> np.ndarray:
        return self._encode([self.query_prefix + t for t in texts])

    def embed_documents(self, texts: Sequence[str], progress: Callable[[int], None] | None = None) -> np.ndarray:
        vectors = self._encode([self.document_prefix + t for t in texts], progress)
        _return_freed_memory()
        return vectors

    def _encode(self, texts: list[str], progress: Callable[[int], None] | None = None) -> np.ndarray:
        """Length-sorted batches waste no compute on padding; results come back in input order."""
        model = self._load()
        out = np.zeros((len(texts), self.dimension), dtype=np.float32)
        if not texts:
            return out
        encoded = self.tokenizer(texts, add_special_tokens=True, truncation=True, max_length=self.max_length)
        order = sorted(range(len(texts)), key=lambda i: -len(encoded["input_ids"][i]))
        with torch.inference_mode():
            for batch in self._batches(order, [len(ids) for ids in encoded["input_ids"]]):
                features = {key: self._padded([encoded[key][i] for i in batch], key) for key in encoded}
                # Pooled and normalized in float32 whatever the model's dtype: sums over hundreds of
                # tokens in 16-bit floats would lose precision the model itself did not.
                hidden = model(**features).last_hidden_state.float()
                vectors = self._pool(hidden, features["attention_mask"])
                if self.normalize:
                    vectors = torch.nn.functional.normalize(vectors, p=2, dim=1)
                out[batch] = vectors.cpu().numpy()
                if progress:
                    progress(len(batch))
        return out

    def _batches(self, order: list[int], lengths: list[int]) -> Iterator[list[int]]:
        """Consecutive runs of ``order`` (longest first) of at most ``batch_size`` texts and, with
        ``batch_tokens``, at most that many padded tokens. On the CPU a fixed count of texts is the
        wrong unit: 32 texts of 256 tokens made activations that left the cache, and forward passes
        under a token budget ran faster (docs/benchmarks.md, Batching)."""
        begin = 0
        while begin < len(order):
            count = self.batch_size
            if self.batch_tokens:
                count = max(1, min(count, self.batch_tokens // max(lengths[order[begin]], 1)))
            yield order[begin : begin + count]
            begin += count

    def _padded(self, rows: list[list[int]], key: str) -> torch.Tensor:
        """One padded tensor, on the tokenizer's padding side. Filled in numpy, several times faster
        than transformers' ``pad``: time in which the model does not run (docs/benchmarks.md)."""
        fill = (self.tokenizer.pad_token_id or 0) if key == "input_ids" else 0
        array = np.full((len(rows), max(map(len, rows))), fill, dtype=np.int64)
        left = self.tokenizer.padding_side == "left"
        for row, values in zip(array, rows, strict=True):
            if left:
                row[len(row) - len(values) :] = values
            else:
                row[: len(values)] = values
        return torch.from_numpy(array).to(self.device)

    def _pool(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if self.pooling == "cls":
            return hidden[:, 0]
        if self.pooling == "last":
            # Works for left and right padding: the last position whose mask is 1.
            positions = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
            last = (positions * mask).argmax(dim=1)
            return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        if self.pooling == "max":
            return hidden.masked_fill(weights == 0, float("-inf")).max(dim=1).values
        return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)

    def describe(self) -> dict[str, Any]:
        """What a collection records about the model that built it."""
        return {
            "embedding_model": self.model_name,
            "embedding_dimension": self.dimension,
            "embedding_pooling": self.pooling,
            "embedding_normalized": self.normalize,
            "embedding_max_length": self.max_length,
            "embedding_document_prefix": self.document_prefix,
            "embedding_dtype": self.dtype_name,
        }

