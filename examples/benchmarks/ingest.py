"""Ingestion throughput: rag's Pipeline against LangChain's standard pipeline and the bare model.

Full-size run (from the repository root, after ``pip install -e ".[bench]"``; about 30 minutes on a
quiet 2-core CPU machine: some 17 for the two rounds, 12 for the 1x/4x memory check):

    python examples/benchmarks/ingest.py ../shared/data/docs-haystack --rounds 2 --scale 4

The two parts can also run apart: ``--rounds 2`` alone, and ``--rounds 0 --scale 4`` for memory only.

Smoke test (a minute or two):

    python examples/benchmarks/ingest.py ../shared/data/docs-haystack --limit-files 20 --rounds 1

Three contenders do the same work on the same files, each run in a fresh Python process of its own
(so its peak RSS is its own), alternating their order from round to round:

- ``rag``: ``Pipeline.ingest`` with the project's defaults (packaged MiniLM, chunks of 256 tokens with
  32 overlap) into a fresh temporary store. The same process then times a second ``Pipeline.ingest``
  of the unchanged folder into the same store (a fresh Pipeline object: nothing cached in memory).
- ``langchain``: DirectoryLoader(TextLoader) + RecursiveCharacterTextSplitter.from_huggingface_tokenizer
  (MiniLM's tokenizer, 256/32) + HuggingFaceEmbeddings(the same packaged MiniLM folder) +
  Chroma.from_documents into a temporary folder (cosine space, like rag's collection).
- ``bare``: the ceiling. rag's own chunks (loaded and chunked before the clock starts), encoded by
  AutoModel in length-sorted batches of 32 with mean pooling and L2 normalization under
  ``torch.inference_mode``, in the dtype rag picks (``embedding.dtype: auto``: bfloat16 on a CPU with
  native bf16, float32 on other CPUs, float16 on CUDA); nothing is stored.

LangChain's HuggingFaceEmbeddings runs in float32, its default: the dtype column says what each
contender used. ``--dtype float32`` runs rag and bare in float32 as well.

Each contender's clock covers loading the model and everything after it, up to the last vector
written (imports are timed apart). Tokens are the MiniLM tokens of each contender's own chunks
(special tokens not counted), so tokens/s compares work done even where the splitters differ.

``--scale K`` also ingests a folder holding K renamed copies of every file with rag and compares peak
RSS at 1x and Kx (memory should stay flat in corpus size).

Only Markdown/MDX/text files are used, since LangChain's TextLoader reads files as plain text; rag
reads .md/.mdx with its Markdown loader (YAML front matter lifted into metadata), so rag's chunks
hold slightly less text.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CONTENDERS = ("rag", "langchain", "bare")
TEXT_SUFFIXES = (".md", ".mdx", ".txt")
RESULT_TAG = "BENCH-RESULT "
BARE_BATCH = 32


# -- helpers shared by parent and children -----------------------------------------------------


def _rss_mb(field: str = "VmRSS") -> float:
    """A memory figure of this process from /proc (MB), or the peak from getrusage."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return _peak_mb()


def _peak_mb() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def _model_path() -> str:
    from rag.hub import DEFAULT_EMBEDDING_MODEL, resolve_model_path

    return resolve_model_path(DEFAULT_EMBEDDING_MODEL, "embedding.model")


def _count_tokens(tokenizer, texts: list[str]) -> int:
    total = 0
    for begin in range(0, len(texts), 1024):
        encoded = tokenizer(texts[begin : begin + 1024], add_special_tokens=False)["input_ids"]
        total += sum(len(ids) for ids in encoded)
    return total


def _preload(*, chroma: bool) -> None:
    """Import, before any clock starts, what the contenders would otherwise import lazily inside it:
    Chroma and the model's transformers class (transformers loads model modules on first use)."""
    import transformers

    if chroma:
        import chromadb  # noqa: F401
    config = transformers.AutoConfig.from_pretrained(_model_path())
    for architecture in config.architectures or []:
        getattr(transformers, architecture, None)


