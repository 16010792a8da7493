"""The packaged all-MiniLM-L6-v2 through our own transformers + torch path."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

from rag.config import load_settings
from rag.embedding import DEFAULT_MODEL, Embedder
from rag.errors import ConfigError, ModelError
from rag.hub import auto_dtype, native_bf16_cpu, resolve_model_path


@pytest.fixture(scope="module")
def embedder(minilm_path) -> Embedder:
    """float32: the dtype whose vectors do not depend on the batch (auto may pick bfloat16)."""
    return Embedder(str(minilm_path), device="cpu", batch_size=4, dtype="float32")


def test_settings_come_from_the_model_files(embedder):
    assert embedder.pooling == "mean"
    assert embedder.max_length == 256
    assert embedder.dimension == 384
    assert embedder.max_content_tokens == 254  # [CLS] and [SEP] take two
    assert embedder.query_prefix == embedder.document_prefix == ""


def test_default_model_resolves_offline_to_the_package(minilm_path):
    assert resolve_model_path(DEFAULT_MODEL, "embedding.model") == str(minilm_path)


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
    big = Embedder(str(minilm_path), device="cpu", batch_size=16, dtype="float32").embed_documents(texts)
    assert np.abs(one_by_one - big).max() < 1e-5


def test_batches_hold_a_token_budget_longest_first(minilm_path):
    from rag.embedding import CPU_BATCH_TOKENS

    assert Embedder(str(minilm_path), device="cpu").batch_tokens == CPU_BATCH_TOKENS
    assert Embedder(str(minilm_path), device="cuda").batch_tokens is None  # a GPU takes whole batches
    embedder = Embedder(str(minilm_path), device="cpu", batch_size=8, batch_tokens=100, dtype="float32")
    lengths = [5, 40, 33, 12, 60, 7, 7, 90, 150, 3, 20, 20]
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches = list(embedder._batches(order, lengths))
    assert [i for batch in batches for i in batch] == order  # every text once, in order
    for batch in batches:
        assert len(batch) <= 8
        assert len(batch) == 1 or len(batch) * lengths[batch[0]] <= 100  # one over-budget text goes alone
    assert [len(b) for b in batches] == [1, 1, 1, 2, 5, 2]  # 150 | 90 | 60 | 40 33 | 20 20 12 7 7 | 5 3
    unlimited = Embedder(str(minilm_path), device="cpu", batch_size=8, batch_tokens=None, dtype="float32")
    assert [len(b) for b in unlimited._batches(order, lengths)] == [8, 4]
    # The budget only regroups texts: float32 vectors are the same either way.
    texts = [("word " * n).strip() for n in lengths]
    assert np.abs(embedder.embed_documents(texts) - unlimited.embed_documents(texts)).max() < 1e-5
    with pytest.raises(ConfigError, match=re.escape("embedding.batch_tokens")):
        load_settings(None, {"embedding.batch_tokens": 0})


def test_auto_dtype_is_bfloat16_only_on_a_cpu_that_computes_it(minilm_path, monkeypatch):
    assert auto_dtype("cuda") == auto_dtype("cuda:1") == auto_dtype("mps") == torch.float16
    for native in (True, False):
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda native=native: native)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
        assert native_bf16_cpu() is native
        expected = torch.bfloat16 if native else torch.float32
        assert auto_dtype("cpu") == expected
        embedder = Embedder(str(minilm_path), device="cpu")
        assert embedder.torch_dtype == expected and embedder.describe()["embedding_dtype"] == str(expected)[6:]
        # int8 quantization starts from float32 weights, whatever the CPU.
        assert Embedder(str(minilm_path), device="cpu", quantize="int8").torch_dtype == torch.float32
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True)  # AMX alone counts too
    assert auto_dtype("cpu") == torch.bfloat16
    assert Embedder(str(minilm_path), device="cpu", dtype="float32").torch_dtype == torch.float32


def test_bfloat16_vectors_stay_close_to_float32_in_any_batch(embedder, minilm_path):
    texts = [f"sentence number {i} " + "word " * (i * 7 % 40) for i in range(23)] + ["Chroma stores embeddings."]
    reference = embedder.embed_documents(texts)
    half = Embedder(str(minilm_path), device="cpu", dtype="bfloat16", batch_size=16)
    together, alone = half.embed_documents(texts), np.stack([half.embed_documents([t])[0] for t in texts])
    for vectors in (together, alone):
        assert vectors.dtype == np.float32 and np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
        assert (vectors * reference).sum(axis=1).min() > 0.999
    # Which texts share a batch moves a bfloat16 vector a little, never its neighbours.
    assert (together * alone).sum(axis=1).min() > 0.999
    assert ((together @ together.T).argsort(axis=1)[:, -3:] == (alone @ alone.T).argsort(axis=1)[:, -3:]).mean() > 0.9


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
    prompts = {"prompts": {"query": "search: ", "document": "doc: "}}
    (own / "config_sentence_transformers.json").write_text(json.dumps(prompts))
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
    with pytest.raises(ModelError, match=re.escape("embedding.model")):
        Embedder(str(tmp_path / "no-such-model"))
    with pytest.raises(ConfigError, match=re.escape("embedding.pooling")):
        load_settings(None, {"embedding.pooling": "median"})
