"""Texts -> normalized vectors, the query side and the document side: a model in this process
(``embedding.backend: transformers``, rag.embedding.local) or behind an OpenAI-compatible server
(``embedding.backend: openai``, rag.embedding.remote). Both keep one contract (rag.types.TextEmbedder).
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

from rag.embedding.common import KNOWN_PREFIXES
from rag.embedding.local import CPU_BATCH_TOKENS, Embedder
from rag.embedding.remote import OpenAIEmbedder
from rag.hub import DEFAULT_EMBEDDING_MODEL as DEFAULT_MODEL
from rag.types import TextEmbedder

BACKENDS: dict[str, Any] = {"transformers": Embedder, "openai": OpenAIEmbedder}

__all__ = ["CPU_BATCH_TOKENS", "DEFAULT_MODEL", "KNOWN_PREFIXES", "Embedder", "OpenAIEmbedder", "build_embedder"]


def build_embedder(settings: Mapping[str, Any]) -> TextEmbedder:
    """The embedder an ``embedding`` settings section describes: its ``backend``'s class, given the
    settings that class takes (each parameter is named as its settings field)."""
    backend = BACKENDS[settings.get("backend", "transformers")]
    accepted = inspect.signature(backend).parameters
    return backend(**{name: value for name, value in settings.items() if name in accepted})
