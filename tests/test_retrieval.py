"""Retrieval: fusion against hand-worked rankings, MMR, the lexical index kept in step with Chroma,
hybrid search, filters, the score threshold and a tiny random-weight cross-encoder reranker."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from rag.errors import ConfigError
from rag.pipeline import Pipeline
from rag.retrieval import mmr, rrf, weighted
from support import PROSE, make_folder


def test_rrf_hand_worked():
    # a: 1/(60+1) + 1/(60+3) = 0.032266; b: 1/(60+2) + 1/(60+1) = 0.032522; c: 1/(60+3); d: 1/(60+2)
    fused = dict(rrf({"dense": ["a", "b", "c"], "lexical": ["b", "d", "a"]}, k=60))
    assert list(fused) == ["b", "a", "d", "c"]
    assert fused["b"] == pytest.approx(1 / 62 + 1 / 61)
    assert fused["a"] == pytest.approx(1 / 61 + 1 / 63)


def test_rrf_ties_are_deterministic():
    # x and y each sit at rank 1 in one list: equal scores, the smaller id first, whatever the input order.
    assert [i for i, _ in rrf({"one": ["y"], "two": ["x"]})] == ["x", "y"]
    assert [i for i, _ in rrf({"two": ["x"], "one": ["y"]})] == ["x", "y"]


def test_weighted_fusion_hand_worked():
    scores = {"dense": {"a": 0.9, "b": 0.5, "c": 0.7}, "lexical": {"b": 12.0, "c": 2.0}}
    fused = dict(weighted(scores, {"dense": 0.5, "lexical": 0.5}))
    # dense normalized: a 1, b 0, c 0.5; lexical normalized: b 1, c 0, a missing -> 0
    assert fused == pytest.approx({"a": 0.5, "b": 0.5, "c": 0.25})
    assert list(fused)[:2] == ["a", "b"]  # tie broken by id


def test_mmr_prefers_diversity():
    query = np.array([1.0, 0.0, 0.0])
    vectors = np.array([[0.9, 0.43, 0.0], [0.9, 0.43, 0.01], [0.8, 0.0, 0.6]])
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    assert mmr(query, vectors, 2, lambda_=1.0) == [0, 1]  # pure relevance
    assert mmr(query, vectors, 2, lambda_=0.5) == [0, 2]  # the near-duplicate is passed over
    # Cosines, not dot products: vector lengths (embedding.normalize off) change nothing.
    scaled = vectors * np.array([[3.0], [0.2], [7.0]])
    for lambda_ in (1.0, 0.5):
        assert mmr(5 * query, scaled, 2, lambda_=lambda_) == mmr(query, vectors, 2, lambda_=lambda_)


@pytest.fixture()
def config(tmp_path, minilm_path) -> dict:
    return {"store": {"path": str(tmp_path / "store")}, "embedding": {"model": str(minilm_path)}}


def lexical_ids(pipeline: Pipeline) -> set[str]:
    pipeline.search("anything at all", k=1, mode="lexical")  # brings the index up to date if needed
    return set(pipeline.lexical.ids)


def store_ids(pipeline: Pipeline) -> set[str]:
    return {i for i, _ in pipeline.store.iter_metadata()}


def test_lexical_index_stays_in_step(tmp_path, config):
    docs = make_folder(tmp_path / "docs", PROSE)
    pipeline = Pipeline.from_config(config)
    pipeline.ingest([docs])
    assert lexical_ids(pipeline) == store_ids(pipeline)
    pipeline.ingest([docs])
    assert lexical_ids(Pipeline.from_config(config)) == store_ids(pipeline)
    (docs / "beta.txt").write_text("Beta is now about quasars and their radio jets.", encoding="utf-8")
    pipeline.ingest([docs])
    assert lexical_ids(Pipeline.from_config(config)) == store_ids(pipeline)
    hits = Pipeline.from_config(config).search("quasars", k=3, mode="lexical")
    assert hits[0].chunk.metadata["source"].endswith("beta.txt")
    assert not Pipeline.from_config(config).search("telescope infrared", k=3, mode="lexical") or all(
        not h.chunk.metadata["source"].endswith("beta.txt") for h in
        Pipeline.from_config(config).search("telescope infrared", k=3, mode="lexical"))
    (docs / "gamma.txt").unlink()
    pipeline.ingest([docs], sync=True)
    assert lexical_ids(Pipeline.from_config(config)) == store_ids(pipeline)


def test_deleted_or_stale_index_is_rebuilt(tmp_path, config, capsys):
    docs = make_folder(tmp_path / "docs", PROSE)
    Pipeline.from_config(config).ingest([docs])
    shutil.rmtree(Path(config["store"]["path"]) / "lexical")
    fresh = Pipeline.from_config(config)
    hits = fresh.search("sourdough", k=1, mode="lexical")
    assert hits[0].chunk.metadata["source"].endswith("gamma.txt")
    assert "rebuilding" in capsys.readouterr().err
    assert set(fresh.lexical.ids) == store_ids(fresh)


def test_unique_words_are_found_first(tmp_path, config):
    files = dict(PROSE, **{"zeta.md": "# Zeta\n\nThe xylophonist quokka plays at dawn."})
    Pipeline.from_config(config).ingest([make_folder(tmp_path / "docs", files)])
    pipeline = Pipeline.from_config(config)
    for mode in ("lexical", "hybrid"):
        hits = pipeline.search("xylophonist quokka", k=3, mode=mode)
        assert hits[0].chunk.metadata["source"].endswith("zeta.md"), mode


def test_hybrid_hits_report_every_retriever(tmp_path, config):
    Pipeline.from_config(config).ingest([make_folder(tmp_path / "docs", PROSE)])
    rrf_hits = Pipeline.from_config({**config, "retrieval": {"fusion": "rrf"}}).search(
        "helium cooled telescope mirrors", k=3, mode="hybrid")
    top = rrf_hits[0]
    assert top.chunk.metadata["source"].endswith("beta.txt")
    assert {"dense", "lexical"} <= top.scores.keys() and {"dense", "lexical"} <= top.ranks.keys()
    assert top.score == pytest.approx(1 / (60 + top.ranks["dense"]) + 1 / (60 + top.ranks["lexical"]))
    assert [h.score for h in rrf_hits] == sorted((h.score for h in rrf_hits), reverse=True)
    weighted_hits = Pipeline.from_config(config).search("helium cooled telescope mirrors", k=3)  # the default
    assert weighted_hits[0].chunk.id == top.chunk.id
    assert all(0.0 <= h.score <= 1.0 for h in weighted_hits)


def test_dense_scores_are_cosines_without_normalized_vectors(tmp_path, config):
    config = {**config, "embedding": {**config["embedding"], "normalize": False}}
    Pipeline.from_config(config).ingest([make_folder(tmp_path / "docs", PROSE)])
    pipeline = Pipeline.from_config(config)
    question = "helium cooled telescope mirrors"
    query = pipeline.embedder.embed_queries([question])[0]
    assert abs(np.linalg.norm(query) - 1.0) > 1e-3  # the vectors really are not unit length
    by_chroma = {h.chunk.id: h.scores["dense"] for h in pipeline.search(question, k=10, mode="dense")}
    for mode in ("lexical", "hybrid", "dense"):  # lexical hits get their cosine from the stored vector
        hits = pipeline.search(question, k=5, mode=mode)
        stored = {chunk.id: vector for chunk, vector in pipeline.store.get([h.chunk.id for h in hits], embeddings=True)}
        for hit in hits:
            vector = stored[hit.chunk.id]
            cosine = float(vector @ query / (np.linalg.norm(vector) * np.linalg.norm(query)))
            assert hit.scores["dense"] == pytest.approx(cosine, abs=1e-5), mode
            if hit.chunk.id in by_chroma:
                assert hit.scores["dense"] == pytest.approx(by_chroma[hit.chunk.id], abs=1e-5), mode


def test_filters_and_threshold(tmp_path, config):
    Pipeline.from_config(config).ingest([make_folder(tmp_path / "docs", PROSE)])
    pipeline = Pipeline.from_config(config)
    for mode in ("dense", "lexical", "hybrid"):
        hits = pipeline.search("reactor with telescope mirrors", k=5, mode=mode, where={"format": "text"})
        assert hits and all(h.chunk.metadata["format"] == "text" for h in hits), mode
    strict = Pipeline.from_config({**config, "retrieval": {"score_threshold": 0.3}})
    hits = strict.search("molten salt reactor", k=10)
    assert hits and all(h.scores["dense"] >= 0.3 for h in hits)
    assert len(hits) < len(pipeline.search("molten salt reactor", k=10))


def test_filter_with_several_fields_and_operators(tmp_path, config):
    Pipeline.from_config(config).ingest([make_folder(tmp_path / "docs", PROSE)])
    pipeline = Pipeline.from_config(config)
    where = {"format": "text", "start": {"$gte": 1}}  # two fields, and an operator: Chroma alone refuses this
    assert pipeline.search("reactor", where=where)
    stored = dict(pipeline.store.iter_metadata())
    expected = {i for i, m in stored.items() if m["format"] == "text" and m["start"] >= 1}
    assert expected and expected != set(stored)
    assert pipeline.store.ids(where) == expected
    for mode in ("dense", "lexical", "hybrid"):
        hits = pipeline.search("reactor with telescope mirrors", k=len(stored), mode=mode, where=where)
        assert hits and {h.chunk.id for h in hits} <= expected, mode
    ranged = {"$or": [{"start": {"$lt": 1}}, {"format": {"$in": ["pdf"]}}]}
    assert pipeline.store.ids(ranged) == {i for i, m in stored.items() if m["start"] < 1}
    with pytest.raises(ConfigError, match=r"retrieval.where: start: \['\$like'\] is not an operator"):
        pipeline.search("reactor", where={"start": {"$like": 3}})


def test_reranker_mechanics(tmp_path, config, minilm_path):
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    folder = tmp_path / "tiny-cross-encoder"
    AutoTokenizer.from_pretrained(minilm_path).save_pretrained(folder)
    BertForSequenceClassification(BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=1,
                                             num_attention_heads=2, intermediate_size=64, num_labels=1)).save_pretrained(folder)
    Pipeline.from_config(config).ingest([make_folder(tmp_path / "docs", PROSE)])
    plain = Pipeline.from_config(config).search("reactor", k=3, mode="dense")
    reranked = Pipeline.from_config({**config, "rerank": {"model": str(folder), "top_n": 5}}).search("reactor", k=3)
    assert len(reranked) == 3
    assert all("rerank" in h.scores and "dense" in h.scores for h in reranked)
    assert [h.score for h in reranked] == sorted((h.score for h in reranked), reverse=True)
    assert all(h.score == h.scores["rerank"] for h in reranked)
    assert {h.chunk.id for h in reranked} <= {h.chunk.id for h in Pipeline.from_config(config).search("reactor", k=5)}
    assert plain[0].scores.keys() == {"dense"}