def _emit(result: dict) -> None:
    print(RESULT_TAG + json.dumps(result), flush=True)


# -- the children: one contender each ------------------------------------------------------------


def _rag_settings(args: argparse.Namespace):
    """rag's defaults, with the store, device and dtype this run asks for (rag and bare share them)."""
    from rag.config import load_settings

    overrides = {"store.path": args.store}
    if args.device:
        overrides["embedding.device"] = args.device
    if args.dtype:
        overrides["embedding.dtype"] = args.dtype
    return load_settings(None, overrides)


def _child_rag(args: argparse.Namespace) -> dict:
    from rag.pipeline import Pipeline

    settings = _rag_settings(args)
    _preload(chroma=True)
    imported = time.perf_counter()
    rss_ready = _rss_mb()

    start = time.perf_counter()
    pipeline = Pipeline(settings, progress=False)
    report = pipeline.ingest([args.folder])
    seconds = time.perf_counter() - start
    peak = _peak_mb()
    if report.failed:
        print(f"rag: {report.failed} files failed: {report.failures[:3]}", file=sys.stderr)

    # The unchanged folder again, into the same store, by a pipeline that has nothing cached.
    again = Pipeline(settings, progress=False)
    start = time.perf_counter()
    second = again.ingest([args.folder])
    reingest = time.perf_counter() - start

    texts = [text for _, text in pipeline.store.iter_texts()]
    import torch

    return {
        "seconds": seconds,
        "files": report.added + report.updated,
        "documents": len({m.get("document_id") for _, m in pipeline.store.iter_metadata()}),
        "chunks": report.chunks_embedded,
        "tokens": _count_tokens(pipeline.embedder.tokenizer, texts),
        "peak_rss_mb": peak,
        "rss_after_imports_mb": rss_ready,
        "setup_s": imported - args.t0,
        "failed_files": report.failed,
        "reingest_s": reingest,
        "reingest_embedded": second.chunks_embedded,
        "reingest_unchanged": second.unchanged,
        "device": pipeline.embedder.device,
        "dtype": pipeline.embedder.dtype_name,
        "torch_threads": torch.get_num_threads(),
    }


def _child_langchain(args: argparse.Namespace) -> dict:
    import warnings

    warnings.filterwarnings("ignore")  # langchain-community's sunset notice, on stderr anyway
    import sentence_transformers  # noqa: F401 - imported by HuggingFaceEmbeddings() otherwise
    import torch
    from langchain_chroma import Chroma
    from langchain_community.document_loaders import DirectoryLoader, TextLoader
    from langchain_huggingface import HuggingFaceEmbeddings
    from langchain_text_splitters import RecursiveCharacterTextSplitter
    from transformers import AutoTokenizer

    from rag.hub import pick_device

    model = _model_path()
    device = pick_device(args.device or "auto")
    _preload(chroma=True)
    imported = time.perf_counter()
    rss_ready = _rss_mb()

    start = time.perf_counter()
    loader = DirectoryLoader(args.folder, loader_cls=TextLoader, loader_kwargs={"encoding": "utf-8"})
    documents = loader.load()
    tokenizer = AutoTokenizer.from_pretrained(model)
    splitter = RecursiveCharacterTextSplitter.from_huggingface_tokenizer(tokenizer, chunk_size=256, chunk_overlap=32)
    chunks = splitter.split_documents(documents)
    embeddings = HuggingFaceEmbeddings(
        model_name=model, model_kwargs={"device": device}, encode_kwargs={"normalize_embeddings": True}
    )
    Chroma.from_documents(
        chunks, embeddings, persist_directory=args.store, collection_name="bench",
        collection_metadata={"hnsw:space": "cosine"},
    )
    seconds = time.perf_counter() - start
    peak = _peak_mb()

    return {
        "seconds": seconds,
        "files": len({d.metadata.get("source") for d in documents}),
        "documents": len(documents),
        "chunks": len(chunks),
        "tokens": _count_tokens(tokenizer, [c.page_content for c in chunks]),
        "peak_rss_mb": peak,
        "rss_after_imports_mb": rss_ready,
        "setup_s": imported - args.t0,
        "device": device,
        "dtype": str(next(embeddings._client.parameters()).dtype).removeprefix("torch."),
        "torch_threads": torch.get_num_threads(),
    }


