"""The Ray engine against a real local Ray (2 CPUs, on 127.0.0.1) and a real `chroma run` server: it must
leave the store exactly as the local engine does, id by id, through re-ingests, edits and a killed worker."""

from __future__ import annotations

import os
import re
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from support import PROSE, chroma_server, make_folder

from rag.errors import ConfigError, RagError
from rag.pipeline import Pipeline

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # a single-node Ray on 127.0.0.1 only
ray = pytest.importorskip("ray", reason='Ray is not installed (pip install -e ".[ray]")')


@pytest.fixture(scope="module")
def chroma_url(tmp_path_factory):
    with chroma_server(tmp_path_factory.mktemp("chroma-ray")) as url:
        yield url


@pytest.fixture(scope="module")
def ray_cluster():
    """A Ray of this machine's 2 CPUs, on loopback only; the engine joins it instead of starting one."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


def mixed_folder(root: Path) -> Path:
    """Text, Markdown, HTML, CSV, JSON Lines and DOCX files, one empty file and one binary one."""
    import docx

    (root / "sub").mkdir(parents=True)
    make_folder(root, {
        **PROSE,
        "page.html": "<html><head><title>Kiln</title></head><body><h1>Kiln</h1><p>"
                     + "A kiln fires clay at 1200 degrees for stoneware. " * 30 + "</p></body></html>",
        "table.csv": "city,river,population\n" + "".join(f"City{i},River{i % 7},{1000 * i}\n" for i in range(40)),
        "notes.jsonl": "".join(f'{{"text": "Note {i} is about glaciers carving fjords over millennia."}}\n'
                               for i in range(12)),
        "sub/deep.md": "# Deep\n\n## Part\n\n" + "Sediment settles in the delta every flood season. " * 50,
        "empty.txt": "",
    })
    (root / "binary.txt").write_bytes(bytes(range(256)) * 8)
    document = docx.Document()
    document.add_heading("Glassblowing", level=1)
    for i in range(6):
        document.add_paragraph(f"Step {i}: the gather of molten glass is turned on the pipe and shaped. " * 4)
    document.save(root / "glass.docx")
    return root


def config(tmp_path: Path, url: str, collection: str, minilm_path: Path, engine: str, **ray_settings) -> dict:
    return {"store": {"url": url, "path": str(tmp_path / f"local-{collection}"), "collection": collection},
            "embedding": {"model": str(minilm_path), "dtype": "float32"},  # batch-independent vectors
            "chunking": {"chunk_size": 96, "chunk_overlap": 16},
            "ingest": {"engine": engine, "ray": {"workers": 2, "batch_size": 16, **ray_settings}}}


def contents(pipeline: Pipeline) -> dict:
    store = pipeline._open_store(create=False)
    ids = sorted(store.ids())
    return {c.id: (c.text, c.metadata, vector) for c, vector in store.get(ids, embeddings=True)}


def assert_same_store(ray_side: Pipeline, local_side: Pipeline) -> None:
    ours, theirs = contents(ray_side), contents(local_side)
    assert ours.keys() == theirs.keys() and len(ours) > 40
    for chunk_id, (text, metadata, vector) in ours.items():
        other_text, other_metadata, other_vector = theirs[chunk_id]
        assert text == other_text and metadata == other_metadata, chunk_id
        assert np.abs(vector - other_vector).max() < 1e-5, chunk_id
    assert ray_side.lexical.in_step_with(ray_side.store).ids == set(ours)
    assert local_side.lexical.in_step_with(local_side.store).ids == set(theirs)


def test_ray_ingest_equals_local_ingest_id_by_id(tmp_path, minilm_path, chroma_url, ray_cluster):
    docs = mixed_folder(tmp_path / "docs")
    local_config = config(tmp_path, chroma_url, "local-engine", minilm_path, "local")
    ray_config = config(tmp_path, chroma_url, "ray-engine", minilm_path, "ray")
    local = Pipeline.from_config(local_config).ingest([docs])
    first = Pipeline.from_config(ray_config).ingest([docs])
    assert (first.added, first.failed) == (local.added, local.failed) == (8, 2)
    assert sorted(first.failures) == sorted(local.failures)
    assert first.chunks_embedded == local.chunks_embedded == first.chunks_total
    assert_same_store(Pipeline.from_config(ray_config), Pipeline.from_config(local_config))

    again = Pipeline.from_config(ray_config).ingest([docs])
    assert (again.unchanged, again.chunks_embedded, again.chunks_deleted) == (8, 0, 0)

    # An edited file is replaced (the chunks before its edit are kept, not embedded again); a removed
    # file goes with --sync: on both engines alike.
    text = PROSE["alpha.md"]
    last = text.rindex("boron carbide")
    (docs / "alpha.md").write_text(text[:last] + "hafnium oxide" + text[last + 13:], encoding="utf-8")
    (docs / "beta.txt").unlink()
    edited = [Pipeline.from_config(c).ingest([docs], sync=True) for c in (ray_config, local_config)]
    for report in edited:
        assert (report.updated, report.removed, report.unchanged) == (1, 1, 6)
    assert edited[0].chunks_embedded == edited[1].chunks_embedded > 0
    assert edited[0].chunks_deleted == edited[1].chunks_deleted > 0
    ray_side = Pipeline.from_config(ray_config)
    alpha = ray_side._open_store(create=False).ids(where={"source": str((docs / "alpha.md").resolve())})
    assert len(alpha) > edited[0].chunks_embedded  # the chunks the edit left alone were kept, not embedded
    assert_same_store(ray_side, Pipeline.from_config(local_config))
    hits = Pipeline.from_config(ray_config).search("hafnium control rods", k=1, mode="lexical")
    assert hits[0].chunk.metadata["source"].endswith("alpha.md")


def test_ray_engine_needs_a_chroma_server(tmp_path, minilm_path):
    pipeline = Pipeline.from_config({"store": {"path": str(tmp_path / "s")}, "embedding": {"model": str(minilm_path)},
                                     "ingest": {"engine": "ray"}})
    with pytest.raises(ConfigError, match=re.escape("store.url")):
        pipeline.ingest([tmp_path])


def test_cli_without_a_server_is_one_line(tmp_path, minilm_path, capsys):
    from rag.cli import main

    code = main(["ingest", str(tmp_path), "--engine", "ray", "--store", str(tmp_path / "s"),
                 "--set", f"embedding.model={minilm_path}"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "store.url" in err and len(err.splitlines()) == 1


def embedding_workers() -> list[int]:
    """PIDs of Ray's embedding actors (their process title names the class)."""
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and b"EmbedWriter" in (entry / "cmdline").read_bytes():
                pids.append(int(entry.name))
        except OSError:
            continue
    return pids


