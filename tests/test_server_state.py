"""What a long-running `rag serve` keeps between requests."""

from __future__ import annotations

import pytest

pytest.importorskip("fastapi", reason="the serve extra is not installed")

from support import PROSE, make_folder

from rag.pipeline import Pipeline
from rag.server import state


def test_a_long_running_server_forgets_old_ingest_jobs(tmp_path, minilm_path, monkeypatch):
    monkeypatch.setattr(state, "KEPT_JOBS", 3)
    folder = make_folder(tmp_path / "docs", {"gamma.txt": PROSE["gamma.txt"]})
    pipeline = Pipeline.from_config(store={"path": str(tmp_path / "store")},
                                    embedding={"model": str(minilm_path)})
    server = state.Server(pipeline)
    jobs = []
    for _ in range(6):
        job = server.start_ingest([folder])
        assert job.done.wait(120), "the ingest did not finish"
        assert job.status == "done", job.error
        jobs.append(job)
    assert set(server.jobs) == {job.id for job in jobs[-3:]}
