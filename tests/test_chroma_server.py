"""Chroma's HTTP mode against a real `chroma run` server started on a free loopback port."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from rag.pipeline import Pipeline
from support import PROSE, make_folder


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def chroma_url(tmp_path_factory):
    chroma = shutil.which("chroma") or str(Path(sys.executable).with_name("chroma"))
    if not Path(chroma).exists():
        pytest.skip("the `chroma` command (from the chromadb package) is not installed")
    port = free_port()
    data = tmp_path_factory.mktemp("chroma-server")
    log = open(data / "server.log", "w")  # noqa: SIM115
    server = subprocess.Popen([chroma, "run", "--path", str(data / "db"), "--host", "127.0.0.1", "--port", str(port)],
                              stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"{url}/api/v2/heartbeat", timeout=1)
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"chroma server did not start: {(data / 'server.log').read_text()[-2000:]}")
                time.sleep(0.2)
        yield url
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


def test_http_store_behaves_like_the_embedded_one(tmp_path, minilm_path, chroma_url):
    docs = make_folder(tmp_path / "docs", PROSE)
    config = {"store": {"url": chroma_url, "path": str(tmp_path / "local"), "collection": "http-test"},
              "embedding": {"model": str(minilm_path)}}
    pipeline = Pipeline.from_config(config)
    first = pipeline.ingest([docs])
    assert first.added == 3 and first.chunks_total > 3
    # A second client sees the same data and re-ingesting embeds nothing.
    again = Pipeline.from_config(config).ingest([docs])
    assert again.unchanged == 3 and again.chunks_embedded == 0
    hits = Pipeline.from_config(config).search("sourdough bread", k=2)
    assert hits[0].chunk.metadata["source"].endswith("gamma.txt")
    lexical = Pipeline.from_config(config).search("sourdough", k=1, mode="lexical")
    assert lexical[0].chunk.metadata["source"].endswith("gamma.txt")
    gamma = hits[0].chunk.metadata["source"]
    filtered = Pipeline.from_config(config).search("sourdough bread", k=5, mode="hybrid", where={"source": gamma})
    assert filtered and all(h.chunk.metadata["source"] == gamma for h in filtered)
    # Nothing of the collection was written to the local folder: it lives on the server.
    assert not (tmp_path / "local" / "chroma.sqlite3").exists()


def test_unreachable_server_is_a_clear_error(tmp_path, minilm_path):
    from rag.errors import StoreError

    pipeline = Pipeline.from_config({"store": {"url": f"http://127.0.0.1:{free_port()}", "path": str(tmp_path)},
                                     "embedding": {"model": str(minilm_path)}})
    with pytest.raises(StoreError, match="cannot open Chroma"):
        pipeline.search("anything")
