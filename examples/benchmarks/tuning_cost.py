"""What chunks with context and the fusion choice at the end of an ingest cost (issue 27).

Ingests a BEIR corpus (document text = title + text, as `rag eval retrieval` makes it) into a fresh
store, in a fresh process per run, under two configurations taken in turn:

- ``old``: rag before issue 27 (``chunking.context=false``, ``retrieval.fusion=weighted``,
  ``retrieval.dense_weight=0.5``: no context, no tuning);
- ``new``: the defaults (context on, fusion chosen at the end of the ingest).

For each: the chunks written, the tokens embedded, the wall and CPU seconds of ``ingest_documents``
(the tuning included), and the tuning's own seconds. The model is loaded before the clock starts.

    python examples/benchmarks/tuning_cost.py ../shared/data/scifact/corpus.jsonl --rounds 1
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

RUN = """
import hashlib, resource, time
from rag import evaluation, tuning
from rag.config import load_settings
from rag.pipeline import Pipeline
from rag.types import Document

settings = {{"store.path": {store!r}, **{settings!r}}}
pipeline = Pipeline(load_settings(None, settings), progress=False)
pipeline.embedder._load()
documents = []
for doc_id, title, text in evaluation.read_beir_corpus({corpus!r}):
    body = f"{{title}} {{text}}".strip() if title else text
    documents.append(Document(id=doc_id, text=body, metadata={{
        "source": doc_id, "corpus_id": doc_id, "title": title, "format": "beir",
        "content_hash": hashlib.sha256(body.encode()).hexdigest()}}))
tuned = []
original = tuning.tune_after_ingest
def timed(pipeline, report):
    clock = time.perf_counter()
    found = original(pipeline, report)
    tuned.append(time.perf_counter() - clock)
    return found
tuning.tune_after_ingest = timed
import rag.pipeline
rag.pipeline.tune_after_ingest = timed
before, clock = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
report = pipeline.ingest_documents(documents)
wall = time.perf_counter() - clock
after = resource.getrusage(resource.RUSAGE_SELF)
cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
stored = pipeline.store.get(sorted(pipeline.store.ids()))
tokens = sum(pipeline.chunker.count_tokens(chunk.indexed) for chunk, _ in stored)
print("RESULT", {{"chunks": report.chunks_total, "tokens": tokens, "wall_s": round(wall, 1), "cpu_s": round(cpu, 1),
                  "tuning_s": round(sum(tuned), 1), "fusion": pipeline.info()["fusion"]}})
"""
CONFIGS = {
    "old": {"chunking.context": False, "retrieval.fusion": "weighted", "retrieval.dense_weight": 0.5},
    "new": {},
}


def run(checkout: Path, corpus: str, settings: dict) -> dict:
    with tempfile.TemporaryDirectory(prefix="rag-cost-") as store:
        code = RUN.format(store=store, settings=settings, corpus=corpus)
        env = {**os.environ, "PYTHONPATH": str(checkout)}
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    line = next(line for line in out.stdout.splitlines() if line.startswith("RESULT "))
    return ast.literal_eval(line.removeprefix("RESULT "))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("corpus")
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    checkout = Path(__file__).resolve().parents[2]
    results: dict[str, list[dict]] = {name: [] for name in CONFIGS}
    for round_ in range(args.rounds):
        order = list(CONFIGS) if round_ % 2 == 0 else list(reversed(CONFIGS))
        for name in order:
            results[name].append(run(checkout, str(Path(args.corpus).resolve()), CONFIGS[name]))
            print(name, results[name][-1], file=sys.stderr, flush=True)
    medians = {name: {key: statistics.median(r[key] for r in rows) for key in ("wall_s", "cpu_s", "tuning_s")}
               for name, rows in results.items()}
    added = {key: round(100 * (medians["new"][key] / medians["old"][key] - 1), 1) for key in ("wall_s", "cpu_s")}
    print(json.dumps({"runs": results, "medians": medians, "added_percent": added}, indent=1, default=str))


if __name__ == "__main__":
    main()