def _child_bare(args: argparse.Namespace) -> dict:
    import numpy as np
    import torch
    from transformers import AutoModel, AutoTokenizer

    from rag.loaders import iter_files, load_file
    from rag.pipeline import Pipeline

    # rag's own chunks, made before the clock starts: the ceiling is the encoding alone.
    settings = _rag_settings(args)
    pipeline = Pipeline(settings, progress=False)
    embedder, chunker = pipeline.embedder, pipeline.chunker
    files = documents = 0
    texts: list[str] = []
    for item in iter_files([args.folder], settings.loading.include, settings.loading.exclude):
        if not isinstance(item, Path):
            continue
        files += 1
        for document in load_file(item, json_text_field=settings.loading.json_text_field):
            documents += 1
            texts.extend(embedder.document_prefix + chunk.text for chunk in chunker.split(document))
    model_path, max_length, dtype = embedder.path, embedder.max_length, embedder.torch_dtype
    device = embedder.device
    del pipeline, embedder, chunker
    _preload(chroma=False)
    imported = time.perf_counter()
    rss_ready = _rss_mb()

    start = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model = AutoModel.from_pretrained(model_path, dtype=dtype).eval().to(device)
    encoded = tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]
    order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i]))
    vectors = np.empty((len(texts), model.config.hidden_size), dtype=np.float32)
    pad = tokenizer.pad_token_id or 0
    with torch.inference_mode():
        for begin in range(0, len(order), BARE_BATCH):
            batch = order[begin : begin + BARE_BATCH]
            width = len(encoded[batch[0]])  # the longest: sorted longest first
            ids = np.full((len(batch), width), pad, dtype=np.int64)
            mask = np.zeros((len(batch), width), dtype=np.int64)
            for row, i in enumerate(batch):
                ids[row, : len(encoded[i])] = encoded[i]
                mask[row, : len(encoded[i])] = 1
            ids_t, mask_t = torch.from_numpy(ids).to(device), torch.from_numpy(mask).to(device)
            hidden = model(input_ids=ids_t, attention_mask=mask_t).last_hidden_state
            weights = mask_t.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)
            vectors[batch] = torch.nn.functional.normalize(pooled.float(), p=2, dim=1).cpu().numpy()
    seconds = time.perf_counter() - start
    peak = _peak_mb()

    return {
        "seconds": seconds,
        "files": files,
        "documents": documents,
        "chunks": len(texts),
        "tokens": _count_tokens(tokenizer, texts),
        "peak_rss_mb": peak,
        "rss_after_imports_mb": rss_ready,
        "setup_s": imported - args.t0,
        "device": device,
        "dtype": str(dtype).removeprefix("torch."),
        "torch_threads": torch.get_num_threads(),
    }


def child_main(args: argparse.Namespace) -> None:
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    run = {"rag": _child_rag, "langchain": _child_langchain, "bare": _child_bare}[args.child]
    result = run(args)
    result["contender"] = args.child
    _emit(result)


# -- the parent: corpus folders, rounds, figures -------------------------------------------------


def _text_files(folder: Path) -> tuple[list[Path], int]:
    """Markdown/MDX/text files under ``folder`` (sorted, hidden ones skipped), and how many others."""
    chosen, others = [], 0
    for path in sorted(folder.rglob("*")):
        if not path.is_file() or any(part.startswith(".") for part in path.relative_to(folder).parts):
            continue
        if path.suffix.lower() in TEXT_SUFFIXES:
            chosen.append(path)
        else:
            others += 1
    return chosen, others


