"""Ingestion end to end with real components: loaders, the MiniLM tokenizer and model, embedded Chroma."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from support import PROSE, make_folder

from rag.cli import main
from rag.errors import StoreError
from rag.pipeline import Pipeline


def all_chunks(pipeline: Pipeline) -> dict[str, dict]:
    return dict(pipeline.store.iter_metadata())


@pytest.fixture()
def pipeline(tmp_path, minilm_path) -> Pipeline:
    return Pipeline.from_config({"store": {"path": str(tmp_path / "store")}, "embedding": {"model": str(minilm_path)}},
                                )


def test_ingest_is_idempotent_and_incremental(tmp_path, pipeline):
    docs = make_folder(tmp_path / "docs", PROSE)
    first = pipeline.ingest([docs])
    assert (first.added, first.failed, first.unchanged) == (3, 0, 0)
    assert first.chunks_embedded == first.chunks_total > 3
    before = all_chunks(pipeline)

    again = pipeline.ingest([docs])
    assert (again.added, again.updated, again.unchanged, again.chunks_embedded) == (0, 0, 3, 0)
    assert all_chunks(pipeline).keys() == before.keys()

    rewritten = "Beta notes were rewritten: the telescope now studies radio waves."
    (docs / "beta.txt").write_text(rewritten, encoding="utf-8")
    edited = pipeline.ingest([docs])
    assert (edited.updated, edited.unchanged, edited.added) == (1, 2, 0)
    after = all_chunks(pipeline)
    beta = str((docs / "beta.txt").resolve())
    old_beta = {i for i, m in before.items() if m["source"] == beta}
    new_beta = {i for i, m in after.items() if m["source"] == beta}
    assert not old_beta & new_beta and len(new_beta) == 1
    # Every other file's chunks are exactly as they were.
    assert {i for i, m in before.items() if m["source"] != beta} == {i for i, m in after.items() if m["source"] != beta}
    assert edited.chunks_embedded == 1 and edited.chunks_deleted == len(old_beta)

    (docs / "gamma.txt").unlink()
    kept = pipeline.ingest([docs])
    assert kept.removed == 0 and any(m["source"].endswith("gamma.txt") for m in all_chunks(pipeline).values())
    synced = pipeline.ingest([docs], sync=True)
    assert synced.removed == 1
    assert not any(m["source"].endswith("gamma.txt") for m in all_chunks(pipeline).values())


def test_metadata_the_store_keeps(tmp_path, pipeline):
    """Chroma holds scalars only: lists, mappings and dates from front matter or JSON records come
    back from the store as JSON and ISO text, numbers past int64 as their digits, None left out."""
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "post.md").write_text("---\ntags: [a, b]\ndate: 2024-01-02\ndraft: false\nnone:\n---\n# Post\n\nBody.\n")
    records = [{"text": "A record.", "nested": {"k": 1}, "big": 2**70, "ratio": float("nan"), "extra": None}]
    (docs / "records.json").write_text(json.dumps(records))
    assert pipeline.ingest([docs]).added == 2
    stored = {Path(m["source"]).name: m for m in all_chunks(pipeline).values()}
    post, record = stored["post.md"], stored["records.json"]
    assert post["tags"] == '["a", "b"]' and post["date"] == "2024-01-02" and post["draft"] is False
    assert "none" not in post and "extra" not in record
    assert record["nested"] == '{"k": 1}' and record["big"] == str(2**70) and record["ratio"] == "nan"


def test_chunks_carry_offsets_and_provenance(tmp_path, pipeline):
    docs = make_folder(tmp_path / "docs", PROSE)
    pipeline.ingest([docs])
    text = (docs / "alpha.md").read_text()
    for chunk_id, metadata in all_chunks(pipeline).items():
        assert metadata["source"].startswith(str(docs.resolve()))
        assert metadata["format"] in ("markdown", "text")
        if metadata["source"].endswith("alpha.md"):
            assert metadata["title"] == "Alpha"
            (chunk,) = [c for c, _ in pipeline.store.get([chunk_id])]
            assert text[metadata["start"] : metadata["end"]] == chunk.text
            assert pipeline.chunker.count_tokens(chunk.text) <= pipeline.embedder.max_content_tokens


def test_search_finds_the_right_file(tmp_path, pipeline):
    pipeline.ingest([make_folder(tmp_path / "docs", PROSE)])
    hits = pipeline.search("bread baking with rye", k=3)
    assert hits[0].chunk.metadata["source"].endswith("gamma.txt")
    assert [h.rank for h in hits] == [1, 2, 3]
    assert all(-1.0 <= h.score <= 1.0 for h in hits)
    assert hits[0].score >= hits[1].score >= hits[2].score


def test_failed_files_are_reported_and_others_ingested(tmp_path, pipeline):
    docs = make_folder(tmp_path / "docs", PROSE)
    (docs / "empty.txt").write_bytes(b"")
    (docs / "junk.md").write_bytes(bytes(range(256)) * 8)
    (docs / "broken.pdf").write_bytes(b"%PDF-1.7\n1 0 obj << /Type /Catalog")
    report = pipeline.ingest([docs, tmp_path / "missing-folder"])
    assert report.added == 3
    assert report.failed == 4
    reasons = dict(report.failures)
    assert any("missing-folder" in source for source in reasons)
    assert all(reason and "\n" not in reason for reason in reasons.values())


def test_a_file_that_fails_later_keeps_what_was_ingested(tmp_path, pipeline):
    docs = make_folder(tmp_path / "docs", PROSE)
    pipeline.ingest([docs])
    count = pipeline.store.count()
    (docs / "alpha.md").write_bytes(b"\x00\x01\x02" * 100)  # now binary junk
    report = pipeline.ingest([docs])
    assert report.failed == 1
    assert pipeline.store.count() == count


def test_store_refuses_another_embedding_model(tmp_path, pipeline, minilm_path):
    pipeline.ingest([make_folder(tmp_path / "docs", PROSE)])
    other = tmp_path / "other-model"
    from transformers import AutoTokenizer, BertConfig, BertModel

    AutoTokenizer.from_pretrained(minilm_path).save_pretrained(other)
    BertModel(BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=64)).save_pretrained(other)
    stranger = Pipeline.from_config({"store": {"path": str(tmp_path / "store")}, "embedding": {"model": str(other)}})
    with pytest.raises(StoreError, match="built with"):
        stranger.search("reactor")


def test_cli_ingest_search_info_json(tmp_path, minilm_path, capsys):
    docs = make_folder(tmp_path / "docs", PROSE)
    (docs / "empty.txt").write_bytes(b"")
    store = str(tmp_path / "store")
    common = ["--store", store, "--set", f"embedding.model={minilm_path}"]
    assert main(["ingest", str(docs), *common]) == 1  # one file failed
    captured = capsys.readouterr()
    assert "3 added" in captured.out and "1 failed" in captured.out
    assert "empty.txt" in captured.err
    assert main(["ingest", str(docs), "--allow-failures", *common]) == 0
    assert "3 unchanged" in capsys.readouterr().out

    assert main(["search", "infrared galaxies", "-k", "2", "--json", *common]) == 0
    result = json.loads(capsys.readouterr().out)
    assert len(result["hits"]) == 2
    top = result["hits"][0]
    assert {"id", "score", "text", "source", "metadata"} <= top.keys()
    assert top["source"].endswith("beta.txt")

    assert main(["info", "--json", *common]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["files"] == 3 and info["chunks"] > 3 and info["embedding_model"] == str(minilm_path)


def test_the_collection_records_the_dtype_that_built_it(tmp_path, minilm_path, capsys):
    from rag.hub import auto_dtype

    docs = make_folder(tmp_path / "docs", PROSE)
    common = ["--store", str(tmp_path / "store"), "--set", f"embedding.model={minilm_path}"]
    auto = str(auto_dtype("cpu")).removeprefix("torch.")  # bfloat16 where the CPU computes it natively
    other = "float32" if auto == "bfloat16" else "bfloat16"

    def info() -> dict:
        assert main(["info", "--json", *common]) == 0
        return json.loads(capsys.readouterr().out)

    assert main(["ingest", str(docs), *common]) == 0
    assert f"embedded in {auto}," in capsys.readouterr().out
    assert info()["embedding_dtype"] == auto
    # Another dtype reads the same collection, and re-ingesting unchanged files embeds nothing...
    assert main(["ingest", str(docs), *common, "--set", f"embedding.dtype={other}", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["unchanged"], report["chunks_embedded"], report["embedding_dtype"]) == (3, 0, other)
    assert info()["embedding_dtype"] == auto  # ...so the record is unchanged
    # A file embedded in the other dtype makes the record name both.
    (docs / "new.txt").write_text("A new page about tide pools and the creatures living in them.", encoding="utf-8")
    assert main(["ingest", str(docs), *common, "--set", f"embedding.dtype={other}"]) == 0
    assert "1 added" in capsys.readouterr().out
    assert info()["embedding_dtype"] == ",".join(sorted([auto, other]))


def test_cli_errors_are_one_line(tmp_path, minilm_path, capsys):
    common = ["--store", str(tmp_path / "store"), "--set", f"embedding.model={minilm_path}"]
    assert main(["search", "anything", *common]) == 2
    err = capsys.readouterr().err
    assert err.startswith("rag: error:") and err.count("\n") == 1 and "rag ingest" in err
    bad = tmp_path / "bad.yaml"
    bad.write_text("chunking:\n  chunk_sise: 100\n")
    assert main(["info", "--config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "chunking.chunk_sise" in err and str(bad) in err and "Traceback" not in err


def test_rag_command_installed_json_stdout_only(tmp_path, minilm_path):
    """The real `rag` entry point: --json output is one JSON document, logs go to stderr."""
    docs = make_folder(tmp_path / "docs", PROSE)
    rag = Path(sys.executable).with_name("rag")
    if not rag.exists():
        pytest.skip("the rag command is not installed in this environment (pip install -e .)")
    command = [str(rag), "ingest", str(docs), "--json", "--store", str(tmp_path / "s"),
               "--set", f"embedding.model={minilm_path}"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["added"] == 3


def test_pipelined_ingest_equals_one_batch_at_a_time(tmp_path, minilm_path, monkeypatch):
    """Loading ahead in a thread and embedding many files together change nothing in the store."""
    import numpy as np

    import rag.indexing

    files = {f"doc{i}.md": f"# Doc {i}\n\n" + f"Paragraph about topic {i} and its details. " * (5 + 13 * i)
             for i in range(8)}
    docs = make_folder(tmp_path / "docs", {**files, **PROSE})

    def stored(store_dir: Path, write_batch: int = 1024, ahead: bool = True) -> dict:
        pipeline = Pipeline.from_config({"store": {"path": str(store_dir)},
                                         "ingest": {"prepare_ahead": ahead, "write_batch": write_batch},
                                         # float32: its vectors do not depend on the batch
                                         "embedding": {"model": str(minilm_path), "dtype": "float32"}})
        pipeline.ingest([docs])
        ids = [i for i, _ in pipeline.store.iter_metadata()]
        return {c.id: (c.text, c.metadata, v) for c, v in pipeline.store.get(ids, embeddings=True)}

    prepared_in_threads = []
    real_ahead = rag.indexing._ahead
    monkeypatch.setattr(rag.indexing, "_ahead", lambda make: prepared_in_threads.append(1) or real_ahead(make))
    pipelined = stored(tmp_path / "pipelined")
    assert prepared_in_threads  # the thread path was taken
    one_at_a_time = stored(tmp_path / "one-at-a-time", write_batch=1, ahead=False)
    assert len(prepared_in_threads) == 1
    assert pipelined.keys() == one_at_a_time.keys() and len(pipelined) > 20
    for chunk_id, (text, metadata, vector) in pipelined.items():
        other_text, other_metadata, other_vector = one_at_a_time[chunk_id]
        assert text == other_text and metadata == other_metadata
        assert np.abs(vector - other_vector).max() < 1e-5
