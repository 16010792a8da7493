"""Prompt -> text, streamed: a Hugging Face causal LM in this process (``generation.backend:
transformers``, rag.generation.local: hub ids, folders, GGUF files), or any OpenAI-compatible model
server (``generation.backend: openai``, rag.generation.remote: Ollama, vLLM, llama.cpp's server, ...).

Both keep one contract (rag.types.TextGenerator), so packing, citations, evidence selection, warnings
and ``--json`` behave the same whichever runs the model.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

from rag.generation.common import LONG_ANSWER, REQUEST_OPTIONS, SHORT_ANSWER, SMALL_GENERATOR
from rag.generation.local import Generator
from rag.generation.remote import OpenAIGenerator
from rag.hub import DEFAULT_GENERATION_MODEL as DEFAULT_MODEL
from rag.types import Completion, TextGenerator

BACKENDS: dict[str, Any] = {"transformers": Generator, "openai": OpenAIGenerator}

__all__ = ["DEFAULT_MODEL", "LONG_ANSWER", "REQUEST_OPTIONS", "SHORT_ANSWER", "SMALL_GENERATOR", "Completion",
           "Generator", "OpenAIGenerator", "build_generator"]


def build_generator(settings: Mapping[str, Any]) -> TextGenerator:
    """The generator a ``generation`` settings section describes: its ``backend``'s class, given the
    settings that class takes (each parameter is named as its settings field)."""
    backend = BACKENDS[settings.get("backend", "transformers")]
    accepted = inspect.signature(backend).parameters
    return backend(**{name: value for name, value in settings.items() if name in accepted})