def _build_corpus(source: Path, files: list[Path], target: Path, copies: int) -> Path:
    """``copies`` copies of every file under ``target``, each copy with a name of its own."""
    for path in files:
        relative = path.relative_to(source)
        for n in range(copies):
            name = relative.name if copies == 1 else f"{relative.stem}.copy{n}{relative.suffix}"
            destination = target / relative.parent / name
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, destination)
    return target


def _run_child(contender: str, folder: Path, tmp: Path, args: argparse.Namespace, *, keep_store: bool = False):
    store = Path(tempfile.mkdtemp(prefix=f"store-{contender}-", dir=tmp))
    command = [sys.executable, str(Path(__file__).resolve()), "--child", contender, str(folder), "--store", str(store)]
    if args.threads:
        command += ["--threads", str(args.threads)]
    if args.device:
        command += ["--device", args.device]
    if args.dtype:
        command += ["--dtype", args.dtype]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "ANONYMIZED_TELEMETRY": "False"}
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    wall = time.perf_counter() - started
    lines = [line for line in done.stdout.splitlines() if line.startswith(RESULT_TAG)]
    if done.returncode != 0 or not lines:
        sys.stderr.write(done.stderr[-4000:])
        raise SystemExit(f"the {contender} run failed (exit code {done.returncode}); its stderr is above")
    result = json.loads(lines[-1][len(RESULT_TAG) :])
    result["process_wall_s"] = wall
    if keep_store:
        result["store"] = str(store)
    else:
        shutil.rmtree(store, ignore_errors=True)
    return result


def _time_cli_reingest(folder: Path, store: str) -> float | None:
    """A second ingest as a user runs it: `rag ingest` in a new process (startup and imports included)."""
    command = [sys.executable, "-m", "rag.cli", "ingest", str(folder), "--store", store]
    started = time.perf_counter()
    done = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"}, check=False)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        print(f"`rag ingest` re-run failed: {done.stderr.strip()[-500:]}", file=sys.stderr)
        return None
    return seconds


def _rates(result: dict) -> dict:
    seconds = result["seconds"]
    return {
        "docs_per_s": result["files"] / seconds,
        "chunks_per_s": result["chunks"] / seconds,
        "tokens_per_s": result["tokens"] / seconds,
    }


def _summary(runs: list[dict]) -> dict:
    """Median over rounds of each contender's figures."""
    summary = {}
    for contender in CONTENDERS:
        mine = [r for r in runs if r["contender"] == contender]
        if not mine:
            continue
        entry = {key: statistics.median(r[key] for r in mine)
                 for key in ("seconds", "peak_rss_mb", "rss_after_imports_mb", "setup_s")}
        for key in ("files", "documents", "chunks", "tokens", "dtype"):
            entry[key] = mine[0][key]
        rates = [_rates(r) for r in mine]
        for key in ("docs_per_s", "chunks_per_s", "tokens_per_s"):
            entry[key] = statistics.median(r[key] for r in rates)
        if contender == "rag":
            entry["reingest_s"] = statistics.median(r["reingest_s"] for r in mine)
            entry["reingest_pct"] = 100 * entry["reingest_s"] / entry["seconds"]
            entry["reingest_embedded"] = max(r["reingest_embedded"] for r in mine)
        entry["rounds"] = len(mine)
        summary[contender] = entry
    return summary


def _machine(args: argparse.Namespace) -> dict:
    from importlib.metadata import PackageNotFoundError, version

    versions = {}
    for name in ("torch", "transformers", "chromadb", "sentence-transformers", "langchain-core",
                 "langchain-community", "langchain-huggingface", "langchain-chroma", "langchain-text-splitters"):
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = None
    return {"platform": platform.platform(), "python": platform.python_version(),
            "cpus": os.cpu_count(), "processor": platform.processor(), "versions": versions}


