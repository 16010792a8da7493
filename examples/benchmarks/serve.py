"""What HTTP costs: `rag serve` against the same calls in-process, on a BEIR collection (SciFact).

    python examples/benchmarks/serve.py --store DIR --corpus ../shared/data/scifact/corpus.jsonl \\
        --queries ../shared/data/scifact/queries.train.jsonl [--clients 16 --seconds 60 --chats 30]

The store must hold the corpus's evaluation collection, which `rag eval retrieval --corpus C --queries Q
--qrels R --store DIR` builds (and this script builds the same way when it is missing). ``--set KEY=VALUE``
settings apply to both sides alike (e.g. ``--set embedding.dtype=bfloat16`` as the store was built).

Three processes: this driver (the HTTP clients; it never imports torch), a `rag serve` child, and a
child holding the in-process ``Pipeline``. Whichever side is not being measured is paused (SIGSTOP):
two idle torch runtimes on the same cores otherwise take CPU from each other (OpenMP threads spin
after their work), which measured as the server's answers starting ~20 ms later.

1. Searches under load: ``--clients`` threads each send one query after another for ``--seconds`` in
   all, as ``POST /search`` (k=10, keep-alive connections, JSON parsed), and as ``Pipeline.search``
   from as many threads in the in-process child. The two sides alternate in halves. Latency p50/p95,
   requests/s and errors for each, and the HTTP overhead at p50.
2. Time to the first streamed byte of an answer: ``POST /v1/chat/completions`` with ``stream: true``
   (until the first content delta arrives) against ``next(Pipeline.stream(...))`` in the child, one
   question at a time, the sides alternating question by question; both read the answer to its end.
   Besides each side's percentiles, the median of the per-question difference.

One JSON document on stdout; progress on stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from rag import evaluation


def log(message: str) -> None:
    print(f"[serve-bench] {message}", file=sys.stderr, flush=True)


def percentile(values: list[float], q: float) -> float:
    return evaluation.percentile(values, q) if values else float("nan")


def summary(latencies: list[float], errors: int, seconds: float) -> dict:
    ms = [1000 * s for s in latencies]
    return {"requests": len(ms), "errors": errors, "requests_per_s": len(ms) / seconds if seconds else 0.0,
            "p50_ms": percentile(ms, 50), "p95_ms": percentile(ms, 95),
            "mean_ms": statistics.fmean(ms) if ms else float("nan")}


def start_server(args: argparse.Namespace, collection: str, port: int, workdir: Path) -> subprocess.Popen:
    sets = [x for s in args.sets for x in ("--set", s)]
    command = [sys.executable, "-m", "rag.cli", "serve", "--store", str(args.store), "--port", str(port),
               "--set", f"store.collection={collection}", *sets]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=open(workdir / "serve.log", "w"))  # noqa: SIM115
    deadline = time.monotonic() + 300
    while True:
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            connection.request("GET", "/health")
            if connection.getresponse().status == 200:
                return server
        except OSError:
            pass
        if server.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"rag serve did not start: {(workdir / 'serve.log').read_text()[-2000:]}")
        time.sleep(0.3)


def load(call, queries: list[str], clients: int, seconds: float) -> tuple[list[float], int]:
    """``clients`` threads calling ``call(client_state, query)`` back to back until time is up."""
    latencies: list[float] = []
    errors = 0
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def client(n: int) -> None:
        nonlocal errors
        state: dict = {}
        mine: list[float] = []
        failed = 0
        i = n * 37
        while time.monotonic() < deadline:
            query = queries[i % len(queries)]
            i += 1
            clock = time.perf_counter()
            try:
                call(state, query)
                mine.append(time.perf_counter() - clock)
            except Exception as exc:
                failed += 1
                if failed == 1:
                    log(f"client {n}: {type(exc).__name__}: {exc}")
                state.clear()
        with lock:
            latencies.extend(mine)
            errors += failed

    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return latencies, errors


def http_search(port: int, k: int):
    def call(state: dict, query: str) -> None:
        if "connection" not in state:
            state["connection"] = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        connection = state["connection"]
        connection.request("POST", "/search", body=json.dumps({"query": query, "k": k}),
                           headers={"Content-Type": "application/json"})
        response = connection.getresponse()
        body = json.loads(response.read())
        if response.status != 200 or len(body["hits"]) != k:
            raise RuntimeError(f"HTTP {response.status}: {str(body)[:200]}")

    return call


def first_byte_over_http(port: int, question: str) -> float:
    """Seconds from sending the request to the first content delta; the rest is read to the end."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    body = json.dumps({"model": "rag", "stream": True, "messages": [{"role": "user", "content": question}]})
    clock = time.perf_counter()
    connection.request("POST", "/v1/chat/completions", body=body, headers={"Content-Type": "application/json"})
    response = connection.getresponse()
    if response.status != 200:
        raise RuntimeError(f"HTTP {response.status}: {response.read()[:300]!r}")
    first = None
    for line in response:
        if first is None and line.startswith(b"data: {") and b'"content"' in line:
            first = time.perf_counter() - clock
        if line.startswith(b"data: [DONE]"):
            break
    connection.close()
    if first is None:
        raise RuntimeError("the stream had no content delta")
    return first


