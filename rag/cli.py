"""The `rag` command: a thin layer over Pipeline.

Results go to stdout (one JSON document with --json); progress, logs and errors go to stderr. An error
the user can fix prints one line and exits 2; a run where some files failed exits 1 unless
``--allow-failures`` is given.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import textwrap
from pathlib import Path
from typing import Any

from rag.errors import RagError
from rag.types import MODES


def _common(parser: argparse.ArgumentParser, *, json_flag: bool = True) -> None:
    parser.add_argument("--config", metavar="FILE", help="YAML config (see configs/default.yaml)")
    parser.add_argument("--store", metavar="DIR", help="store folder (default ./.rag, or store.path in the config)")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key, e.g. --set generation.max_new_tokens=64 (repeatable)")
    if json_flag:
        parser.add_argument("--json", action="store_true", help="print one JSON document on stdout")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rag", description="Answers from your own documents with local models.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    ingest = commands.add_parser("ingest", help="load, chunk, embed and store files")
    ingest.add_argument("paths", nargs="+", metavar="PATH")
    ingest.add_argument("--sync", action="store_true",
                        help="also remove what was ingested from under PATH and is gone now")
    ingest.add_argument("--allow-failures", action="store_true", help="exit 0 even when some files failed")
    ingest.add_argument("--no-wait", action="store_true", help="fail at once if another ingest holds the store")
    ingest.add_argument("--engine", choices=["local", "ray"],
                        help="where the work runs (ingest.engine): here, or on Ray "
                             '(needs store.url and pip install -e ".[ray]")')
    ingest.add_argument("--ray-address", metavar="ADDRESS",
                        help="with --engine ray: auto (a cluster started with `ray start`) or ray://HOST:PORT "
                             "(default: a Ray started on this machine)")
    _common(ingest)

    search = commands.add_parser("search", help="print the chunks that best match a query")
    search.add_argument("query")
    search.add_argument("-k", type=int, help="how many chunks (default retrieval.k)")
    search.add_argument("--mode", choices=MODES, help="retrieval mode")
    _common(search)

    info = commands.add_parser("info", help="what the store holds")
    info.add_argument("--duplicates", action="store_true",
                      help="list groups of near-duplicate chunks (one line per group) instead")
    info.add_argument("--threshold", type=float, default=0.98,
                      help="with --duplicates: the cosine similarity that makes two chunks copies (0.98)")
    _common(info)

    similar = commands.add_parser("similar", help="the chunks nearest a stored chunk or a text")
    target = similar.add_mutually_exclusive_group(required=True)
    target.add_argument("--id", dest="chunk_id", metavar="CHUNK_ID", help="a stored chunk's id (itself left out)")
    target.add_argument("--text", metavar="TEXT", help="a text, embedded as the documents are")
    similar.add_argument("-k", type=int, help="how many chunks (default retrieval.k)")
    _common(similar)

    # The choices are rag.mapping's METHODS and COLOR_BY, written out so that `rag --help` imports
    # nothing heavy (tests/test_map.py checks that they agree).
    map_ = commands.add_parser("map", help="draw the stored vectors in 2-D: map.png and an interactive map.html")
    map_.add_argument("--out", metavar="DIR", default="rag-map", help="where map.png and map.html go (./rag-map)")
    map_.add_argument("--color-by", choices=["source", "format", "cluster"], default="source",
                      help="colour the points by file, by format, or by k-means cluster (source)")
    map_.add_argument("--query", metavar="TEXT", help="also draw this query and circle its top-k hits")
    map_.add_argument("--method", choices=["pca", "umap"], default="pca",
                      help='projection (pca; umap needs pip install -e ".[umap]")')
    map_.add_argument("--limit", type=int, default=5000, metavar="N",
                      help="draw at most N chunks, a reproducible sample (5000)")
    map_.add_argument("-k", type=int, help="how many of the query's hits to circle (default retrieval.k)")
    _common(map_)

    ask = commands.add_parser("ask", help="answer a question from the store, streamed, with sources")
    ask.add_argument("question")
    ask.add_argument("-k", type=int, help="how many chunks to retrieve (default retrieval.k)")
    ask.add_argument("--mode", choices=MODES, help="retrieval mode")
    _common(ask)

    run = commands.add_parser("run", help="run a configured job: ingest run.inputs, answer run.questions")
    run.add_argument("config_file", metavar="CONFIG.yaml")
    run.add_argument("--store", metavar="DIR")
    run.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE")
    run.add_argument("--json", action="store_true")

    serve = commands.add_parser("serve", help="serve the pipeline over HTTP: OpenAI-compatible API and a chat page")
    serve.add_argument("--host", help="address to listen on (default 127.0.0.1; another needs an API key)")
    serve.add_argument("--port", type=int, help="port (default 8000)")
    serve.add_argument("--api-key", metavar="KEY", help="require 'Authorization: Bearer KEY' (or set RAG_API_KEY)")
    serve.add_argument("--root", metavar="DIR", help="POST /ingest may name server-side paths under DIR "
                       "(default: uploads only)")
    _common(serve, json_flag=False)

    evaluate = commands.add_parser("eval", help="measure retrieval (BEIR) or question answering (SQuAD)")
    kinds = evaluate.add_subparsers(dest="kind", required=True, metavar="KIND")
    retrieval = kinds.add_parser("retrieval", help="nDCG, recall, MRR, MAP on a BEIR-format dataset")
    retrieval.add_argument("--corpus", required=True, metavar="corpus.jsonl")
    retrieval.add_argument("--queries", required=True, metavar="queries.jsonl")
    retrieval.add_argument("--qrels", required=True, metavar="qrels.tsv")
    retrieval.add_argument("--mode", choices=MODES)
    retrieval.add_argument("--out", metavar="DIR", help="also write per-query results and a Markdown report "
                           "comparing all modes, with pictures")
    _common(retrieval)
    qa = kinds.add_parser("qa", help="answer recall (and EM/F1 with --generate) on a SQuAD-format file")
    qa.add_argument("--squad", required=True, metavar="FILE")
    qa.add_argument("-k", type=int, default=10, help="deepest k measured (default 10)")
    qa.add_argument("--mode", choices=MODES)
    qa.add_argument("--generate", action="store_true", help="also generate answers: exact match and F1")
    qa.add_argument("--context", choices=["retrieved", "gold", "none"], default="retrieved",
                    help="with --generate, answer from the retrieved chunks (default), the gold paragraph "
                         "alone (upper bound) or nothing (closed book)")
    qa.add_argument("--limit", type=int, help="only the first N questions")
    qa.add_argument("--out", metavar="DIR")
    _common(qa)
    return parser


def _pipeline(args: argparse.Namespace, config: str | None = None):
    from rag.pipeline import Pipeline

    overrides = {"store": {"path": str(Path(args.store).resolve())}} if getattr(args, "store", None) else {}
    return Pipeline.from_yaml(config or getattr(args, "config", None), sets=args.sets, **overrides)


def _emit_json(data: Any) -> None:
    json.dump(data, sys.stdout, ensure_ascii=False, indent=2, default=str)
    sys.stdout.write("\n")


def _where(metadata: dict[str, Any]) -> str:
    from rag.text import printable

    source = str(metadata.get("source", "?"))
    cwd = os.getcwd().rstrip("/") + "/"
    if source.startswith(cwd):
        source = source[len(cwd):]
    source = printable(source)
    return f"{source} (p. {metadata['page']})" if metadata.get("page") else source


def cmd_ingest(args: argparse.Namespace) -> int:
    pipeline = _pipeline(args)
    if args.engine:
        pipeline.settings.ingest.engine = args.engine
    if args.ray_address:
        pipeline.settings.ingest.ray.address = args.ray_address
    report = pipeline.ingest(args.paths, sync=args.sync, wait=not args.no_wait)
    if args.json:
        _emit_json(report.as_dict())
    else:
        print(report.summary())
    return 1 if report.failed and not args.allow_failures else 0


def cmd_search(args: argparse.Namespace) -> int:
    pipeline = _pipeline(args)
    hits = pipeline.search(args.query, args.k, mode=args.mode)
    if args.json:
        _emit_json({"query": args.query, "mode": args.mode or pipeline.settings.retrieval.mode,
                    "hits": [h.to_dict() for h in hits]})
        return 0
    _print_hits(hits)
    return 0


def cmd_similar(args: argparse.Namespace) -> int:
    hits = _pipeline(args).similar(chunk_id=args.chunk_id, text=args.text, k=args.k)
    if args.json:
        _emit_json({"id": args.chunk_id, "text": args.text, "hits": [h.to_dict() for h in hits]})
    else:
        _print_hits(hits)
    return 0


def _print_hits(hits: list) -> None:
    width = shutil.get_terminal_size((100, 20)).columns
    for hit in hits:
        print(f"{hit.rank:>2}. {hit.score:.4f}  {_where(hit.chunk.metadata)}")
        text = " ".join(hit.chunk.text.split())
        print(textwrap.indent(textwrap.shorten(text, width=max(40, 3 * width - 20), placeholder=" ..."), "    "))
    if not hits:
        print("no matching chunks", file=sys.stderr)


def cmd_info(args: argparse.Namespace) -> int:
    pipeline = _pipeline(args)
    if args.duplicates:
        return _duplicates(pipeline, args)
    info = pipeline.info()
    if args.json:
        _emit_json(info)
    else:
        for key, value in info.items():
            print(f"{key}: {value}")
    return 0


def _duplicates(pipeline, args: argparse.Namespace) -> int:
    groups = pipeline.duplicates(args.threshold)
    if args.json:
        _emit_json({"threshold": args.threshold, "groups": [
            [{"id": c.id, "source": c.metadata.get("source"), "page": c.metadata.get("page"), "start": c.start,
              "end": c.end} for c in group] for group in groups]})
        return 0
    for group in groups:
        places = [f"{_where(c.metadata)} [{c.start}:{c.end}]" for c in group]
        print(f"{len(group)} chunks: " + ", ".join(places))
    copies = sum(len(g) for g in groups)
    print(f"{len(groups)} groups of near-duplicate chunks ({copies} chunks, cosine >= {args.threshold})",
          file=sys.stderr)
    return 0


def cmd_map(args: argparse.Namespace) -> int:
    result = _pipeline(args).map(args.out, color_by=args.color_by, query=args.query, method=args.method,
                                 limit=args.limit, k=args.k)
    drawn, total = result["points"], result["total"]
    sampled = f"all {total:,} chunks" if drawn >= total else f"{drawn:,} of {total:,} chunks sampled"
    print(f"rag: map: {sampled}", file=sys.stderr)
    if args.json:
        _emit_json(result)
    else:
        print(result["png"])
        print(result["html"])
    return 0


def _print_warnings(answer) -> None:
    for warning in answer.warnings:
        print(f"rag: warning: {warning}", file=sys.stderr)


def cmd_ask(args: argparse.Namespace) -> int:
    from rag.types import Answer

    pipeline = _pipeline(args)
    if args.json:
        answer = pipeline.ask(args.question, args.k, mode=args.mode)
        _print_warnings(answer)
        _emit_json(answer.to_dict())
        return 0
    answer = None
    for piece in pipeline.stream(args.question, args.k, mode=args.mode):
        if isinstance(piece, Answer):
            answer = piece
        else:
            sys.stdout.write(piece)
            sys.stdout.flush()
    print()
    _print_warnings(answer)
    if answer.dropped_hits:
        print(f"({answer.dropped_hits} retrieved sources did not fit the context window)", file=sys.stderr)
    if answer.citations:
        print("\nSources:")
        for n in answer.citations:
            print(f"  [{n}] {_where(answer.hits[n - 1].chunk.metadata)}")
    if answer.unknown_citations:
        print(f"(cited sources that do not exist: {answer.unknown_citations})", file=sys.stderr)
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from rag.harness import run_job

    result = run_job(_pipeline(args, args.config_file))
    if args.json:
        _emit_json(result)
    else:
        print(f"answered {result['questions']} questions -> {result['answers']} (config copy: {result['config']})")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from rag import harness

    pipeline = _pipeline(args)
    if args.kind == "retrieval":
        result = harness.evaluate_retrieval(pipeline, args.corpus, args.queries, args.qrels, mode=args.mode,
                                            out=args.out)
    else:
        result = harness.evaluate_qa(pipeline, args.squad, k=args.k, mode=args.mode, generate=args.generate,
                                     limit=args.limit, out=args.out, context=args.context)
    if args.json:
        _emit_json(result)
    else:
        print(harness.format_result(result))
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from rag.server import serve

    sets = list(args.sets)
    if args.root and not Path(args.root).is_dir():
        raise RagError(f"--root {args.root}: no such folder")
    if args.root:
        sets.append(f"server.root={json.dumps(str(Path(args.root).resolve()))}")
    args.sets = sets
    serve(_pipeline(args), host=args.host, port=args.port, api_key=args.api_key or os.environ.get("RAG_API_KEY"))
    return 0


COMMANDS = {"ingest": cmd_ingest, "search": cmd_search, "info": cmd_info, "ask": cmd_ask, "run": cmd_run,
            "eval": cmd_eval, "similar": cmd_similar, "map": cmd_map,
            "serve": cmd_serve}


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = build_parser().parse_args(argv)
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
        return COMMANDS[args.command](args)
    except RagError as exc:
        print(f"rag: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("rag: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
