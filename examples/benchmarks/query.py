"""Query latency of ``Pipeline.search`` at scale: dense and hybrid, with and without a metadata filter.

Full-size run (from the repository root; about 15 minutes on a 2-core CPU machine, most of it
writing the 100k-chunk store):

    python examples/benchmarks/query.py --sizes 10000 100000 --queries 200

Smoke test (well under a minute):

    python examples/benchmarks/query.py --sizes 2000 --queries 20

For each size a store is built in a temporary folder straight through ``rag.stores.chroma.Store.upsert``:
synthetic chunks whose vectors are random unit vectors of dimension 384 and whose texts are about 150
words drawn from a Zipf-distributed vocabulary of made-up words, each with a metadata field ``group``
(0..9, so ``where={"group": 3}`` keeps a tenth of the chunks). The lexical index is built with
``LexicalIndex.rebuild`` and records the store's state, exactly as an ingest leaves it, so the
pipeline loads it and never rebuilds it.

Then a fresh ``Pipeline`` opened on that store answers random word strings with ``search`` -- the real
path: the query is embedded with the packaged MiniLM, Chroma is queried, the lexical index is searched
and fused. Configurations are interleaved query by query (order rotating) after a few warm-up calls;
the first (cold) calls are reported apart. The "embed only" row is the MiniLM query embedding alone,
for scale.

``--keep DIR`` keeps each built store under DIR (one folder per size, seed and vocabulary) and reuses it
on the next run, skipping the build; the build figures reported are then those of the run that built it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")

DIMENSION = 384
CONFIGS = (  # (label, mode, where)
    ("dense", "dense", None),
    ("dense+filter", "dense", {"group": 3}),
    ("hybrid", "hybrid", None),
    ("hybrid+filter", "hybrid", {"group": 3}),
)
WRITE_BATCH = 5000
SYLLABLES = [c + v for c in "bcdfghjklmnprstvwz" for v in ("a", "e", "i", "o", "u", "ai", "ou")]


def make_vocabulary(rng: np.random.Generator, size: int) -> list[str]:
    """``size`` distinct made-up words of one to four syllables."""
    words: dict[str, None] = {}
    while len(words) < size:
        count = int(rng.integers(1, 5))
        words["".join(SYLLABLES[i] for i in rng.integers(0, len(SYLLABLES), count))] = None
    return list(words)


def zipf_probabilities(size: int, exponent: float = 1.07) -> np.ndarray:
    weights = 1.0 / np.arange(1, size + 1, dtype=np.float64) ** exponent
    return weights / weights.sum()


def make_texts(rng: np.random.Generator, vocabulary: list[str], probabilities: np.ndarray, count: int,
               words: int = 150) -> list[str]:
    lengths = rng.integers(int(words * 0.8), int(words * 1.2) + 1, count)
    picks = rng.choice(len(vocabulary), size=int(lengths.sum()), p=probabilities)
    texts, at = [], 0
    for length in lengths:
        texts.append(" ".join(vocabulary[i] for i in picks[at : at + length]))
        at += length
    return texts


def build_store(folder: Path, size: int, seed: int, vocabulary: list[str], probabilities: np.ndarray) -> dict:
    """Write ``size`` synthetic chunks and a matching lexical index; returns build timings."""
    from rag.config import load_settings
    from rag.pipeline import Pipeline
    from rag.types import Chunk

    rng = np.random.default_rng(seed)
    pipeline = Pipeline(load_settings(None, {"store.path": str(folder)}), progress=False)
    if pipeline.embedder.dimension != DIMENSION:
        raise SystemExit(f"the embedding model has dimension {pipeline.embedder.dimension}, not {DIMENSION}")
    store = pipeline.store
    # The record an ingest writes (the Pipeline's own), so the pipeline opens this store as its own.
    store.open(pipeline._record(), create=True)

    started = time.perf_counter()
    text_seconds = 0.0
    for begin in range(0, size, WRITE_BATCH):
        count = min(WRITE_BATCH, size - begin)
        clock = time.perf_counter()
        texts = make_texts(rng, vocabulary, probabilities, count)
        text_seconds += time.perf_counter() - clock
        vectors = rng.standard_normal((count, DIMENSION), dtype=np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        chunks = []
        for offset, text in enumerate(texts):
            i = begin + offset
            document = f"doc{i // 8:06d}"  # eight chunks per synthetic document
            chunks.append(Chunk(
                id=f"syn-{i:07d}", document_id=document, text=text, start=0, end=len(text),
                metadata={"source": f"synthetic/{document}.txt", "document_id": document, "group": i % 10,
                          "start": 0, "end": len(text), "format": "text"},
            ))
        store.upsert(chunks, vectors)
        print(f"  {size}: {begin + count} chunks written", file=sys.stderr, end="\r", flush=True)
    print(file=sys.stderr)
    write_seconds = time.perf_counter() - started - text_seconds

    started = time.perf_counter()
    pipeline.lexical.rebuild(store.iter_texts(metadata=True), store.state)
    lexical_seconds = time.perf_counter() - started
    return {"write_s": write_seconds, "texts_s": text_seconds, "lexical_build_s": lexical_seconds,
            "count": store.count(), "state": store.state}


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def measure(folder: Path, warm: list[str], queries: list[str], k: int) -> dict:
    """Latencies (ms) of every configuration through a fresh Pipeline on the built store."""
    from rag.config import load_settings
    from rag.pipeline import Pipeline

    pipeline = Pipeline(load_settings(None, {"store.path": str(folder)}), progress=False)
    manifest = folder / "lexical" / pipeline.settings.store.collection / "CURRENT"  # names the index in use
    manifest_mtime = manifest.stat().st_mtime_ns

    cold = {}
    clock = time.perf_counter()
    pipeline.search((warm or queries)[0], k, mode="dense")
    cold["first_dense_ms"] = 1000 * (time.perf_counter() - clock)  # opens the store, loads MiniLM
    clock = time.perf_counter()
    pipeline.search((warm or queries)[0], k, mode="hybrid")
    cold["first_hybrid_ms"] = 1000 * (time.perf_counter() - clock)  # loads the lexical index
    rebuilt = manifest.stat().st_mtime_ns != manifest_mtime

    for query in warm:
        for _, mode, where in CONFIGS:
            pipeline.search(query, k, mode=mode, where=where)
        pipeline.embedder.embed_queries([query])

    latencies: dict[str, list[float]] = {label: [] for label, _, _ in CONFIGS}
    latencies["embed only"] = []
    problems: list[str] = []
    for n, query in enumerate(queries):
        order = list(CONFIGS[n % len(CONFIGS):]) + list(CONFIGS[: n % len(CONFIGS)])
        for label, mode, where in order:
            clock = time.perf_counter()
            hits = pipeline.search(query, k, mode=mode, where=where)
            latencies[label].append(1000 * (time.perf_counter() - clock))
            if len(hits) != k:
                problems.append(f"{label}: {len(hits)} hits for {query!r}")
            if where and any(h.chunk.metadata.get("group") != 3 for h in hits):
                problems.append(f"{label}: a hit outside the filter for {query!r}")
        clock = time.perf_counter()
        pipeline.embedder.embed_queries([query])
        latencies["embed only"].append(1000 * (time.perf_counter() - clock))

    rows = {
        label: {"p50_ms": percentile(values, 50), "p95_ms": percentile(values, 95),
                "mean_ms": statistics.fmean(values), "n": len(values)}
        for label, values in latencies.items()
    }
    return {"latency": rows, "cold": cold, "lexical_rebuilt_by_pipeline": rebuilt, "problems": problems[:10],
            "problem_count": len(problems)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000], help="chunks per store")
    parser.add_argument("--queries", type=int, default=200, help="timed queries per configuration (200)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed queries per configuration first (5)")
    parser.add_argument("-k", type=int, default=5, help="hits per search (5, rag's default)")
    parser.add_argument("--vocabulary", type=int, default=30_000, help="made-up words in the vocabulary")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (torch's default)")
    parser.add_argument("--tmp", default=None, help="where the temporary stores go")
    parser.add_argument("--keep", default=None, metavar="DIR",
                        help="keep the built stores in DIR and reuse them on later runs (no build, no cleanup)")
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    args = parser.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    rng = np.random.default_rng(args.seed)
    vocabulary = make_vocabulary(rng, args.vocabulary)
    probabilities = zipf_probabilities(len(vocabulary))
    query_rng = np.random.default_rng(args.seed + 1)
    queries = [" ".join(vocabulary[i] for i in query_rng.choice(len(vocabulary), int(query_rng.integers(3, 11)),
                                                                 p=probabilities))
               for _ in range(args.queries + args.warmup)]

    results = []
    for size in args.sizes:
        kept = Path(args.keep) / f"query-{size}-seed{args.seed}-vocab{args.vocabulary}" if args.keep else None
        folder = kept or Path(tempfile.mkdtemp(prefix=f"rag-bench-query-{size}-", dir=args.tmp))
        try:
            record = folder / "build.json"  # written last: a store without it is incomplete
            if kept is not None and record.exists():
                build = json.loads(record.read_text())
                print(f"reusing the store of {size} synthetic chunks in {folder}", file=sys.stderr, flush=True)
            else:
                if kept is not None:
                    shutil.rmtree(folder, ignore_errors=True)
                print(f"building a store of {size} synthetic chunks in {folder}", file=sys.stderr, flush=True)
                build = build_store(folder, size, args.seed + size, vocabulary, probabilities)
                if kept is not None:
                    record.write_text(json.dumps(build))
                print(f"  written in {build['write_s']:.1f} s, lexical index in {build['lexical_build_s']:.1f} s",
                      file=sys.stderr, flush=True)
            print(f"  measuring {args.queries} queries x {len(CONFIGS)} configurations", file=sys.stderr, flush=True)
            timed = measure(folder, queries[: args.warmup], queries[args.warmup :], args.k)
            results.append({"size": size, "build": build, **timed})
        finally:
            if kept is None:
                shutil.rmtree(folder, ignore_errors=True)

    data = {
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__,
                    "torch_threads": torch.get_num_threads()},
        "queries": args.queries, "warmup": args.warmup, "k": args.k, "filter": {"group": 3},
        "results": results,
    }
    if args.json:
        print(json.dumps(data, indent=2))
        return
    header = f"{'chunks':>8} {'configuration':<15} {'p50 ms':>8} {'p95 ms':>8} {'mean ms':>8}"
    print(header)
    print("-" * len(header))
    for result in results:
        for label, row in result["latency"].items():
            print(f"{result['size']:>8} {label:<15} {row['p50_ms']:>8.1f} {row['p95_ms']:>8.1f} {row['mean_ms']:>8.1f}")
    for result in results:
        cold, build = result["cold"], result["build"]
        print(f"{result['size']} chunks: store written in {build['write_s']:.1f} s, lexical index built in "
              f"{build['lexical_build_s']:.1f} s; cold first dense search {cold['first_dense_ms']:.0f} ms, "
              f"first hybrid {cold['first_hybrid_ms']:.0f} ms"
              + ("; WARNING: the pipeline rebuilt the lexical index" if result["lexical_rebuilt_by_pipeline"] else ""))
        if result["problem_count"]:
            print(f"  {result['problem_count']} problems, e.g. {result['problems'][0]}")
    print(f"note: {args.queries} queries per configuration (random word strings, query embedding included), "
          f"k={args.k}, filter where={{'group': 3}} keeps 10% of the chunks; {args.warmup} warm-up queries first")


if __name__ == "__main__":
    main()
