"""Result files reach the disk before they take their name: a crash or a power cut right after an
evaluation leaves the previous report or the new one, never an empty file under the report's name."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from rag.config import Settings
from rag.evaluation.report import write_outputs
from rag.files import atomic_file, write_atomic


@pytest.fixture
def synced(monkeypatch) -> list[tuple[str, bytes]]:
    """(path, content on disk at that moment) for every regular file fsynced."""
    seen: list[tuple[str, bytes]] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        real_fsync(fd)
        path = os.readlink(f"/proc/self/fd/{fd}")
        if os.path.isfile(path):
            seen.append((path, Path(path).read_bytes()))

    monkeypatch.setattr(os, "fsync", fsync)
    return seen


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="reads file names from /proc (Linux)")
def test_every_evaluation_output_is_on_disk_before_it_is_named(tmp_path, synced):
    result = {"task": "retrieval", "mode": "hybrid", "queries": 2, "seconds": 1.0, "metrics": {"ndcg@10": 0.5}}
    rows = [{"query": "q1", "ndcg@10": 0.4}, {"query": "q2", "ndcg@10": 0.6}]
    write_outputs(tmp_path, Settings(), result, rows)

    names = ("per_query.jsonl", "config.yaml", "report.md", "metrics.json")
    for name in names:
        final = tmp_path / name
        written = [content for path, content in synced if Path(path).name == f".{name}.partial"]
        assert written == [final.read_bytes()], name  # synced whole under its temporary name, then renamed
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names)  # no partial file left behind


def test_a_writer_failing_halfway_keeps_the_previous_file(tmp_path):
    target = tmp_path / "report.md"
    write_atomic(target, "the previous report\n")
    with pytest.raises(RuntimeError), atomic_file(target) as out:
        out.write(b"half of a new rep")
        raise RuntimeError("the writer failed halfway")
    assert target.read_text() == "the previous report\n"
    assert [p.name for p in tmp_path.iterdir()] == ["report.md"]
