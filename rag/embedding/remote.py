"""Texts -> vectors from an OpenAI-compatible model server (``embedding.backend: openai``, ``POST
{base_url}/embeddings``): Text Embeddings Inference, Ollama, vLLM, another `rag serve`.

Texts go in requests of ``batch_size``; the vectors are scaled to length 1 here when ``normalize`` is
set (servers differ in whether they do). The collection records the served model's name and the
vectors' dimension (learnt from the first answer) and refuses another, as with a local model.

Chunk sizes are counted in tokens: ``tokenizer`` names a local copy of the served model's tokenizer
(hub id or folder). Without one, the packaged all-MiniLM-L6-v2 tokenizer counts them (said once): most
embedding models read BERT-like word pieces, and ``max_length`` (512 unless set) leaves room.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from rag.embedding.common import content_tokens, prefixes
from rag.errors import ConfigError, ModelError
from rag.hub import DEFAULT_EMBEDDING_MODEL, resolve_model_path
from rag.modelserver import ModelServer
from rag.text import note, one_line

DEFAULT_MAX_LENGTH = 512  # what BERT-sized embedding models read; set embedding.max_length for others


class OpenAIEmbedder:
    """Encodes queries and documents into vectors with a model behind an OpenAI-compatible server."""

    device = "server"  # no local device: loading and chunking overlap with the server's work

    def __init__(
        self,
        model: str = DEFAULT_EMBEDDING_MODEL,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        tokenizer: str | None = None,
        timeout: float = 120.0,
        retries: int = 2,
        batch_size: int = 32,
        normalize: bool = True,
        max_length: int | None = None,
        query_prefix: str | None = None,
        document_prefix: str | None = None,
        trust_remote_code: bool = False,
    ):
        from transformers import AutoTokenizer

        if not base_url:
            raise ConfigError("embedding.base_url: set the model server's address (e.g. http://127.0.0.1:8080/v1) "
                              "for embedding.backend: openai")
        self.model_name = model
        self.batch_size = batch_size
        self.normalize = normalize
        self.server = ModelServer(base_url, model=model, api_key=api_key, timeout=timeout, retries=retries,
                                  section="embedding")
        setting = "embedding.tokenizer" if tokenizer else "embedding.model"
        source = resolve_model_path(tokenizer or DEFAULT_EMBEDDING_MODEL, setting)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
        except Exception as exc:
            raise ModelError(f"{setting}: cannot load a tokenizer from {tokenizer!r} ({one_line(exc)})") from None
        if tokenizer is None:
            note(f"embedding.tokenizer is not set, so chunk sizes for {model!r} are counted in all-MiniLM-L6-v2's "
                 "tokens; set it to the served model's tokenizer (hub id or folder) to count its own")
        own_limit = getattr(self.tokenizer, "model_max_length", None) if tokenizer else None
        if not (isinstance(own_limit, int) and 0 < own_limit < 1_000_000):
            own_limit = DEFAULT_MAX_LENGTH
        self.max_length: int = max_length or own_limit
        self.query_prefix, self.document_prefix = prefixes(model, {}, query_prefix, document_prefix)
        self.dimension = 0  # learnt from the server's first answer

    @property
    def max_content_tokens(self) -> int:
        """The most text tokens one input can carry, prefix and special tokens excluded."""
        return content_tokens(self.tokenizer, self.max_length, self.document_prefix)

    @property
    def dtype_name(self) -> str | None:
        """Not known here: the server computes the vectors."""
        return None

    def embed_queries(self, texts: Sequence[str]) -> np.ndarray:
        return self._encode([self.query_prefix + t for t in texts])

    def embed_documents(self, texts: Sequence[str], progress: Callable[[int], None] | None = None) -> np.ndarray:
        return self._encode([self.document_prefix + t for t in texts], progress)

    def _encode(self, texts: list[str], progress: Callable[[int], None] | None = None) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        batches = []
        for begin in range(0, len(texts), self.batch_size):
            batches.append(self._request(texts[begin : begin + self.batch_size]))
            if progress:
                progress(len(batches[-1]))
        vectors = np.concatenate(batches)
        if self.normalize:
            vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        return vectors

    def _request(self, texts: list[str]) -> np.ndarray:
        answer = self.server.post("embeddings", {"model": self.model_name, "input": texts, "encoding_format": "float"})
        try:
            rows = sorted(answer["data"], key=lambda row: row["index"])
            vectors = np.asarray([row["embedding"] for row in rows], dtype=np.float32)
        except (KeyError, TypeError, ValueError):
            raise self.server.malformed(f"embeddings answered {str(answer)[:200]!r}") from None
        if vectors.ndim != 2 or len(vectors) != len(texts):
            raise self.server.malformed(f"embeddings gave {len(vectors)} vectors for {len(texts)} texts")
        if self.dimension and vectors.shape[1] != self.dimension:
            raise ModelError(f"embedding.model: {self.model_name!r} at {self.server.url} answered vectors of "
                             f"{vectors.shape[1]} dimensions after {self.dimension}; is another model served now?")
        self.dimension = int(vectors.shape[1])
        return vectors

    def describe(self) -> dict[str, Any]:
        """What a collection records about the model that built it: the served model's name and its
        vectors' dimension (asked of the server the first time)."""
        if not self.dimension:
            self.embed_documents(["dimension"])
        return {
            "embedding_model": self.model_name,
            "embedding_dimension": self.dimension,
            "embedding_normalized": self.normalize,
            "embedding_max_length": self.max_length,
            "embedding_document_prefix": self.document_prefix,
        }
