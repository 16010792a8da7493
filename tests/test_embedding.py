"""The packaged all-MiniLM-L6-v2 through our own transformers + torch path."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from rag.config import load_settings
from rag.embedding import DEFAULT_MODEL, Embedder, resolve_model_path
from rag.errors import ConfigError, ModelError


@pytest.fixture(scope="module")
def embedder(minilm_path) -> Embedder:
    return Embedder(str(minilm_path), device="cpu", batch_size=4)


def test_settings_come_from_the_model_files(embedder):
    assert embedder.pooling == "mean"
    assert embedder.max_length == 256
    assert embedder.dimension == 384
    assert embedder.max_content_tokens == 254  # [CLS] and [SEP] take two
    assert embedder.query_prefix == embedder.document_prefix == ""


def test_default_model_resolves_offline_to_the_package(minilm_path):
    assert resolve_model_path(DEFAULT_MODEL) == str(minilm_path)


def test_vectors_are_unit_length_and_meaningful(embedder):
    vectors = embedder.embed_documents([
        "A man is eating food.",
        "A man is eating a piece of bread.",
        "The new movie is awful.",
        "The stock market fell sharply today.",
    ])
    assert vectors.shape == (4, 384)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    similarity = vectors @ vectors.T
    assert similarity[0, 1] > 0.6 > similarity[0, 2]
    assert similarity[0, 1] > similarity[0, 3]


def test_batching_and_order_do_not_change_vectors(embedder, minilm_path):
    texts = [f"sentence number {i} " + "word " * (i * 7 % 40) for i in range(23)]
    one_by_one = np.stack([embedder.embed_documents([t])[0] for t in texts])
    big = Embedder(str(minilm_path), device="cpu", batch_size=16).embed_documents(texts)
    assert np.abs(one_by_one - big).max() < 1e-5


def test_matches_sentence_transformers_reference(embedder, minilm_path):
    st = pytest.importorskip("sentence_transformers", reason="reference implementation not installed")
    texts = ["Chroma stores embeddings.", "Ein kurzer deutscher Satz.", "x " * 400]
    reference = st.SentenceTransformer(str(minilm_path), device="cpu").encode(texts, normalize_embeddings=True)
    assert np.abs(reference - embedder.embed_documents(texts)).max() < 1e-5


def test_prefixes_for_known_families_and_config(tmp_path, minilm_path):
    e5 = tmp_path / "multilingual-e5-small"
    e5.symlink_to(minilm_path, target_is_directory=True)
    embedder = Embedder(str(e5), device="cpu")
    assert (embedder.query_prefix, embedder.document_prefix) == ("query: ", "passage: ")
    prefix_tokens = len(embedder.tokenizer("passage: ", add_special_tokens=False)["input_ids"])
    assert prefix_tokens == 2 and embedder.max_content_tokens == 254 - prefix_tokens
    custom = Embedder(str(minilm_path), device="cpu", query_prefix="Q: ", document_prefix="")
    assert custom.query_prefix == "Q: "
    # A model's own config_sentence_transformers.json prompts win over the family guess.
    own = tmp_path / "own"
    own.mkdir()
    for item in minilm_path.iterdir():
        (own / item.name).symlink_to(item)
    (own / "config_sentence_transformers.json").unlink()
    (own / "config_sentence_transformers.json").write_text(json.dumps({"prompts": {"query": "search: ", "document": "doc: "}}))
    assert Embedder(str(own), device="cpu").query_prefix == "search: "


def test_cls_pooling_read_from_pooling_config(tmp_path, minilm_path):
    folder = tmp_path / "cls-model"
    folder.mkdir()
    for item in minilm_path.iterdir():
        if item.name != "1_Pooling":
            (folder / item.name).symlink_to(item)
    (folder / "1_Pooling").mkdir()
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_cls_token": True}))
    assert Embedder(str(folder), device="cpu").pooling == "cls"


def test_int8_stays_close_to_fp32(embedder, minilm_path):
    """The stated bound: mean cosine to float32 >= 0.9, none below 0.8 (measured on 600 SciFact
    abstracts: mean 0.925, min 0.848; see examples/benchmarks/quantize.py)."""
    texts = ["Solar inverters convert direct current to alternating current.", "Hotels in London cost more.",
             "The committee approved the budget after a long debate.", "Glaciers retreat as summers warm.",
             "Mean pooling averages token vectors weighted by the attention mask."]
    quantized = Embedder(str(minilm_path), device="cpu", quantize="int8").embed_documents(texts)
    cosine = (quantized * embedder.embed_documents(texts)).sum(axis=1)
    assert cosine.mean() >= 0.9 and cosine.min() >= 0.8


def test_bfloat16_stays_close_to_fp32(embedder, minilm_path):
    """The stated bound for ``embedding.dtype: bfloat16``: every cosine to float32 >= 0.999 (measured
    on docs-haystack chunks: mean 0.99995, min 0.9999)."""
    texts = ["Solar inverters convert direct current to alternating current.", "Hotels in London cost more.",
             "The committee approved the budget after a long debate.", "Glaciers retreat as summers warm.",
             "Mean pooling averages token vectors weighted by the attention mask."]
    half = Embedder(str(minilm_path), device="cpu", dtype="bfloat16")
    assert half.torch_dtype == torch.bfloat16 and embedder.torch_dtype == torch.float32
    vectors = half.embed_documents(texts)
    assert vectors.dtype == np.float32 and np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
    assert (vectors * embedder.embed_documents(texts)).sum(axis=1).min() >= 0.999


def test_bad_model_and_settings(tmp_path):
    with pytest.raises(ModelError, match="embedding.model"):
        Embedder(str(tmp_path / "no-such-model"))
    with pytest.raises(ConfigError, match="embedding.pooling"):
        load_settings(None, {"embedding.pooling": "median"})
