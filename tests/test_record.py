"""The per-file record (rag.stores.files): planning reads one row per file instead of every chunk's
metadata, a store written without it is migrated once (never re-embedded), and the record and the
lexical index stay in step with the store through edits, removals and other writers."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from support import PROSE, make_folder

from rag.cli import main
from rag.embedding import Embedder
from rag.pipeline import Pipeline
from rag.stores.bm25 import LexicalIndex
from rag.stores.chroma import Store

MIGRATING = "building the per-file record"


@pytest.fixture()
def config(tmp_path, minilm_path) -> dict:
    return {"store": {"path": str(tmp_path / "store")}, "embedding": {"model": str(minilm_path)}}


def store_chunks(pipeline: Pipeline) -> dict[str, tuple[str | None, str | None]]:
    """id -> (source, file_signature), as the store holds them."""
    store = pipeline._open_store(create=False)
    return {i: (m.get("source"), m.get("file_signature")) for i, m in store.iter_metadata()}


def record_chunks(pipeline: Pipeline) -> dict[str, tuple[str, str]]:
    record = pipeline.record
    return {chunk_id: (source, row.signature) for source in record.sources()
            if (row := record.get(source)) is not None for chunk_id in row.ids}


def ingest_json(capsys, *argv: str) -> tuple[dict, str]:
    capsys.readouterr()
    assert main(["ingest", *argv, "--json"]) == 0
    out, err = capsys.readouterr()
    return json.loads(out), err


def test_planning_reads_the_record_not_every_chunk(tmp_path, config, monkeypatch):
    docs = make_folder(tmp_path / "docs", PROSE)
    Pipeline.from_config(config).ingest([docs])

    def every_chunk(*args, **kwargs):
        raise AssertionError("an ingest read every chunk of the store")

    monkeypatch.setattr(Store, "iter_metadata", every_chunk)
    monkeypatch.setattr(Store, "iter_texts", every_chunk)
    pipeline = Pipeline.from_config(config)
    again = pipeline.ingest([docs])
    assert (again.unchanged, again.added, again.updated, again.chunks_embedded) == (3, 0, 0, 0)

    (docs / "beta.txt").write_text("Beta now studies quasars and their radio jets.", encoding="utf-8")
    (docs / "delta.md").write_text("# Delta\n\nA note on tides and the moon.", encoding="utf-8")
    (docs / "gamma.txt").unlink()
    changed = Pipeline.from_config(config).ingest([docs], sync=True)
    assert (changed.updated, changed.added, changed.removed, changed.unchanged) == (1, 1, 1, 1)
    searcher = Pipeline.from_config(config)
    assert searcher.search("quasars", k=1, mode="lexical")[0].chunk.metadata["source"].endswith("beta.txt")
    assert searcher.search("tides moon", k=1, mode="lexical")[0].chunk.metadata["source"].endswith("delta.md")
    assert not searcher.search("sourdough", k=3, mode="lexical")

    monkeypatch.undo()
    checked = Pipeline.from_config(config)
    assert record_chunks(checked) == store_chunks(checked)
    saved = LexicalIndex(checked.lexical.folder)
    assert saved.load() and saved.ids == set(store_chunks(checked)) and saved.state == checked.store.state
    metadata = dict(checked.store.iter_metadata())
    info = checked.info()  # counted from the record
    assert (info["files"], info["documents"], info["chunks"]) == (
        len({m["source"] for m in metadata.values()}), len({m["document_id"] for m in metadata.values()}),
        len(metadata))


def test_a_store_written_without_the_record_is_migrated_once_and_never_reembedded(tmp_path, config, capsys,
                                                                                 monkeypatch):
    docs = make_folder(tmp_path / "docs", PROSE)
    store = Path(config["store"]["path"])
    args = [str(docs), "--store", str(store), "--set", f"embedding.model={config['embedding']['model']}"]
    first, _ = ingest_json(capsys, *args)
    # As an earlier version left it: no record, and its bm25s index in the lexical folder.
    shutil.rmtree(store / "files")
    lexical = store / "lexical" / "rag"
    shutil.rmtree(lexical)
    lexical.mkdir()
    (lexical / "manifest.json").write_text('{"format": 1, "files": {}}', encoding="utf-8")
    (lexical / "ids.0123456789abcdef.json").write_text("[]", encoding="utf-8")

    embedded: list[int] = []
    real = Embedder.embed_documents
    monkeypatch.setattr(Embedder, "embed_documents", lambda self, texts, *a, **k: embedded.append(len(texts)) or
                        real(self, texts, *a, **k))
    report, err = ingest_json(capsys, *args)
    assert (report["unchanged"], report["chunks_embedded"], report["chunks_total"]) == (3, 0, first["chunks_total"])
    assert not embedded
    assert len([line for line in err.splitlines() if MIGRATING in line]) == 1, err
    assert "lexical index" not in err, err
    assert not (lexical / "manifest.json").exists()  # the old index went with the first rebuild

    again, err = ingest_json(capsys, *args)
    assert again["unchanged"] == 3 and MIGRATING not in err
    pipeline = Pipeline.from_config(config)
    assert record_chunks(pipeline) == store_chunks(pipeline)
    assert pipeline.search("sourdough rye", k=1, mode="lexical")[0].chunk.metadata["source"].endswith("gamma.txt")


def test_another_writer_makes_the_record_catch_up(tmp_path, config, capsys):
    """A write the record did not see (an older rag, another machine's) bumps the store's counter:
    the next ingest builds the record again from the store, so it plans from what is really there."""
    docs = make_folder(tmp_path / "docs", PROSE)
    pipeline = Pipeline.from_config(config)
    pipeline.ingest([docs])
    store = pipeline.store
    gamma = str((docs / "gamma.txt").resolve())
    store.bump_state()
    store.delete(store.ids({"source": gamma}))  # gone behind the record's back
    capsys.readouterr()
    report = Pipeline.from_config(config).ingest([docs])
    assert MIGRATING in capsys.readouterr().err
    assert (report.added, report.unchanged) == (1, 2)  # gamma written again: the record knew it was gone
    fresh = Pipeline.from_config(config)
    assert record_chunks(fresh) == store_chunks(fresh)
    assert fresh.search("sourdough rye", k=1, mode="lexical")[0].chunk.metadata["source"] == gamma


def test_a_file_that_fails_keeps_its_row(tmp_path, config):
    docs = make_folder(tmp_path / "docs", PROSE)
    pipeline = Pipeline.from_config(config)
    pipeline.ingest([docs])
    before = record_chunks(pipeline)
    (docs / "beta.txt").write_bytes(b"\x00\x01\x02 binary now")  # fails to load: nothing of it is written
    report = Pipeline.from_config(config).ingest([docs])
    assert report.failed == 1
    after = Pipeline.from_config(config)
    assert record_chunks(after) == before == {i: v for i, v in store_chunks(after).items()}
    row = after.record.get(str((docs / "beta.txt").resolve()))
    assert row is not None and not row.pending
