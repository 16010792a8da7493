"""Before/after of a change: ingest time and query latency of two checkouts of rag, interleaved.

Figures taken minutes apart on a shared machine drift by 10% or more (the bare model alone did), so a
change is judged by runs of the two checkouts taken in turn, each in a fresh process with that
checkout first on ``PYTHONPATH``:

    git worktree add /tmp/old <commit>
    python examples/benchmarks/checkouts.py /tmp/old . --files 150 --size 100000 --rounds 4

(about 20 minutes on a 2-core CPU: 6 ingests of a minute, 5 minutes writing the 100k-chunk store, 8
query runs of a minute and a half.)

- ingest: the first ``--files`` Markdown/text files of docs-haystack (sorted), copied to a temporary
  folder, ingested by ``Pipeline.ingest`` into a fresh store with the default settings, the model
  loaded before the clock starts; wall seconds and the process's CPU seconds (user + system, which
  contention from other processes disturbs less). 3 rounds, alternating.
- query: one synthetic store of ``--size`` chunks written once (``query.build_store``, as
  ``examples/benchmarks/query.py`` builds it), then each checkout's ``query.measure`` on it (100
  random queries after 5 warm-up ones, k=5): p50 ms of dense, dense+filter, hybrid, hybrid+filter.
  ``--rounds`` rounds, the order alternating. Medians are printed last.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

INGEST = """
import resource, time
from rag.config import load_settings
from rag.pipeline import Pipeline
pipeline = Pipeline(load_settings(None, {{"store.path": {store!r}}}), progress=False)
pipeline.embedder._load()
before, clock = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
report = pipeline.ingest([{corpus!r}])
after = resource.getrusage(resource.RUSAGE_SELF)
cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
wall = time.perf_counter() - clock
print("RESULT", {{"chunks": report.chunks_embedded, "wall_s": round(wall, 2), "cpu_s": round(cpu, 2)}})
"""
BUILD = """
import sys, numpy as np
from pathlib import Path
sys.path.insert(0, {benchmarks!r})
from query import build_store, make_vocabulary, zipf_probabilities
vocabulary = make_vocabulary(np.random.default_rng(0), 30000)
build_store(Path({store!r}), {size}, {size}, vocabulary, zipf_probabilities(len(vocabulary)))
"""
QUERY = """
import sys, numpy as np
from pathlib import Path
sys.path.insert(0, {benchmarks!r})
from query import make_vocabulary, measure
vocabulary = make_vocabulary(np.random.default_rng(0), 30000)
rng = np.random.default_rng(1)
queries = [" ".join(vocabulary[i] for i in rng.choice(len(vocabulary), int(rng.integers(3, 11)))) for _ in range(105)]
timed = measure(Path({store!r}), queries[:5], queries[5:], 5)
print("RESULT", {{label: round(row["p50_ms"], 1) for label, row in timed["latency"].items()}})
"""


def run(checkout: Path, code: str) -> dict:
    env = dict(os.environ, PYTHONPATH=str(checkout), HF_HUB_OFFLINE="1")
    done = subprocess.run([sys.executable, "-c", code], env=env, cwd=checkout, capture_output=True, text=True,
                          check=False)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode or not lines:
        raise SystemExit(f"{checkout}: failed\n{done.stderr[-3000:]}")
    return ast.literal_eval(lines[-1].removeprefix("RESULT "))  # the dict the child printed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("old", type=Path, help="the checkout before the change")
    parser.add_argument("new", type=Path, help="the checkout after it")
    parser.add_argument("--corpus", type=Path, default=Path("../shared/data/docs-haystack"))
    parser.add_argument("--files", type=int, default=150, help="files of the corpus ingested (0: no ingest part)")
    parser.add_argument("--size", type=int, default=100_000, help="chunks of the query store (0: no query part)")
    parser.add_argument("--rounds", type=int, default=4, help="query rounds (the ingest has 3)")
    args = parser.parse_args()
    checkouts = {"old": args.old.resolve(), "new": args.new.resolve()}
    benchmarks = str(Path(__file__).resolve().parent)
    results: dict[str, dict[str, list[dict]]] = {"ingest": {"old": [], "new": []}, "query": {"old": [], "new": []}}
    tmp = Path(tempfile.mkdtemp(prefix="rag-checkouts-"))
    try:
        if args.files:
            files = sorted(p for p in args.corpus.rglob("*") if p.suffix in (".md", ".mdx", ".txt"))[: args.files]
            corpus = tmp / "corpus"
            corpus.mkdir()
            for i, path in enumerate(files):
                shutil.copy(path, corpus / f"{i:04d}{path.suffix}")
            for n in range(3):
                for name in ("old", "new") if n % 2 == 0 else ("new", "old"):
                    store = tmp / f"store-{name}-{n}"
                    code = INGEST.format(store=str(store), corpus=str(corpus))
                    results["ingest"][name].append(run(checkouts[name], code))
                    print(name, "ingest", results["ingest"][name][-1], file=sys.stderr, flush=True)
        if args.size:
            store = str(tmp / "query-store")
            run_build = BUILD.format(benchmarks=benchmarks, store=store, size=args.size) + '\nprint("RESULT", {})'
            run(checkouts["new"], run_build)
            for n in range(args.rounds):
                for name in ("old", "new") if n % 2 == 0 else ("new", "old"):
                    code = QUERY.format(benchmarks=benchmarks, store=store)
                    results["query"][name].append(run(checkouts[name], code))
                    print(name, "query", results["query"][name][-1], file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    medians = {part: {name: {key: statistics.median(r[key] for r in rows) for key in rows[0]}
                      for name, rows in by_name.items() if rows}
               for part, by_name in results.items()}
    print(json.dumps({"checkouts": {k: str(v) for k, v in checkouts.items()}, "runs": results, "medians": medians},
                     indent=2))


if __name__ == "__main__":
    main()
