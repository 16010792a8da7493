"""The settings are the one place a default lives: a stage built by hand behaves as one built from
the config, and every key is documented (the configuration reference is generated from it)."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
from pydantic import BaseModel

from rag.chunking import Chunker
from rag.config import (
    ChunkingSettings,
    EmbeddingSettings,
    GenerationSettings,
    LexicalSettings,
    RerankSettings,
    RetrievalSettings,
    Settings,
    StoreSettings,
    default_config_yaml,
    load_settings,
)
from rag.embedding import Embedder, OpenAIEmbedder
from rag.generation import Generator, OpenAIGenerator
from rag.retrieval import Reranker, Retriever
from rag.stores.bm25 import LexicalIndex
from rag.stores.chroma import Store

# Each stage and the settings section handed to it whole (rag.pipeline).
STAGES = [
    (Retriever, RetrievalSettings),
    (Reranker, RerankSettings),
    (Embedder, EmbeddingSettings),
    (OpenAIEmbedder, EmbeddingSettings),
    (Chunker, ChunkingSettings),
    (Generator, GenerationSettings),
    (OpenAIGenerator, GenerationSettings),
    (LexicalIndex, LexicalSettings),
    (Store, StoreSettings),
]


@pytest.mark.parametrize(("stage", "section"), STAGES, ids=[stage.__name__ for stage, _ in STAGES])
def test_stage_defaults_are_the_settings_defaults(stage, section):
    parameters = inspect.signature(stage).parameters
    defaults = section()
    for name in section.model_fields:
        parameter = parameters.get(name)
        if parameter is None or parameter.default is inspect.Parameter.empty:
            continue  # set by the pipeline from elsewhere, or required
        assert parameter.default == getattr(defaults, name), f"{stage.__name__}({name}=...) vs {section.__name__}"


def _sections(model: type[BaseModel], prefix: str = ""):
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            yield from _sections(annotation, f"{prefix}{name}.")
        else:
            yield f"{prefix}{name}", field


def test_every_key_is_documented():
    undocumented = [key for key, field in _sections(Settings) if not (field.description or "").strip()]
    assert not undocumented, f"keys without a docstring: {undocumented}"


def test_default_yaml_is_the_settings_defaults():
    """configs/default.yaml is generated from the settings (python -m rag.config > configs/default.yaml),
    so it shows every key with its real default and documentation."""
    path = Path(__file__).resolve().parents[1] / "configs" / "default.yaml"
    assert path.read_text(encoding="utf-8") == default_config_yaml(), "regenerate: python -m rag.config"
    loaded = load_settings(path)
    assert loaded.model_dump(exclude={"store": {"path"}, "run": {"output"}}) == Settings().model_dump(
        exclude={"store": {"path"}, "run": {"output"}})
    assert loaded.store.path == ".rag"  # left unset in the file: relative to the working directory