@pytest.mark.slow
def test_killed_worker_then_rerun_equals_clean(tmp_path, minilm_path, chroma_url, ray_cluster):
    files = {f"doc{i:02}.md": f"# Doc {i}\n\n" + f"Paragraph {i} on tide pools, kelp and limpets. " * 60
             for i in range(24)}
    docs = make_folder(tmp_path / "docs", files)
    clean_config = config(tmp_path, chroma_url, "clean", minilm_path, "local")
    ray_config = config(tmp_path, chroma_url, "killed", minilm_path, "ray", batch_size=8)
    Pipeline.from_config(clean_config).ingest([docs])

    outcome: dict = {}

    def ingest() -> None:
        try:
            outcome["report"] = Pipeline.from_config(ray_config).ingest([docs])
        except RagError as exc:
            outcome["error"] = str(exc)

    run = threading.Thread(target=ingest)
    run.start()
    watcher = Pipeline.from_config(ray_config)
    killed = None
    deadline = time.monotonic() + 240
    while killed is None and run.is_alive() and time.monotonic() < deadline:
        # Kill an embedding worker once it has written something: mid-run, with batches in flight.
        if watcher.store.exists() and watcher._open_store(create=False).count() > 0 and embedding_workers():
            killed = embedding_workers()[0]
            os.kill(killed, signal.SIGKILL)
        time.sleep(0.05)
    run.join(timeout=300)
    assert killed is not None, "the ingest ended before a worker could be killed"
    assert not run.is_alive(), "the ingest hung after its worker was killed"
    # Either Ray retried the batch (a complete ingest) or the ingest said so in one line.
    assert "report" in outcome or "\n" not in outcome["error"], outcome
    print("after the kill:", outcome.get("error") or outcome["report"].summary())
    rerun = Pipeline.from_config(ray_config).ingest([docs])
    assert rerun.failed == 0
    assert_same_store(Pipeline.from_config(ray_config), Pipeline.from_config(clean_config))
