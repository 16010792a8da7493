"""Chroma's HTTP mode against a real `chroma run` server started on a free loopback port."""

from __future__ import annotations

import pytest
from support import PROSE, chroma_server, free_port, make_folder

from rag.pipeline import Pipeline


@pytest.fixture(scope="module")
def chroma_url(tmp_path_factory):
    with chroma_server(tmp_path_factory.mktemp("chroma-server")) as url:
        yield url


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