def _print_table(data: dict) -> None:
    summary = data["summary"]
    if not summary:
        print(f"corpus: {data['corpus']['folder']} ({data['corpus']['files']} files)")
    else:
        _print_comparison(data)
    if data.get("scale"):
        s = data["scale"]
        print(f"scale: peak RSS of rag ingest {s['peak_rss_mb_1x']:.0f} MB at 1x ({s['chunks_1x']} chunks), "
              f"{s['peak_rss_mb_kx']:.0f} MB at {s['factor']}x ({s['chunks_kx']} chunks): "
              f"{s['rise_pct']:+.1f}% (target < 10%); "
              f"chunks/s {s['chunks_per_s_1x']:.2f} vs {s['chunks_per_s_kx']:.2f}")
    for note in data["notes"]:
        print(f"note: {note}")


def _print_comparison(data: dict) -> None:
    summary = data["summary"]
    print(f"corpus: {data['corpus']['folder']} ({data['corpus']['files']} files; "
          f"{data['rounds']} round(s), medians shown)")
    header = f"{'contender':<10} {'seconds':>9} {'docs/s':>8} {'chunks/s':>9} {'tokens/s':>9} " \
             f"{'peak RSS MB':>12} {'chunks':>7} {'tokens':>9} {'dtype':>9}"
    print(header)
    print("-" * len(header))
    for name, e in summary.items():
        print(f"{name:<10} {e['seconds']:>9.2f} {e['docs_per_s']:>8.2f} {e['chunks_per_s']:>9.2f} "
              f"{e['tokens_per_s']:>9.0f} {e['peak_rss_mb']:>12.0f} {e['chunks']:>7} {e['tokens']:>9} {e['dtype']:>9}")
    for label, ratio in data["ratios"].items():
        print(f"{label}: docs/s {ratio['docs_per_s']:.3f}x, chunks/s {ratio['chunks_per_s']:.3f}x, "
              f"tokens/s {ratio['tokens_per_s']:.3f}x")
    if "rag" in summary:
        rag = summary["rag"]
        line = (f"re-ingest of the unchanged folder (Pipeline.ingest): {rag['reingest_s']:.2f} s = "
                f"{rag['reingest_pct']:.2f}% of the first ingest; {rag['reingest_embedded']} chunks embedded")
        print(line)
        if data.get("reingest_cli_s") is not None:
            print(f"re-ingest as `rag ingest` in a new process (startup and imports included): "
                  f"{data['reingest_cli_s']:.2f} s")


