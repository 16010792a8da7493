"""LexicalIndex: BM25 ranking, id-keyed updates, crash-safe persistence, and the chunk metadata it
keeps to answer filters (checked against Chroma itself in test_retrieval.py).

The index is Tantivy's: like Lucene, a segment keeps a deleted document in its term statistics until
a merge, so an updated index ranks as a fresh rebuild does only up to those statistics; what must
match exactly is which chunks it finds, and what a reload reads back."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rag.errors import ConfigError
from rag.stores.bm25 import CURRENT, LexicalIndex

DOCS = [
    ("a", "The quick brown fox jumps over the lazy dog"),
    ("b", "A lazy afternoon in the garden with tea"),
    ("c", "Photosynthesis converts sunlight into chemical energy"),
    ("d", "The dog barked at the mailman all morning"),
    ("e", "Runners run every morning before work"),
]


def build(tmp_path: Path, docs=DOCS, state: str = "s1", **kwargs) -> LexicalIndex:
    index = LexicalIndex(tmp_path / "bm25", **kwargs)
    index.rebuild(docs, state=state)
    return index


def ids_of(hits: list[tuple[str, float]]) -> list[str]:
    return [cid for cid, _ in hits]


QUERIES = ["lazy dog", "morning", "photosynthesis energy", "garden tea fox", "running", "no match"]


def test_unique_words_find_their_document_alone(tmp_path):
    index = build(tmp_path)
    assert ids_of(index.search("photosynthesis sunlight", 5)) == ["c"]
    hits = index.search("fox jumps", 5)
    assert ids_of(hits) == ["a"]
    # A query word shared with other documents still ranks the unique match first.
    assert index.search("fox lazy", 5)[0][0] == "a"


def test_scores_positive_descending_and_k_respected(tmp_path):
    index = build(tmp_path)
    hits = index.search("lazy dog morning", 10)
    assert set(ids_of(hits)) == {"a", "b", "d", "e"}  # c shares no term, so it is not returned
    scores = [score for _, score in hits]
    assert all(score > 0 for score in scores)
    assert scores == sorted(scores, reverse=True)
    assert index.search("lazy dog morning", 2) == hits[:2]
    assert index.search("lazy dog", 0) == []


def test_ties_are_ordered_by_id(tmp_path):
    docs = [("z", "apple banana"), ("m", "apple banana"), ("a", "apple banana"), ("q", "cherry")]
    index = build(tmp_path, docs)
    hits = index.search("apple", 10)
    assert ids_of(hits) == ["a", "m", "z"]
    assert len({score for _, score in hits}) == 1
    assert ids_of(index.search("apple", 2)) == ["a", "m"]  # the cut keeps the lowest ids


def test_allowed_ids_restricts_but_still_fills_k(tmp_path):
    index = build(tmp_path)
    best = ids_of(index.search("lazy dog morning", 10))
    allowed = set(best[2:]) | {"c", "unknown"}
    hits = index.search("lazy dog morning", 2, allowed_ids=allowed)
    assert ids_of(hits) == best[2:4]
    assert index.search("lazy dog", 5, allowed_ids=set()) == []
    assert index.search("photosynthesis", 5, allowed_ids={"a", "b"}) == []


def test_stemming_and_stopwords(tmp_path):
    index = build(tmp_path)
    assert ids_of(index.search("running", 5)) == ["e"]  # "running" and "run" both stem to "run"
    assert index.search("The a IN with of", 5) == []  # only stopwords (bm25s's short English list)
    assert index.search("", 5) == []
    assert index.search("   !!! ", 5) == []
    plain = build(tmp_path / "plain", stemmer=None, stopwords=None)
    assert plain.search("running", 5) == []  # no stemming: "running" is not "run"
    assert "d" in ids_of(plain.search("the", 5))  # no stopwords: "the" is a term


def test_empty_index(tmp_path):
    index = LexicalIndex(tmp_path / "bm25")
    assert index.search("anything", 5) == []
    assert len(index) == 0 and index.ids == set() and index.state is None
    index.rebuild([], state="empty")
    assert index.search("anything", 5) == []
    index.rebuild([("x", "the of and")], state="stop")  # chunks with no terms at all
    assert index.search("the", 5) == [] and index.ids == {"x"}


def test_update_upsert_replace_delete(tmp_path):
    index = build(tmp_path)
    assert index.ids == {"a", "b", "c", "d", "e"}

    index.update(upserts=[("f", "Volcanoes erupt molten lava")], state="s2")
    assert index.ids == {"a", "b", "c", "d", "e", "f"}
    assert ids_of(index.search("lava", 5)) == ["f"]

    index.update(upserts=[("f", "Glaciers carve valleys slowly")], state="s3")
    assert index.ids == {"a", "b", "c", "d", "e", "f"} and len(index) == 6
    assert index.search("lava", 5) == []  # the old text is gone
    assert ids_of(index.search("glaciers", 5)) == ["f"]

    index.update(deletes=["c", "missing"], state="s4")
    assert index.ids == {"a", "b", "d", "e", "f"}
    assert index.search("photosynthesis", 5) == []

    index.update(upserts=[("c", "photosynthesis again")], deletes=["c"], state="s5")
    assert "c" in index.ids  # deletes apply before upserts
    assert index.state == "s5"


def test_updates_find_what_a_fresh_rebuild_finds(tmp_path):
    index = build(tmp_path)
    upserts = [("f", "lazy lava"), ("a", "dog days of summer")]
    index.update(upserts=upserts, deletes=["b"], state="s2")
    final = dict(DOCS) | {"f": "lazy lava", "a": "dog days of summer"}
    del final["b"]
    fresh = build(tmp_path / "fresh", list(final.items()))
    for query in [*QUERIES, "lava", "summer dog"]:
        assert set(ids_of(index.search(query, 10))) == set(ids_of(fresh.search(query, 10))), query
    assert ids_of(index.search("lava", 10)) == ["f"] and ids_of(index.search("afternoon", 10)) == []


def test_round_trip(tmp_path):
    index = build(tmp_path, state="collection-v7")
    reloaded = LexicalIndex(tmp_path / "bm25")
    assert reloaded.state is None
    assert reloaded.load() is True
    assert reloaded.state == "collection-v7"
    assert reloaded.ids == index.ids and len(reloaded) == len(index)
    for query in QUERIES:
        assert reloaded.search(query, 10) == index.search(query, 10)
        allowed = {"a", "d"}
        assert reloaded.search(query, 10, allowed) == index.search(query, 10, allowed)

    # Updating a loaded index behaves like updating one that never left memory; the state moves with it.
    twin = build(tmp_path / "twin", state="collection-v7")
    for ix in (twin, reloaded):
        ix.update(upserts=[("g", "lazy garden gnome")], deletes=["a"], state="collection-v8")
    again = LexicalIndex(tmp_path / "bm25")
    assert again.load() and again.state == "collection-v8"
    for query in [*QUERIES, "gnome"]:
        assert again.search(query, 10) == twin.search(query, 10) == reloaded.search(query, 10)


def test_state_only_update_keeps_data(tmp_path):
    index = build(tmp_path)
    index.update(state="s9")
    reloaded = LexicalIndex(tmp_path / "bm25")
    assert reloaded.load() and reloaded.state == "s9" and reloaded.ids == index.ids
    reloaded.update(state="s10")
    assert reloaded.search("lazy dog", 5) == index.search("lazy dog", 5)


def test_load_false_when_missing_or_corrupt(tmp_path):
    assert LexicalIndex(tmp_path / "nowhere").load() is False
    folder = tmp_path / "bm25"
    build(tmp_path)
    (folder / CURRENT).write_text('{"index": ', encoding="utf-8")
    assert LexicalIndex(folder).load() is False
    (folder / CURRENT).write_text("[1, 2]", encoding="utf-8")
    assert LexicalIndex(folder).load() is False
    (folder / CURRENT).write_text('{"index": "index.0123456789abcdef"}', encoding="utf-8")
    assert LexicalIndex(folder).load() is False


def test_load_false_when_data_file_damaged(tmp_path):
    folder = tmp_path / "bm25"
    build(tmp_path)
    rows = next(folder.glob("rows.*.npy"))
    rows.write_bytes(rows.read_bytes()[:-8])
    assert LexicalIndex(folder).load() is False
    build(tmp_path)
    next(folder.glob("index.*")).joinpath("meta.json").unlink()
    assert LexicalIndex(folder).load() is False


def test_a_bug_while_loading_is_raised_not_taken_for_a_missing_index(tmp_path, monkeypatch):
    """Only a missing, damaged or foreign index makes load() say False (and the caller rebuild): a
    programming error raises, instead of turning every search into a silent rebuild."""
    build(tmp_path)

    def broken(*args, **kwargs):
        raise AttributeError("a bug")

    monkeypatch.setattr("rag.stores.bm25._note", broken)
    with pytest.raises(AttributeError, match="a bug"):
        LexicalIndex(tmp_path / "bm25").load()


def test_an_index_of_the_previous_format_is_replaced(tmp_path):
    """A bm25s index saved by an earlier version is not read (load says False, so it is rebuilt from
    the store), and its files go with the first rebuild."""
    folder = tmp_path / "bm25"
    folder.mkdir()
    (folder / "manifest.json").write_text('{"format": 1, "settings": {}, "files": {}}', encoding="utf-8")
    (folder / "ids.0123456789abcdef.json").write_text("[]", encoding="utf-8")
    (folder / "bm25s.0123456789abcdef").mkdir()
    (folder / "notes.txt").write_text("a user's file stays", encoding="utf-8")
    assert LexicalIndex(folder).load() is False
    build(tmp_path)
    assert LexicalIndex(folder).load() is True
    left = sorted(p.name.split(".")[0] for p in folder.iterdir())
    assert left == ["CURRENT", "index", "notes", "rows"]


@pytest.mark.parametrize("other", [{"stemmer": None}, {"stemmer": "french"}, {"stopwords": None}])
def test_load_false_with_other_settings(tmp_path, other):
    build(tmp_path)
    assert LexicalIndex(tmp_path / "bm25", **other).load() is False
    assert LexicalIndex(tmp_path / "bm25").load() is True


@pytest.mark.parametrize("other", [{"k1": 1.5}, {"b": 0.5}])
def test_bm25_parameters_the_engine_does_not_take_are_read_with_a_note(tmp_path, other, capsys):
    """A config written for the earlier index (lexical.k1: 1.5, its default) still works, and says
    that Tantivy scores with its own parameters; the index is the default one."""
    build(tmp_path)
    index = LexicalIndex(tmp_path / "bm25", **other)
    assert "k1=1.2, b=0.75" in capsys.readouterr().err
    assert index.load() is True


def test_unknown_stemmer_or_stopwords_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="stemmer"):
        LexicalIndex(tmp_path, stemmer="klingon")
    with pytest.raises(ConfigError, match="stopwords"):
        LexicalIndex(tmp_path, stopwords="klingon")


@pytest.mark.parametrize("fail_at", [1, 2, 3])
def test_crash_during_save_keeps_previous_index(tmp_path, monkeypatch, fail_at):
    folder = tmp_path / "bm25"
    old = build(tmp_path, with_meta(), state="old")  # a save writes rows, metadata and codes, then commits
    expected = {query: old.search(query, 10) for query in QUERIES}

    real_replace = os.replace
    calls = []

    def crashing_replace(src, dst):
        calls.append(dst)
        if len(calls) >= fail_at:
            raise OSError("simulated crash")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", crashing_replace)
    with pytest.raises(OSError, match="simulated crash"):
        upserts = [("a", "completely new words here", {"n": 1}), ("n", "lazy newcomer", {"n": 2})]
        old.update(upserts=upserts, deletes=["d"], state="new")
    monkeypatch.setattr(os, "replace", real_replace)

    reloaded = LexicalIndex(folder)
    assert reloaded.load() is True
    assert reloaded.state == "old"
    assert reloaded.ids == {cid for cid, _ in DOCS}
    assert {query: reloaded.search(query, 10) for query in QUERIES} == expected

    # The next successful saves clear what the crashed one left behind (a save keeps the files of
    # the commit before it, which a reader in another process may be loading just then).
    reloaded.update(upserts=[("n", "lazy newcomer", {"n": 2})], state="after")
    reloaded.update(upserts=[("m", "lazy latecomer", {"n": 3})], state="later")
    left = sorted(path.name.split(".")[0] for path in folder.iterdir())
    assert left == ["CURRENT", "codes", "codes", "index", "meta", "meta", "rows", "rows"]
    final = LexicalIndex(folder)
    assert final.load() and final.state == "later" and {"n", "m"} <= final.ids
    assert set(final.select({"n": {"$gte": 2}})) == {"b", "c", "d", "m", "n"}


WORDS = ["apple", "banana", "cherry", "date", "elder", "fig", "grape", "the", "running", "runs"]
texts = st.lists(st.sampled_from(WORDS), max_size=6).map(" ".join)
chunk_ids = st.sampled_from(["c1", "c2", "c3", "c4", "c5"])
steps = st.lists(
    st.tuples(st.lists(st.tuples(chunk_ids, texts), max_size=3), st.lists(chunk_ids, max_size=2)),
    min_size=1,
    max_size=4,
)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(steps=steps)
def test_any_update_sequence_equals_rebuild_and_survives_reload(tmp_path_factory, steps):
    folder = tmp_path_factory.mktemp("prop")
    index = LexicalIndex(folder / "inc")
    index.rebuild([], state="0")
    expected: dict[str, str] = {}
    for n, (upserts, deletes) in enumerate(steps, start=1):
        index.update(upserts=upserts, deletes=deletes, state=str(n))
        for cid in deletes:
            expected.pop(cid, None)
        expected.update(dict(upserts))
        assert index.ids == set(expected)
    fresh = LexicalIndex(folder / "fresh")
    fresh.rebuild(expected.items(), state="x")
    reloaded = LexicalIndex(folder / "inc")
    assert reloaded.load() and reloaded.state == str(len(steps)) and reloaded.ids == set(expected)
    for query in ["apple", "banana cherry", "run", "fig grape date", "the"]:
        assert index.search(query, 3) == reloaded.search(query, 3)
        assert set(ids_of(index.search(query, 10))) == set(ids_of(fresh.search(query, 10)))


# -- the metadata kept beside the terms, answering filters ----------------------------------------------

META = {
    "a": {"kind": "animal", "n": 1},
    "b": {"kind": "garden", "n": 2.5, "flag": True},
    "c": {"kind": "science", "n": 3},
    "d": {"kind": "animal", "n": 4, "flag": False},
    "e": {"n": "5"},
}
WHERES = [
    {"kind": "animal"}, {"kind": {"$ne": "animal"}}, {"kind": {"$in": ["garden", "science"]}},
    {"kind": {"$nin": ["garden"]}}, {"n": {"$gte": 2.5}}, {"n": {"$lt": 3}}, {"n": 1}, {"n": 4.0},
    {"flag": True}, {"flag": {"$ne": False}}, {"$or": [{"kind": "science"}, {"flag": False}]},
    {"kind": "animal", "n": {"$lt": 4}}, {"kind": "nothing"}, {"n": "5"},
]


def with_meta(docs=DOCS, meta=META) -> list[tuple[str, str, dict]]:
    return [(cid, text, meta[cid]) for cid, text in docs]


def selected(index: LexicalIndex, where: dict) -> set[str] | None:
    found = index.select(where)
    return None if found is None else set(found)


def test_metadata_answers_filters(tmp_path):
    index = build(tmp_path, with_meta())
    assert index.has_metadata
    assert selected(index, {"kind": "animal"}) == {"a", "d"}
    assert selected(index, {"kind": {"$ne": "animal"}}) == {"b", "c", "e"}  # e, without a kind, too
    assert selected(index, {"n": {"$gte": 2.5}}) == {"b", "c", "d"}  # "5" is text, not a number
    assert selected(index, {"n": 1}) == {"a"} and selected(index, {"flag": True}) == {"b"}  # True is not 1
    assert selected(index, {"$or": [{"kind": "science"}, {"flag": False}]}) == {"c", "d"}
    assert selected(index, {"kind": "animal", "n": {"$lt": 4}}) == {"a"}  # two fields: both must hold
    assert selected(index, {"kind": "nothing"}) == set()
    # What it cannot answer as the store would, it leaves to the store.
    assert index.select({"colour": "red"}) is None  # no chunk has the field
    assert index.select({"n": {"$in": [1, "5"]}}) is None  # mixed types: Chroma refuses them
    assert index.select({"n": {"$gt": "a"}}) is None
    with pytest.raises(ConfigError, match=r"\$like"):
        index.select({"n": {"$like": 1}})
    selection = index.select({"kind": "animal"})
    assert index.select({"kind": "animal"}) is selection  # kept for the next search
    for query in QUERIES:
        for where in ({"kind": "animal"}, {"n": {"$gt": 1}}, {"kind": "nothing"}):
            rows = index.select(where)
            assert index.search(query, 10, rows) == index.search(query, 10, set(rows))


def test_metadata_survives_reload_and_updates_like_a_rebuild(tmp_path):
    index = build(tmp_path, with_meta())
    upserts = [("f", "lazy lava", {"kind": "geology", "n": 6}), ("a", "dog days of summer", {"n": 7, "flag": True})]
    index.update(upserts=upserts, deletes=["b"], state="s2")
    final = {cid: (text, META[cid]) for cid, text in DOCS if cid != "b"}
    final.update({cid: (text, meta) for cid, text, meta in upserts})
    fresh = build(tmp_path / "fresh", [(cid, text, meta) for cid, (text, meta) in final.items()])
    reloaded = LexicalIndex(tmp_path / "bm25")
    assert reloaded.load() and reloaded.has_metadata
    for where in [*WHERES, {"kind": "geology"}, {"n": {"$gte": 6}}]:
        assert selected(index, where) == selected(fresh, where) == selected(reloaded, where), where
    assert selected(reloaded, {"flag": True}) == {"a"}  # a's metadata is its new one, whole
    assert selected(reloaded, {"kind": "animal"}) == {"d"}


def test_without_metadata_filters_go_to_the_store(tmp_path):
    index = build(tmp_path, with_meta())
    index.update(upserts=[("f", "lazy lava")], state="s2")  # one upsert without its metadata
    assert not index.has_metadata and index.select({"kind": "animal"}) is None
    reloaded = LexicalIndex(tmp_path / "bm25")
    assert reloaded.load() and not reloaded.has_metadata
    index.rebuild(with_meta(), state="s3")
    assert index.has_metadata


def test_an_index_without_metadata_serves_and_leaves_filters_to_the_store(tmp_path):
    folder = tmp_path / "bm25"
    index = build(tmp_path)  # items without their metadata
    old = LexicalIndex(folder)
    assert old.load() and old.state == "s1" and not old.has_metadata
    assert old.select({"kind": "animal"}) is None
    for query in QUERIES:
        assert old.search(query, 10) == index.search(query, 10)
        assert old.search(query, 10, {"a", "d"}) == index.search(query, 10, {"a", "d"})


def test_damaged_metadata_leaves_filters_to_the_store(tmp_path, capsys):
    """The metadata table is read on the first filter; damaged, it is left out with one line (the
    store answers filters) and the index still searches."""
    folder = tmp_path / "bm25"
    build(tmp_path, with_meta())
    codes = next(folder.glob("codes.*.npy"))
    codes.write_bytes(codes.read_bytes()[:-4])
    damaged = LexicalIndex(folder)
    assert damaged.load() and damaged.select({"kind": "animal"}) is None and not damaged.has_metadata
    assert "metadata" in capsys.readouterr().err
    assert ids_of(damaged.search("photosynthesis", 5)) == ["c"]
    build(tmp_path, with_meta())
    meta = next(folder.glob("meta.*.json"))
    described = json.loads(meta.read_text())
    described["values"][0].append([1, 2])  # a value no table holds
    meta.write_text(json.dumps(described))
    damaged = LexicalIndex(folder)
    assert damaged.load() and damaged.select({"kind": "animal"}) is None


values = st.one_of(st.integers(-3, 3), st.sampled_from([0.5, 2.0, -1.5]), st.booleans(), st.sampled_from(["x", "y"]))
metadatas = st.dictionaries(st.sampled_from(["p", "q"]), values, max_size=2)
meta_steps = st.lists(
    st.tuples(st.lists(st.tuples(chunk_ids, texts, metadatas), max_size=3), st.lists(chunk_ids, max_size=2)),
    min_size=1,
    max_size=4,
)
PROBES = [{"p": 1}, {"p": {"$ne": 1}}, {"p": {"$gte": 0.5}}, {"q": {"$in": ["x", "y"]}}, {"q": {"$nin": [True]}},
          {"$or": [{"p": "x"}, {"q": {"$lt": 0}}]}, {"p": 2, "q": False}]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=meta_steps)
def test_any_update_sequence_keeps_the_metadata_of_a_rebuild(tmp_path_factory, steps):
    folder = tmp_path_factory.mktemp("meta")
    index = LexicalIndex(folder / "inc")
    index.rebuild([], state="0")
    expected: dict[str, tuple[str, dict]] = {}
    for n, (upserts, deletes) in enumerate(steps, start=1):
        index.update(upserts=upserts, deletes=deletes, state=str(n))
        for cid in deletes:
            expected.pop(cid, None)
        expected.update({cid: (text, meta) for cid, text, meta in upserts})
    fresh = LexicalIndex(folder / "fresh")
    fresh.rebuild([(cid, text, meta) for cid, (text, meta) in expected.items()], state="x")
    reloaded = LexicalIndex(folder / "inc")
    assert reloaded.load() and reloaded.has_metadata and index.has_metadata
    for where in PROBES:
        assert selected(index, where) == selected(fresh, where) == selected(reloaded, where), where
