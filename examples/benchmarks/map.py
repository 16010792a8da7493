"""Time and peak memory of `rag map` on a 100k-chunk store (the default sample and every chunk), and
of `rag info --duplicates` (every pair of chunks compared) on the same store.

Full-size run (from the repository root, after ``pip install -e ".[map]"``; about 6 minutes on a
2-core CPU machine, 5 of them writing the 100k-chunk store, half a minute the two maps):

    python examples/benchmarks/map.py

Smoke test (under half a minute):

    python examples/benchmarks/map.py --size 2000 --limits 500 2000

The store is built in a temporary folder by ``build_store`` of ``examples/benchmarks/query.py``
(random unit vectors of dimension 384, Zipf-distributed made-up words, a lexical index in step),
so it is the store an ingest of that many chunks leaves. Then, for each ``--limit``, ``rag map`` runs
in a fresh child process (``python -m rag.cli map --json``), so its time and memory are its own: the
wall time of the whole command (start-up, opening the store, which loads the embedding model to
check the collection's record, reading the vectors, projecting, drawing, writing), the map's own
``seconds`` and ``timings`` from its JSON (opening the store, reading the sample, drawing), and the
child's peak RSS. The peak comes from ``os.wait4``, the same kernel accounting as
``getrusage(RUSAGE_CHILDREN)`` but for that one child: RUSAGE_CHILDREN is the largest of all
children so far, which would hide a smaller second run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from query import build_store, make_vocabulary, zipf_probabilities


def measure(folder: Path, out: Path, limit: int, color_by: str, query: str | None) -> dict:
    """One `rag map` in a child process: its JSON result, wall seconds and peak RSS."""
    command = [sys.executable, "-m", "rag.cli", "map", "--store", str(folder), "--out", str(out),
               "--limit", str(limit), "--color-by", color_by, "--json"]
    if query:
        command += ["--query", query]
    with tempfile.TemporaryFile("w+") as stdout, tempfile.TemporaryFile("w+") as stderr:
        clock = time.perf_counter()
        child = subprocess.Popen(command, stdout=stdout, stderr=stderr, text=True)
        _, status, usage = os.wait4(child.pid, 0)
        wall = time.perf_counter() - clock
        child.returncode = os.waitstatus_to_exitcode(status)
        stdout.seek(0)
        stderr.seek(0)
        if child.returncode != 0:
            raise SystemExit(f"rag map --limit {limit} failed ({child.returncode}): {stderr.read()[-2000:]}")
        result = json.loads(stdout.read())
        sample_line = stderr.read().strip().splitlines()[-1]
    return {
        "limit": limit, "points": result["points"], "total": result["total"], "color_by": color_by,
        "wall_s": round(wall, 2), "map_s": round(result["seconds"], 2),
        **{name: round(seconds, 2) for name, seconds in result["timings"].items()},
        "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),  # Linux reports kilobytes
        "png_kb": round(Path(result["png"]).stat().st_size / 1024, 1),
        "html_mb": round(Path(result["html"]).stat().st_size / 2**20, 2),
        "stderr": sample_line,
    }


def measure_duplicates(folder: Path) -> dict:
    """`rag info --duplicates --json` in a child process: wall seconds, peak RSS and groups found
    (random vectors: none is expected)."""
    command = [sys.executable, "-m", "rag.cli", "info", "--duplicates", "--json", "--store", str(folder)]
    with tempfile.TemporaryFile("w+") as stdout:
        clock = time.perf_counter()
        child = subprocess.Popen(command, stdout=stdout, stderr=subprocess.DEVNULL, text=True)
        _, status, usage = os.wait4(child.pid, 0)
        wall = time.perf_counter() - clock
        if os.waitstatus_to_exitcode(status) != 0:
            raise SystemExit("rag info --duplicates failed")
        stdout.seek(0)
        groups = json.loads(stdout.read())["groups"]
    return {"wall_s": round(wall, 2), "peak_rss_mb": round(usage.ru_maxrss / 1024, 1), "groups": len(groups)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=100_000, help="chunks in the store (100000)")
    parser.add_argument("--limits", type=int, nargs="+", default=[5000, 100_000],
                        help="--limit of each measured `rag map` (5000, the default, and 100000)")
    parser.add_argument("--color-by", default="source", choices=["source", "format", "cluster"])
    parser.add_argument("--query", help="also draw this query (embeds it and searches)")
    parser.add_argument("--vocabulary", type=int, default=30_000, help="made-up words in the vocabulary")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tmp", default=None, help="where the temporary store goes")
    args = parser.parse_args()

    rng = np.random.default_rng(args.seed)
    vocabulary = make_vocabulary(rng, args.vocabulary)
    folder = Path(tempfile.mkdtemp(prefix=f"rag-bench-map-{args.size}-", dir=args.tmp))
    try:
        print(f"building a store of {args.size} synthetic chunks in {folder}", file=sys.stderr, flush=True)
        build = build_store(folder / "store", args.size, args.seed + args.size, vocabulary,
                            zipf_probabilities(len(vocabulary)))
        runs = []
        for limit in args.limits:
            print(f"rag map --limit {limit}", file=sys.stderr, flush=True)
            runs.append(measure(folder / "store", folder / f"map-{limit}", limit, args.color_by, args.query))
            print(f"  {runs[-1]['wall_s']} s, peak RSS {runs[-1]['peak_rss_mb']} MB", file=sys.stderr, flush=True)
        print("rag info --duplicates", file=sys.stderr, flush=True)
        duplicates = measure_duplicates(folder / "store")
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    print(json.dumps({
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version()},
        "size": args.size, "build": {k: round(v, 1) if isinstance(v, float) else v for k, v in build.items()},
        "runs": runs, "duplicates": duplicates,
    }, indent=2))


if __name__ == "__main__":
    main()