def parent_main(args: argparse.Namespace) -> None:
    source = Path(args.folder).resolve()
    if not source.is_dir():
        raise SystemExit(f"{source} is not a folder")
    files, others = _text_files(source)
    if args.limit_files:
        files = files[: args.limit_files]
    if not files:
        raise SystemExit(f"no {'/'.join(TEXT_SUFFIXES)} files under {source}")
    contenders = [c.strip() for c in args.contenders.split(",") if c.strip()]
    unknown = set(contenders) - set(CONTENDERS)
    if unknown:
        raise SystemExit(f"--contenders: unknown {', '.join(sorted(unknown))}; choose from {', '.join(CONTENDERS)}")

    tmp = Path(tempfile.mkdtemp(prefix="rag-bench-ingest-", dir=args.tmp))
    try:
        corpus = _build_corpus(source, files, tmp / "corpus", 1)
        runs: list[dict] = []
        reingest_cli = None
        for round_ in range(args.rounds):
            order = contenders if round_ % 2 == 0 else contenders[::-1]
            for contender in order:
                keep = contender == "rag" and args.cli_reingest and not any(r["contender"] == "rag" for r in runs)
                result = _run_child(contender, corpus, tmp, args, keep_store=keep)
                result["round"] = round_ + 1
                runs.append(result)
                print(f"round {round_ + 1}: {contender:<9} {result['seconds']:8.2f} s, {result['chunks']} chunks, "
                      f"peak RSS {result['peak_rss_mb']:.0f} MB", file=sys.stderr, flush=True)
                if keep:
                    store = result.pop("store")
                    reingest_cli = _time_cli_reingest(corpus, store)
                    shutil.rmtree(store, ignore_errors=True)

        summary = _summary(runs)
        ratios = {}
        for other in ("langchain", "bare"):
            if "rag" in summary and other in summary:
                ratios[f"rag/{other}"] = {key: summary["rag"][key] / summary[other][key]
                                          for key in ("docs_per_s", "chunks_per_s", "tokens_per_s")}

        scale = None
        if args.scale and args.scale > 1:
            big = _build_corpus(source, files, tmp / f"corpus-x{args.scale}", args.scale)
            one = _run_child("rag", corpus, tmp, args)
            print(f"scale 1x: peak RSS {one['peak_rss_mb']:.0f} MB", file=sys.stderr, flush=True)
            many = _run_child("rag", big, tmp, args)
            print(f"scale {args.scale}x: peak RSS {many['peak_rss_mb']:.0f} MB", file=sys.stderr, flush=True)
            scale = {
                "factor": args.scale,
                "peak_rss_mb_1x": one["peak_rss_mb"],
                "peak_rss_mb_kx": many["peak_rss_mb"],
                "rise_pct": 100 * (many["peak_rss_mb"] / one["peak_rss_mb"] - 1),
                "chunks_1x": one["chunks"],
                "chunks_kx": many["chunks"],
                "seconds_1x": one["seconds"],
                "seconds_kx": many["seconds"],
                "chunks_per_s_1x": one["chunks"] / one["seconds"],
                "chunks_per_s_kx": many["chunks"] / many["seconds"],
                "rss_after_imports_mb": one["rss_after_imports_mb"],
            }
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    notes = [
        "LangChain's TextLoader reads .md/.mdx as plain text; rag uses its Markdown loader (YAML front "
        "matter goes to metadata), so the texts differ slightly: compare tokens/s as well as docs/s",
        "LangChain's splitter counts tokens without [CLS]/[SEP], so its 256-token chunks are truncated by "
        "2 tokens at encoding; rag caps chunks at what the model sees (254 + 2)",
        "each contender ran in a fresh process; seconds cover model loading through the last vector "
        "written; imports (and for bare, loading and chunking) are excluded (setup_s)",
    ]
    if others:
        notes.append(f"{others} files of other formats under the folder were left out (not plain text)")
    data = {
        "corpus": {"folder": str(source), "files": len(files), "limit_files": args.limit_files},
        "rounds": args.rounds,
        "threads": args.threads or "torch default",
        "machine": _machine(args),
        "summary": summary,
        "ratios": ratios,
        "reingest_cli_s": reingest_cli,
        "scale": scale,
        "runs": runs,
        "notes": notes,
    }
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        _print_table(data)


def main() -> None:
    t0 = time.perf_counter()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", help="folder of documents (its .md/.mdx/.txt files are used)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="rounds of all contenders, order alternating (1; 0 with --scale: memory check only)")
    parser.add_argument("--limit-files", type=int, default=0, help="use only the first N files (sorted)")
    parser.add_argument("--scale", type=int, default=0, help="also compare rag's peak RSS at 1x and Kx the corpus")
    parser.add_argument("--contenders", default=",".join(CONTENDERS),
                        help="comma-separated subset of rag,langchain,bare")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch.set_num_threads for every contender (torch's default)")
    parser.add_argument("--device", default="", help="device for every contender (default: rag's auto choice)")
    parser.add_argument("--dtype", default="", help="embedding.dtype for rag and bare (default: rag's auto choice; "
                        "LangChain keeps its own default, float32)")
    parser.add_argument("--no-cli-reingest", dest="cli_reingest", action="store_false",
                        help="skip timing `rag ingest` of the unchanged folder in a new process")
    parser.add_argument("--tmp", default=None, help="where the temporary corpus copies and stores go")
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    parser.add_argument("--child", choices=CONTENDERS, help=argparse.SUPPRESS)
    parser.add_argument("--store", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.t0 = t0
    if args.child:
        child_main(args)
    else:
        parent_main(args)


if __name__ == "__main__":
    main()