def in_process_child(args: argparse.Namespace) -> None:
    """The in-process side: one Pipeline over the collection, driven by JSON lines on stdin."""
    from rag.evaluation import jobs
    from rag.pipeline import Pipeline
    from rag.types import Answer

    base = Pipeline.from_yaml(None, sets=args.sets, store={"path": str(args.store)})
    pipeline = jobs.eval_pipeline(base, args.corpus)
    if not pipeline.info()["chunks"]:
        if not args.qrels:
            raise SystemExit(f"{args.store} has no collection for {args.corpus}; pass --qrels to build it")
        log("building the collection (rag eval retrieval)")
        jobs.evaluate_retrieval(base, args.corpus, args.queries, args.qrels)
    queries = list(evaluation.read_beir_queries(args.queries).values())

    def first_byte(question: str) -> float:
        clock = time.perf_counter()
        stream = pipeline.stream(question)
        piece = next(stream)
        first = time.perf_counter() - clock
        if isinstance(piece, Answer):
            raise RuntimeError("the answer had no text")
        for _ in stream:
            pass
        return first

    for query in queries[:20]:
        pipeline.search(query, args.k)
    first_byte(queries[0])
    reply = {"collection": pipeline.settings.store.collection, "chunks": pipeline.info()["chunks"],
             "generator": pipeline.settings.generation.model}
    print(json.dumps(reply), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        if request["cmd"] == "search":
            latencies, errors = load(lambda state, query: pipeline.search(query, args.k), queries,
                                     request["clients"], request["seconds"])
            reply = {"latencies": latencies, "errors": errors}
        else:
            reply = {"first": first_byte(request["question"])}
        print(json.dumps(reply), flush=True)


class Child:
    """The in-process side in its own process, paused while the other side is measured."""

    def __init__(self, args: argparse.Namespace):
        argv = [sys.executable, __file__, "--child", "--store", str(args.store), "--corpus", args.corpus,
                "--queries", args.queries, "-k", str(args.k), *(["--qrels", args.qrels] if args.qrels else []),
                *[x for s in args.sets for x in ("--set", s)]]
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.ready = json.loads(self.proc.stdout.readline())

    def call(self, **request) -> dict:
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


@contextlib.contextmanager
def paused(proc: subprocess.Popen) -> Iterator[None]:
    """``proc`` stopped (SIGSTOP) for the duration, then resumed."""
    os.kill(proc.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(proc.pid, signal.SIGCONT)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", type=Path, required=True)
    parser.add_argument("--corpus", required=True)
    parser.add_argument("--queries", required=True)
    parser.add_argument("--qrels", help="with a store that lacks the collection: build it as rag eval does")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=60.0, help="per side, in two halves")
    parser.add_argument("--chats", type=int, default=30, help="questions answered on each side")
    parser.add_argument("-k", type=int, default=10)
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.store = args.store.resolve()
    return args


def searches_under_load(args: argparse.Namespace, child: Child, server: subprocess.Popen, port: int,
                        queries: list[str]) -> dict:
    """Part 1: ``--clients`` searching for ``--seconds`` on each side, in alternating halves."""
    measured: dict[str, tuple[list[float], int]] = {"in_process": ([], 0), "http": ([], 0)}
    half = args.seconds / 2
    for order in (("in_process", "http"), ("http", "in_process")):
        for name in order:
            log(f"search load: {name}, {args.clients} clients, {half:.0f} s")
            if name == "http":
                with paused(child.proc):
                    latencies, errors = load(http_search(port, args.k), queries, args.clients, half)
            else:
                with paused(server):
                    got = child.call(cmd="search", clients=args.clients, seconds=half)
                latencies, errors = got["latencies"], got["errors"]
            measured[name] = (measured[name][0] + latencies, measured[name][1] + errors)
    search = {name: summary(lat, err, args.seconds) for name, (lat, err) in measured.items()}
    search["http_overhead_p50"] = search["http"]["p50_ms"] / search["in_process"]["p50_ms"] - 1
    return search


def first_bytes(args: argparse.Namespace, child: Child, server: subprocess.Popen, port: int,
                queries: list[str]) -> dict:
    """Part 2: time to the first streamed byte of ``--chats`` answers, the sides alternating question by question."""
    log(f"time to first byte: {args.chats} questions a side")
    ttfb: dict[str, list[float]] = {"in_process": [], "http": []}
    for i, question in enumerate(queries[1:args.chats + 1]):
        for name in (("in_process", "http") if i % 2 == 0 else ("http", "in_process")):
            if name == "http":
                with paused(child.proc):
                    ttfb[name].append(first_byte_over_http(port, question))
            else:
                with paused(server):
                    ttfb[name].append(child.call(cmd="first", question=question)["first"])
    chat = {name: {"p50_ms": 1000 * percentile(v, 50), "p95_ms": 1000 * percentile(v, 95),
                   "mean_ms": 1000 * statistics.fmean(v)} for name, v in ttfb.items()}
    chat["http_overhead_p50"] = chat["http"]["p50_ms"] / chat["in_process"]["p50_ms"] - 1
    # Question by question (the same retrieval and prompt on both sides): what HTTP adds.
    paired = [1000 * (h - i) for h, i in zip(ttfb["http"], ttfb["in_process"], strict=True)]
    chat["paired_extra_ms_p50"] = percentile(paired, 50)
    return chat


def main() -> None:
    args = parse_args()
    if args.child:
        return in_process_child(args)

    queries = list(evaluation.read_beir_queries(args.queries).values())
    child = Child(args)
    collection, chunks = child.ready["collection"], child.ready["chunks"]
    log(f"collection {collection}: {chunks} chunks; {len(queries)} queries")
    with tempfile.TemporaryDirectory() as tmp:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        with paused(child.proc):
            server = start_server(args, collection, port, Path(tmp))
        try:
            with paused(child.proc):
                for query in queries[:20]:  # warm the server
                    http_search(port, args.k)({}, query)
                first_byte_over_http(port, queries[0])
            search = searches_under_load(args, child, server, port, queries)
            chat = first_bytes(args, child, server, port, queries)
        finally:
            server.terminate()
            server.wait(timeout=30)
            child.close()

    result = {"collection": collection, "chunks": chunks, "clients": args.clients, "seconds_per_side": args.seconds,
              "k": args.k, "sets": args.sets, "cpus": os.cpu_count(), "search": search, "first_byte": chat,
              "generator": child.ready["generator"]}
    json.dump(result, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
