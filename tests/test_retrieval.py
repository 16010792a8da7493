"""Retrieval: fusion against hand-worked rankings, MMR, the lexical index kept in step with Chroma,
hybrid search, filters, the score threshold and a tiny random-weight cross-encoder reranker."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from support import PROSE, make_folder

from rag.errors import ConfigError, StoreError
from rag.pipeline import Pipeline
from rag.retrieval import mmr, rrf, weighted
from rag.stores.bm25 import LexicalIndex
from rag.stores.chroma import Store
from rag.types import Chunk, lexical_item


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
    tiny = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                      intermediate_size=64, num_labels=1)
    BertForSequenceClassification(tiny).save_pretrained(folder)
    Pipeline.from_config(config).ingest([make_folder(tmp_path / "docs", PROSE)])
    plain = Pipeline.from_config(config).search("reactor", k=3, mode="dense")
    reranked = Pipeline.from_config({**config, "rerank": {"model": str(folder), "top_n": 5}}).search("reactor", k=3)
    assert len(reranked) == 3
    assert all("rerank" in h.scores and "dense" in h.scores for h in reranked)
    assert [h.score for h in reranked] == sorted((h.score for h in reranked), reverse=True)
    assert all(h.score == h.scores["rerank"] for h in reranked)
    assert {h.chunk.id for h in reranked} <= {h.chunk.id for h in Pipeline.from_config(config).search("reactor", k=5)}
    assert plain[0].scores.keys() == {"dense"}


# -- filters answered from the lexical index's metadata, checked against Chroma's own ---------------------

MIXED = [  # metadata as a user's files might carry it: types mixed within a field, fields missing
    {"kind": "a", "group": 0, "score": 0.5, "flag": True, "mixed": 1},
    {"kind": "b", "group": 1, "score": 1.0, "flag": False, "mixed": 1.0},
    {"kind": "c", "group": 2, "score": 2, "mixed": True},
    {"kind": "a", "group": 3, "score": 2.5, "flag": True, "mixed": "1"},
    {"kind": "b", "group": 4, "mixed": 0},
    {"group": 2.0, "score": -1, "flag": False, "mixed": False},
    {"kind": "A", "group": 1, "big": 2**60},
    {"kind": "", "big": 3},
    {"other": "x"},  # none of the fields filtered on (Chroma refuses empty metadata)
]
ANSWERED = [  # the lexical index must answer these itself, as Chroma does
    {"kind": "a"}, {"kind": {"$eq": "b"}}, {"kind": {"$ne": "a"}}, {"kind": {"$in": ["a", "c"]}},
    {"kind": {"$nin": ["a", ""]}}, {"kind": ""}, {"group": 2}, {"group": 2.0}, {"group": {"$gt": 1}},
    {"group": {"$gte": 1.5}}, {"group": {"$lt": 2}}, {"group": {"$lte": 2}}, {"group": {"$in": [0, 3]}},
    {"group": {"$nin": [0, 3]}}, {"group": {"$ne": 2}}, {"group": {"$in": [2.0]}}, {"flag": True},
    {"flag": {"$ne": True}}, {"flag": False}, {"flag": {"$in": [False]}}, {"flag": {"$nin": [True]}},
    {"mixed": 1}, {"mixed": True}, {"mixed": "1"}, {"mixed": 0}, {"mixed": False}, {"mixed": {"$gt": 0}},
    {"mixed": {"$lte": 1}}, {"mixed": {"$ne": 1}}, {"mixed": {"$in": [True]}}, {"mixed": {"$nin": ["1"]}},
    {"score": {"$gte": 0.5, "$lt": 2}}, {"kind": "a", "group": {"$gte": 1}}, {"kind": "none-such"},
    {"$or": [{"kind": "a"}, {"flag": True}]}, {"$or": [{"kind": "c"}]},
    {"$and": [{"group": {"$gte": 1}}, {"$or": [{"kind": "b"}, {"mixed": {"$ne": 1}}]}]},
    {"$or": [{"score": {"$lt": 0}}, {"$and": [{"flag": False}, {"kind": {"$nin": ["b"]}}]}]},
    # Chroma compares an int with a float operand cast to an int (truncated): n=1 passes n >= 1.5.
    {"group": {"$gte": 1.5}}, {"group": 1.5}, {"group": {"$lt": -0.5}}, {"score": {"$gt": 2.2}},
    {"score": {"$in": [2.7, 0.5]}}, {"score": {"$nin": [-1.5]}}, {"score": -1.0},
    {"big": 2**60}, {"big": {"$gt": 5}}, {"big": {"$lte": 2**60 - 1}}, {"big": 1.1529215046068470e18},
]
DECLINED = [  # ... and leave these to Chroma, which either answers them or refuses them itself
    {"group": {"$gt": 2**63}}, {"big": 2**62 + 1}, {"colour": "red"},
    {"group": {"$in": [1, "a"]}}, {"group": {"$in": [1, 2.0]}}, {"group": {"$in": []}}, {"group": {"$gt": "a"}},
    {"group": {"$gt": True}}, {"group": None}, {"group": [1]}, {"group": {"$gt": float("nan")}},
]


@pytest.fixture()
def mixed_store(tmp_path) -> tuple[Store, LexicalIndex]:
    store = Store(tmp_path / "store")
    store.open({"embedding_model": "test"})
    rng = np.random.default_rng(0)
    chunks = [Chunk(id=f"c{i}", document_id="d", text=f"text {i} words", start=0, end=1, metadata=m)
              for i, m in enumerate(MIXED)]
    vectors = rng.standard_normal((len(chunks), 8)).astype(np.float32)
    store.upsert(chunks, vectors)
    lexical = LexicalIndex(tmp_path / "lexical")
    lexical.rebuild(store.iter_texts(metadata=True), store.state)
    return store, lexical


def test_metadata_filters_answer_as_chroma_does(mixed_store):
    store, lexical = mixed_store
    for where in ANSWERED:
        local = lexical.select(where)
        assert local is not None, where
        assert set(local) == store.ids(where), where
    for where in DECLINED:
        assert lexical.select(where) is None, where


def test_searching_among_ids_is_the_filtered_query(mixed_store):
    store, lexical = mixed_store
    rng = np.random.default_rng(1)
    for where in ANSWERED:
        among = list(lexical.select(where))
        for _ in range(3):
            query = rng.standard_normal(8).astype(np.float32)
            for depth in (2, 100):
                assert store.nearest(query, depth, ids=among) == store.nearest(query, depth, where), where
                by_ids = [(c.id, s, c.metadata) for c, s, _ in store.query(query, depth, ids=among)]
                assert by_ids == [(c.id, s, c.metadata) for c, s, _ in store.query(query, depth, where)], where
    assert store.nearest(rng.standard_normal(8).astype(np.float32), 5, ids=[]) == []
    with pytest.raises(StoreError, match="among 2 given chunk ids"):
        store.nearest(rng.standard_normal(8).astype(np.float32), 5, ids=["c1", "gone"])


PROSE_WHERES = [
    {"format": "text"}, {"format": {"$ne": "text"}}, {"format": {"$in": ["markdown"]}},
    {"format": {"$nin": ["markdown"]}}, {"start": {"$gte": 1}}, {"start": {"$lt": 400}}, {"end": {"$lte": 2000}},
    {"$or": [{"format": "markdown"}, {"start": {"$gt": 1000}}]},
    {"$and": [{"format": "text"}, {"file_chunks": {"$gte": 2}}]},
    {"format": "text", "start": {"$gte": 1}}, {"format": "pdf"},
]


def hits_of(pipeline: Pipeline, question: str, mode: str, where: dict, k: int = 8) -> list:
    return [(h.chunk.id, h.rank, h.score, h.scores, h.ranks, h.chunk.metadata, h.chunk.text)
            for h in pipeline.search(question, k, mode=mode, where=where)]


@pytest.mark.parametrize("retrieval", [{}, {"mmr": True}, {"score_threshold": 0.05, "fusion": "weighted"}])
def test_filtered_search_is_the_store_filter(tmp_path, config, monkeypatch, retrieval):
    Pipeline.from_config(config).ingest([make_folder(tmp_path / "docs", PROSE)])
    pipeline = Pipeline.from_config({**config, "retrieval": retrieval})
    pipeline.search("warm", k=1, mode="hybrid")  # the lexical index, in step with the store
    retriever = pipeline.retriever("hybrid")
    assert pipeline.lexical.has_metadata
    question = "reactor with telescope mirrors"
    fast = {}
    for where in PROSE_WHERES:
        assert retriever._selection(where) is not None, where  # answered here, not by the store
        for mode in ("dense", "lexical", "hybrid"):
            fast[repr(where), mode] = hits_of(pipeline, question, mode, where)
    monkeypatch.setattr(retriever, "_selection", lambda where: None)  # the store's filter, as before
    for where in PROSE_WHERES:
        for mode in ("dense", "lexical", "hybrid"):
            assert fast[repr(where), mode] == hits_of(pipeline, question, mode, where), (where, mode)
    assert any(fast.values()) and not fast[repr({"format": "pdf"}), "hybrid"]


def test_filters_go_to_the_store_while_the_index_is_behind(tmp_path, config):
    Pipeline.from_config(config).ingest([make_folder(tmp_path / "docs", PROSE)])
    pipeline = Pipeline.from_config(config)
    pipeline.search("warm", k=1, mode="hybrid")
    store, retriever = pipeline.store, pipeline.retriever("hybrid")
    assert set(retriever._selection({"format": "markdown"})) == store.ids({"format": "markdown"})
    chunk_id, metadata = next(iter(store.iter_metadata({"format": "text"})))
    # A write the index has not seen (as during an ingest): the index's metadata is stale now.
    store.bump_state()
    store.update_metadata([chunk_id], [{**metadata, "format": "markdown"}])
    assert retriever._selection({"format": "markdown"}) is None
    hits = pipeline.search("telescope", k=10, mode="dense", where={"format": "markdown"})  # no in-step check
    assert chunk_id in {h.chunk.id for h in hits}
    # A hybrid search brings the index in step (rebuilt from the store), and answers from it again.
    hits = pipeline.search("telescope", k=10, mode="hybrid", where={"format": "markdown"})
    assert chunk_id in {h.chunk.id for h in hits}
    assert chunk_id in retriever._selection({"format": "markdown"})


def test_dense_filters_without_a_lexical_index(tmp_path, config):
    Pipeline.from_config(config).ingest([make_folder(tmp_path / "docs", PROSE)])
    shutil.rmtree(Path(config["store"]["path"]) / "lexical")
    pipeline = Pipeline.from_config(config)
    hits = pipeline.search("telescope", k=10, mode="dense", where={"format": "text"})
    assert hits and all(h.chunk.metadata["format"] == "text" for h in hits)
    assert "lexical" not in pipeline._stages  # dense search neither needs nor builds it


def test_an_old_index_without_metadata_serves_then_is_rebuilt_by_the_next_ingest(tmp_path, config, monkeypatch):
    docs = make_folder(tmp_path / "docs", PROSE)
    Pipeline.from_config(config).ingest([docs])
    folder = Path(config["store"]["path"]) / "lexical" / "rag"
    expected = {repr(w): hits_of(Pipeline.from_config(config), "telescope", "hybrid", w) for w in PROSE_WHERES}
    store = Pipeline.from_config(config)._open_store(create=False)
    # ids and (indexed) texts only, as before filters
    items = (lexical_item(*item)[:2] for item in store.iter_texts(metadata=True))
    LexicalIndex(folder).rebuild(items, store.state)
    old = Pipeline.from_config(config)
    for where in PROSE_WHERES:
        assert hits_of(old, "telescope", "hybrid", where) == expected[repr(where)], where
    assert not old.lexical.has_metadata and old.retriever("hybrid")._selection({"format": "text"}) is None
    Pipeline.from_config(config).ingest([docs])  # nothing changed, but the index gains its metadata
    fresh = LexicalIndex(folder)
    assert fresh.load() and fresh.has_metadata


def test_ingest_keeps_the_metadata_in_step(tmp_path, config):
    docs = make_folder(tmp_path / "docs", PROSE)
    pipeline = Pipeline.from_config(config)
    pipeline.ingest([docs])
    (docs / "beta.txt").write_text("Beta is now about quasars.\n\n" + "Radio jets span light years. " * 50,
                                   encoding="utf-8")
    (docs / "delta.md").write_text("# Delta\n\nA note on tides and the moon.", encoding="utf-8")
    (docs / "gamma.txt").unlink()
    pipeline.ingest([docs], sync=True)
    lexical = LexicalIndex(Path(config["store"]["path"]) / "lexical" / "rag")
    assert lexical.load() and lexical.has_metadata and lexical.state == pipeline.store.state
    sources = sorted({m["source"] for _, m in pipeline.store.iter_metadata()})
    for where in [*PROSE_WHERES, {"source": sources[0]}, {"source": {"$nin": sources[:2]}}, {"title": "Delta"}]:
        assert set(lexical.select(where)) == pipeline.store.ids(where), where
