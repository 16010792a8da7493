"""The Ray engine on one machine: its overhead against the local engine, and the per-chunk costs that
docs/scaling.md extrapolates from.

Full run (from the repository root, after ``pip install -e ".[ray,bench]"``; about 20 minutes on a
quiet 2-core CPU machine):

    python examples/benchmarks/ray_ingest.py ../shared/data/docs-haystack --workers 2 --writes 20000 --bm25 1000000

Smoke test (a minute or two): ``--limit-files 20 --writes 2000 --bm25 20000``.

Three parts, each in fresh Python processes of its own (so every peak RSS is its own):

- ``engines``: a ``chroma run`` server is started on a free loopback port; the local engine and then
  the Ray engine (``--workers`` embedding actors of 1 CPU each, a Ray started for the ingest, as
  ``rag ingest --engine ray`` does) each ingest the folder into a collection of their own on it, with
  the project's defaults otherwise. Each clock covers the whole ``Pipeline.ingest`` call: loading the
  model, starting Ray, everything up to the last chunk written and the BM25 index saved. Peak memory
  is ru_maxrss of the driver and VmHWM of every process Ray started (sampled twice a second, the
  last reading kept), grouped: embedding actors, other Ray workers (load-and-chunk tasks, Ray Data's
  own actors), Ray's daemons (raylet, GCS, agents).
- ``writes``: Chroma server write throughput with no model in the way: ``--writes`` synthetic chunks
  (800-character texts, MiniLM-sized 384-d unit vectors, rag's metadata keys) upserted in batches of
  256 through rag's Store by one client, then by two client processes at once.
- ``bm25``: rag's LexicalIndex rebuilt over ``--bm25`` synthetic chunks (120 words each, drawn from
  a Zipf-distributed 30k-word vocabulary): build-and-save seconds, peak RSS, size on disk.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

RESULT_TAG = "BENCH-RESULT "
HERE = Path(__file__).resolve()


def _emit(result: dict) -> None:
    print(RESULT_TAG + json.dumps(result), flush=True)


def _child(args: list[str]) -> dict:
    """Runs this script with ``args`` in a fresh process; its result line."""
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", "ANONYMIZED_TELEMETRY": "False",
           "RAY_USAGE_STATS_ENABLED": "0"}
    done = subprocess.run([sys.executable, str(HERE), *args], capture_output=True, text=True, env=env, check=False)
    lines = [line for line in done.stdout.splitlines() if line.startswith(RESULT_TAG)]
    if done.returncode != 0 or not lines:
        raise SystemExit(f"{' '.join(args)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(lines[-1][len(RESULT_TAG):])


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# -- engines -------------------------------------------------------------------------------------


class _Sampler:
    """VmHWM (peak RSS) of every descendant process, by role, read twice a second."""

    def __init__(self) -> None:
        import psutil

        self.me = psutil.Process()
        self.peaks: dict[int, tuple[str, float]] = {}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    @staticmethod
    def _role(cmdline: str) -> str:
        if "EmbedWriter" in cmdline:
            return "embedding actors"
        if "default_worker.py" in cmdline or cmdline.startswith("ray::"):
            return "other ray workers"
        return "ray daemons"

    def _run(self) -> None:
        while not self.stop.is_set():
            for proc in self.me.children(recursive=True):
                try:
                    cmdline = " ".join(proc.cmdline())
                    with open(f"/proc/{proc.pid}/status") as status:
                        hwm = next(int(line.split()[1]) for line in status if line.startswith("VmHWM"))
                    self.peaks[proc.pid] = (self._role(cmdline), hwm / 1024)
                except Exception:
                    continue
            self.stop.wait(0.5)

    def summary(self) -> dict:
        self.stop.set()
        self.thread.join()
        roles: dict[str, list[float]] = {}
        for role, mib in self.peaks.values():
            roles.setdefault(role, []).append(mib)
        return {role: {"processes": len(v), "max_mib": round(max(v)), "sum_mib": round(sum(v))}
                for role, v in sorted(roles.items())}


def run_engine(engine: str, folder: str, url: str, collection: str, ray_settings: dict, limit: int | None) -> None:
    from rag.pipeline import Pipeline

    paths = sorted(p for p in Path(folder).rglob("*") if p.is_file()) if limit else [Path(folder)]
    paths = paths[:limit] if limit else paths
    store_dir = tempfile.mkdtemp(prefix=f"rag-bench-{engine}-")
    sampler = _Sampler()
    clock = time.perf_counter()
    pipeline = Pipeline.from_config({"store": {"url": url, "path": store_dir, "collection": collection},
                                     "ingest": {"engine": engine, "ray": ray_settings}})
    report = pipeline.ingest(paths)
    seconds = time.perf_counter() - clock
    workers_memory = sampler.summary()
    again = Pipeline(pipeline.settings, progress=False).ingest(paths)
    _emit({"engine": engine, "files": report.added, "failed": report.failed, "chunks": report.chunks_embedded,
           "seconds": round(seconds, 1), "chunks_per_s": round(report.chunks_embedded / seconds, 2),
           "driver_peak_mib": round(_peak_mib()), "ray_processes": workers_memory,
           "reingest": {"embedded": again.chunks_embedded, "unchanged": again.unchanged,
                        "seconds": round(again.seconds, 1)}})
    shutil.rmtree(store_dir, ignore_errors=True)


# -- chroma server writes ------------------------------------------------------------------------


def run_writes(url: str, collection: str, count: int, offset: int) -> None:
    import numpy as np

    from rag.stores.chroma import Store
    from rag.types import Chunk

    rng = np.random.default_rng(offset)
    vectors = rng.standard_normal((count, 384)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    words = [f"word{i}" for i in range(5000)]
    chunks = []
    for i in range(count):
        text = " ".join(words[j] for j in rng.integers(0, 5000, 100))[:800]
        metadata = {"source": f"/corpus/file{(offset + i) // 10}.md", "format": "markdown", "title": "T",
                    "content_hash": "h" * 16, "chunk_index": i % 10, "start": 0, "end": len(text),
                    "document_id": f"d{(offset + i) // 10}", "file_signature": "s" * 32, "file_chunks": 10}
        chunks.append(Chunk(f"id-{offset + i}", metadata["document_id"], text, 0, len(text), metadata))
    store = Store(tempfile.mkdtemp(), url=url, collection=collection)
    store.open({"embedding_model": "synthetic"})
    clock = time.perf_counter()
    for begin in range(0, count, 256):
        store.upsert(chunks[begin : begin + 256], vectors[begin : begin + 256])
    seconds = time.perf_counter() - clock
    clock = time.perf_counter()
    read = sum(1 for _ in store.iter_metadata())  # what an ingest's plan reads first, every run
    read_seconds = time.perf_counter() - clock
    _emit({"count": count, "seconds": round(seconds, 2), "chunks_per_s": round(count / seconds),
           "metadata_read": read, "metadata_read_per_s": round(read / read_seconds)})


# -- bm25 ----------------------------------------------------------------------------------------


def run_bm25(count: int) -> None:
    import numpy as np

    from rag.stores.bm25 import LexicalIndex

    rng = np.random.default_rng(0)
    vocabulary = np.array([f"{chr(97 + i % 26)}{chr(97 + i // 26 % 26)}term{i}" for i in range(30_000)])
    clock = time.perf_counter()
    picks = (rng.zipf(1.2, size=(count, 120)) - 1) % len(vocabulary)
    texts = [(f"chunk-{i:08d}", " ".join(vocabulary[row])) for i, row in enumerate(picks)]
    del picks
    made = time.perf_counter() - clock
    folder = Path(tempfile.mkdtemp(prefix="rag-bench-bm25-"))
    clock = time.perf_counter()
    index = LexicalIndex(folder)
    index.rebuild(texts, state="bench")
    seconds = time.perf_counter() - clock
    size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    clock = time.perf_counter()
    hits = index.search("aaterm0 bbterm27 qqterm4000", 10)
    query_ms = (time.perf_counter() - clock) * 1000
    _emit({"chunks": count, "build_and_save_s": round(seconds, 1), "texts_made_s": round(made, 1),
           "disk_mib": round(size / 2**20), "peak_rss_mib": round(_peak_mib()), "one_query_ms": round(query_ms, 1),
           "hits": len(hits)})
    shutil.rmtree(folder, ignore_errors=True)


# -- the parent ----------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", nargs="?")
    parser.add_argument("--workers", type=int, default=2, help="embedding actors (ingest.ray.workers)")
    parser.add_argument("--batch-size", type=int, help="chunks per actor call (ingest.ray.batch_size)")
    parser.add_argument("--loaders", type=int, help="load-and-chunk tasks at once (ingest.ray.loaders)")
    parser.add_argument("--engines", default="local,ray", help="which engines to run, in order (local,ray)")
    parser.add_argument("--limit-files", type=int)
    parser.add_argument("--writes", type=int, default=20_000, help="synthetic chunks for the write test (0: skip)")
    parser.add_argument("--bm25", type=int, default=1_000_000, help="synthetic chunks for the BM25 test (0: skip)")
    parser.add_argument("--skip-engines", action="store_true")
    parser.add_argument("--json", metavar="FILE", help="also write every result here")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, *rest = args.child
        if kind == "engine":
            engine, folder, url, collection, ray_settings, limit = rest
            run_engine(engine, folder, url, collection, json.loads(ray_settings), int(limit) or None)
        elif kind == "writes":
            url, collection, count, offset = rest
            run_writes(url, collection, int(count), int(offset))
        elif kind == "bm25":
            run_bm25(int(rest[0]))
        return

    sys.path.insert(0, str(HERE.parents[2] / "tests"))
    from support import chroma_server  # the tests' own server helper: a free loopback port, stopped after

    results: dict = {"cpus": os.cpu_count()}
    with tempfile.TemporaryDirectory() as data, chroma_server(Path(data)) as url:
        if not args.skip_engines:
            if not args.folder:
                raise SystemExit("give the folder to ingest (e.g. ../shared/data/docs-haystack)")
            ray_settings = {"workers": args.workers, **({"batch_size": args.batch_size} if args.batch_size else {}),
                            **({"loaders": args.loaders} if args.loaders else {})}
            for engine in args.engines.split(","):
                result = _child(["--child", "engine", engine, args.folder, url, f"bench-{engine}",
                                 json.dumps(ray_settings), str(args.limit_files or 0)])
                results[engine] = result
                print(json.dumps(result), flush=True)
            if "local" in results and "ray" in results:
                local, ray_ = results["local"]["chunks_per_s"], results["ray"]["chunks_per_s"]
                results["ray_overhead_pct"] = round(100 * (local - ray_) / local, 1)
                print(f"Ray engine vs local: {ray_} vs {local} chunks/s, overhead {results['ray_overhead_pct']}%",
                      flush=True)
        if args.writes:
            results["writes_1_client"] = _child(["--child", "writes", url, "writes-1", str(args.writes), "0"])
            print("writes, 1 client:", json.dumps(results["writes_1_client"]), flush=True)
            clients = [subprocess.Popen([sys.executable, str(HERE), "--child", "writes", url, "writes-2",
                                         str(args.writes // 2), str(i * args.writes)],
                                        stdout=subprocess.PIPE, text=True) for i in range(2)]
            outs = [json.loads(c.communicate()[0].split(RESULT_TAG)[-1]) for c in clients]
            results["writes_2_clients"] = {"count": sum(o["count"] for o in outs),
                                           "chunks_per_s": sum(o["chunks_per_s"] for o in outs), "each": outs}
            print("writes, 2 clients at once:", json.dumps(results["writes_2_clients"]), flush=True)
    if args.bm25:
        results["bm25"] = _child(["--child", "bm25", str(args.bm25)])
        print("bm25:", json.dumps(results["bm25"]), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
