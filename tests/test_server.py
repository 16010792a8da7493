"""`rag serve` as a user meets it: a live server process on a free loopback port, driven by the official
OpenAI client and by plain HTTP. The generator is a tiny random-weight model (built here), so answers
are noise; what is checked is the mechanics: streaming, sources, embeddings, errors, ingest, delete."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

httpx = pytest.importorskip("httpx")
openai = pytest.importorskip("openai")
pytest.importorskip("fastapi", reason='the serve extra is not installed (pip install -e ".[serve]")')

from proc_support import child_env  # noqa: E402
from serve_support import rag_server  # noqa: E402
from support import PROSE, free_port, make_folder  # noqa: E402
from tiny_models import build_tiny_causal_lm  # noqa: E402

from rag.pipeline import Pipeline  # noqa: E402
from rag.stores.bm25 import LexicalIndex  # noqa: E402

SAMPLE_DOCS = Path(__file__).resolve().parents[1] / "examples" / "sample_docs"
KEY = "test-key-3f9a"
QUESTION = "How many days of paid holiday do full-time employees get?"


def write_config(path: Path, store: Path, minilm: Path, generator: Path, **server) -> Path:
    config = {
        "store": {"path": str(store)},
        "embedding": {"model": str(minilm)},
        "prompt": {"template": "qa_cited", "evidence": "chunks"},
        # A long context, so that an answer can run for many seconds (the disconnect test).
        "generation": {"model": str(generator), "max_new_tokens": 12, "stop": [], "context_window": 60000},
        "server": server,
    }
    path.write_text(json.dumps(config), encoding="utf-8")  # JSON is YAML
    return path


@pytest.fixture(scope="module")
def served(tmp_path_factory, minilm_path):
    """The sample documents ingested, and a server over them with an API key."""
    root = tmp_path_factory.mktemp("serve")
    generator = build_tiny_causal_lm(root / "tiny-lm", chat_template=True)
    store = root / "store"
    config = write_config(root / "config.yaml", store, minilm_path, generator, api_key=KEY,
                          max_request_bytes=65536, max_upload_bytes=524288, root=str(root / "shared"))
    pipeline = Pipeline.from_yaml(config)
    pipeline.ingest([SAMPLE_DOCS])
    make_folder(root / "shared", PROSE)
    with rag_server(config, root) as url:
        yield {"url": url, "config": config, "store": store, "root": root, "pipeline": pipeline}


@pytest.fixture()
def client(served):
    return openai.OpenAI(base_url=f"{served['url']}/v1", api_key=KEY, max_retries=0, timeout=120)


def auth() -> dict[str, str]:
    return {"Authorization": f"Bearer {KEY}"}


def test_chat_streamed_deltas_equal_the_whole_answer_and_carry_the_sources(served, client):
    messages = [{"role": "user", "content": QUESTION}]
    whole = client.chat.completions.create(model="rag", messages=messages, max_tokens=10)
    text = whole.choices[0].message.content
    assert whole.object == "chat.completion" and whole.choices[0].finish_reason in ("stop", "length")
    assert whole.usage.completion_tokens <= 10 and whole.usage.total_tokens > whole.usage.prompt_tokens
    sources = whole.model_extra["sources"]
    assert [s["number"] for s in sources] == list(range(1, len(sources) + 1)) and sources
    assert {"chunk_id", "source", "page", "score", "scores", "text"} <= sources[0].keys()
    assert any(s["source"].endswith("travel-policy.md") for s in sources)

    chunks = list(client.chat.completions.create(model="rag", messages=messages, max_tokens=10, stream=True,
                                                 stream_options={"include_usage": True}))
    deltas = [c.choices[0].delta.content or "" for c in chunks if c.choices]
    assert len([d for d in deltas if d]) > 1, "the answer came in one piece, not streamed"
    assert "".join(deltas) == text  # greedy decoding: the same text either way, sent as deltas
    final = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(final) == 1 and final[0].model_extra["sources"] == sources
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens

    # And the same answer as the Python API gives, in-process, over the same store.
    assert served["pipeline"].ask(QUESTION, generation={"max_new_tokens": 10}).text == text


def test_generation_options_and_history_reach_the_model(served, client):
    messages = [{"role": "user", "content": "earlier question"}, {"role": "assistant", "content": "earlier answer"},
                {"role": "user", "content": QUESTION}]
    short = client.chat.completions.create(model="rag", messages=messages, max_tokens=3)
    assert short.usage.completion_tokens <= 3
    assert short.choices[0].finish_reason == ("length" if short.usage.completion_tokens == 3 else "stop")
    sampled = [client.chat.completions.create(model="rag", messages=messages, max_tokens=8, temperature=1.5,
                                              seed=seed).choices[0].message.content for seed in (1, 1, 2)]
    assert sampled[0] == sampled[1] != sampled[2]  # seeded sampling: repeatable, and the seed matters


def test_embeddings_equal_rags_own_vectors(served, client):
    pipeline = served["pipeline"]
    texts = ["The alpha reactor runs on molten salt.", "Sourdough bread with rye flour."]
    model = pipeline.settings.embedding.model
    listed = {m.id for m in client.models.list().data}
    assert {"rag", model} <= listed
    got = client.embeddings.create(model=model, input=texts)  # the client asks for base64
    vectors = np.array([d.embedding for d in got.data], dtype=np.float32)
    own = pipeline.embedder.embed_documents(texts)
    assert np.abs(vectors - own).max() < 1e-6
    plain = httpx.post(f"{served['url']}/v1/embeddings", headers=auth(),
                       json={"model": model, "input": texts[0], "encoding_format": "float"}).json()
    assert np.abs(np.array(plain["data"][0]["embedding"]) - own[0]).max() < 1e-6
    assert plain["usage"]["prompt_tokens"] > 0


def test_search_is_the_rag_search_json_document(served):
    response = httpx.post(f"{served['url']}/search", headers=auth(), json={"query": "holiday days", "k": 3})
    assert response.status_code == 200
    body = response.json()
    own = served["pipeline"].search("holiday days", 3)
    assert body["mode"] == "hybrid" and [h["id"] for h in body["hits"]] == [h.chunk.id for h in own]
    assert body["hits"][0] == json.loads(json.dumps(own[0].to_dict(), default=str))


def error_of(response: httpx.Response) -> dict:
    assert "Traceback" not in response.text and 'File "' not in response.text
    error = response.json()["error"]
    assert error["message"] and error["type"]
    return error


def test_bad_requests_are_clear_4xx_and_the_server_keeps_serving(served):
    url = served["url"]
    before = httpx.post(f"{url}/search", headers=auth(), json={"query": "holiday", "k": 50}).json()["hits"]

    assert httpx.get(f"{url}/health").status_code == 200  # the one endpoint without a key
    missing = httpx.get(f"{url}/v1/models")
    assert missing.status_code == 401 and error_of(missing)["code"] == "invalid_api_key"
    wrong = httpx.post(f"{url}/search", headers={"Authorization": "Bearer nope"}, json={"query": "x"})
    assert wrong.status_code == 401
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{url}/v1", api_key="nope", max_retries=0).models.list()

    malformed = httpx.post(f"{url}/v1/chat/completions", headers={**auth(), "Content-Type": "application/json"},
                           content=b'{"model": "rag", "messages": [')
    assert malformed.status_code == 400 and "not valid JSON" in error_of(malformed)["message"]
    no_messages = httpx.post(f"{url}/v1/chat/completions", headers=auth(), json={"model": "rag"})
    assert no_messages.status_code == 400 and error_of(no_messages)["param"] == "messages"
    with pytest.raises(openai.NotFoundError, match="gpt-4"):
        openai.OpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0).chat.completions.create(
            model="gpt-4", messages=[{"role": "user", "content": "hi"}])
    oversized = httpx.post(f"{url}/search", headers=auth(), json={"query": "x" * 100_000})
    assert oversized.status_code == 413 and error_of(oversized)["code"] == "request_too_large"
    big_upload = httpx.post(f"{url}/ingest", headers=auth(), files={"files": ("big.txt", b"words " * 100_000)})
    assert big_upload.status_code == 413

    for name in ("../escape.md", "/etc/passwd.md", "a/../../b.md", "..\\x.md"):
        sneaky = httpx.post(f"{url}/ingest", headers=auth(), files={"files": (name, b"# Sneaky\n\ntext")})
        assert sneaky.status_code == 400, name
        assert error_of(sneaky)["code"] == "bad_upload_name"
    assert not (served["store"] / "escape.md").exists() and not (served["root"] / "escape.md").exists()
    program = httpx.post(f"{url}/ingest", headers=auth(), files={"files": ("tool.exe", b"MZ\x90\x00")})
    assert program.status_code == 415
    outside = httpx.post(f"{url}/ingest", headers=auth(), json={"paths": ["../../etc"]})
    assert outside.status_code == 403 and error_of(outside)["code"] == "path_outside_root"

    # A hostile file: a "PDF" that is not one, beside a good file. The good one is ingested, the bad
    # one reported (422), and nothing that was there before is lost.
    hostile = httpx.post(f"{url}/ingest", headers=auth(), files=[
        ("files", ("report.pdf", b"%PDF-1.7\n" + os.urandom(4000))),
        ("files", ("fine.md", b"# Fine\n\nThe zebra crossing is painted every spring."))])
    assert hostile.status_code == 422, hostile.text
    body = hostile.json()
    assert body["error"]["code"] == "files_failed" and "report.pdf" in body["error"]["message"]
    assert body["report"]["added"] == 1 and body["report"]["failed"] == 1
    assert not (served["store"] / "uploads" / "report.pdf").exists()  # what failed is not kept

    after = httpx.post(f"{url}/search", headers=auth(), json={"query": "holiday", "k": 50}).json()["hits"]
    assert {h["id"] for h in before} <= {h["id"] for h in after}
    assert httpx.get(f"{url}/health").status_code == 200
    ok = openai.OpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0).chat.completions.create(
        model="rag", messages=[{"role": "user", "content": QUESTION}], max_tokens=4)
    assert ok.choices[0].message.content is not None
    cleanup = httpx.delete(f"{url}/documents", headers=auth(), params={"source": "fine.md"})
    assert cleanup.status_code == 200


def store_and_lexical_ids(served) -> tuple[set[str], set[str]]:
    pipeline = Pipeline.from_yaml(served["config"])
    store = pipeline._open_store(create=False)
    lexical = LexicalIndex(served["store"] / "lexical" / "rag")
    assert lexical.load() and lexical.state == store.state, "the lexical index is behind the store"
    return store.ids(), lexical.ids


def test_upload_ingest_and_delete_keep_chroma_and_bm25_in_step(served):
    url = served["url"]
    ids_before, lexical_before = store_and_lexical_ids(served)
    assert ids_before == lexical_before
    files = [("files", (name, text.encode())) for name, text in PROSE.items()]
    done = httpx.post(f"{url}/ingest", headers=auth(), files=files, timeout=120)
    assert done.status_code == 200, done.text
    job = done.json()
    assert job["status"] == "done" and job["report"]["added"] == 3 and job["files_done"] == 3
    assert httpx.get(f"{url}/ingest/{job['id']}", headers=auth()).json()["report"] == job["report"]
    ids, lexical = store_and_lexical_ids(served)
    assert ids == lexical and ids > ids_before

    again = httpx.post(f"{url}/ingest", headers=auth(), files=files, timeout=120).json()
    assert again["report"]["unchanged"] == 3 and again["report"]["chunks_embedded"] == 0

    gamma = next(h for h in httpx.post(f"{url}/search", headers=auth(), json={"query": "sourdough", "k": 1,
                                                                               "mode": "lexical"}).json()["hits"])
    assert gamma["source"].endswith("uploads/gamma.txt")
    deleted = httpx.delete(f"{url}/documents", headers=auth(), params={"source": gamma["source"]})
    assert deleted.status_code == 200 and deleted.json()["removed"] == 1
    ids_after, lexical_after = store_and_lexical_ids(served)
    assert ids_after == lexical_after and gamma["id"] not in ids_after
    hits = httpx.post(f"{url}/search", headers=auth(), json={"query": "sourdough", "mode": "lexical"}).json()["hits"]
    assert all(not h["source"].endswith("gamma.txt") for h in hits)
    assert not (served["store"] / "uploads" / "gamma.txt").exists()
    gone = httpx.delete(f"{url}/documents", headers=auth(), params={"source": gamma["source"]})
    assert gone.status_code == 404 and error_of(gone)["code"] == "not_found"

    # Server-side paths under --root (server.root), with the same summary.
    shared = httpx.post(f"{url}/ingest", headers=auth(), json={"paths": ["."]}, timeout=120).json()
    assert shared["report"]["added"] == 3
    ids, lexical = store_and_lexical_ids(served)
    assert ids == lexical
    for name in PROSE:
        for source in (name, str(served["root"] / "shared" / name)):
            httpx.delete(f"{url}/documents", headers=auth(), params={"source": source})
    ids, lexical = store_and_lexical_ids(served)
    assert ids == lexical == ids_before


def test_a_long_ingest_runs_in_the_background_and_searches_keep_answering(served):
    url = served["url"]
    files = [("files", (f"note-{i:03d}.md", f"# Note {i}\n\nNote {i} is about topic {i % 7}. ".encode() * 40))
             for i in range(120)]
    started = httpx.post(f"{url}/ingest", headers=auth(), params={"wait": 0}, files=files)
    assert started.status_code == 202 and started.headers["location"] == f"/ingest/{started.json()['id']}"
    answered_while_running = 0
    while True:
        status = httpx.get(f"{url}{started.headers['location']}", headers=auth()).json()
        if status["status"] == "done":
            break
        assert status["status"] in ("queued", "running")
        search = httpx.post(f"{url}/search", headers=auth(), json={"query": "holiday", "k": 3}, timeout=30)
        assert search.status_code == 200 and search.json()["hits"]
        if httpx.get(f"{url}{started.headers['location']}", headers=auth()).json()["status"] != "done":
            answered_while_running += 1
    assert answered_while_running >= 1
    assert status["report"]["added"] == 120 and status["files_done"] == 120
    for i in range(120):
        httpx.delete(f"{url}/documents", headers=auth(), params={"source": f"note-{i:03d}.md"})


def test_a_client_that_goes_away_stops_its_generation(served):
    """One generation slot: a stream left after its first chunk must free the model for the next."""
    url = served["url"]
    request = {"model": "rag", "stream": True, "max_tokens": 50000,
               "messages": [{"role": "user", "content": QUESTION}]}
    with httpx.stream("POST", f"{url}/v1/chat/completions", headers=auth(), json=request, timeout=60) as response:
        assert response.status_code == 200
        lines = response.iter_lines()  # held: a dropped iterator closes the response
        assert '"finish_reason": null' in next(lines)
        assert httpx.get(f"{url}/info", headers=auth()).json()["server"]["generations"]["active"] == 1
    # Generating 50000 tokens takes minutes; a stopped one frees its slot at once.
    deadline = time.monotonic() + 10
    while httpx.get(f"{url}/info", headers=auth()).json()["server"]["generations"]["active"]:
        assert time.monotonic() < deadline, "the generation went on after its client left"
        time.sleep(0.1)
    clock = time.monotonic()
    openai.OpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0).chat.completions.create(
        model="rag", messages=[{"role": "user", "content": QUESTION}], max_tokens=4)
    assert time.monotonic() - clock < 20


def test_openapi_schema_and_info(served):
    schema = httpx.get(f"{served['url']}/openapi.json", headers=auth()).json()
    assert {"/v1/chat/completions", "/v1/embeddings", "/v1/models", "/search", "/ingest", "/documents", "/info",
            "/health"} <= set(schema["paths"])
    info = httpx.get(f"{served['url']}/info", headers=auth()).json()
    assert info["chunks"] > 0 and info["server"]["model_id"] == "rag"


def test_listening_beyond_loopback_without_a_key_is_refused(tmp_path, minilm_path):
    config = write_config(tmp_path / "config.yaml", tmp_path / "store", minilm_path, tmp_path / "no-model")
    env = {k: v for k, v in child_env().items() if k != "RAG_API_KEY"}
    done = subprocess.run([sys.executable, "-m", "rag.cli", "serve", "--config", str(config), "--host", "0.0.0.0",
                           "--port", str(free_port())], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "API key" in lines[0] and "0.0.0.0" in lines[0]
