"""What each `rag` command does: build the pipeline from the config and the options, call it, and
hand the result to rag.console. rag.cli defines the options and calls these."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from rag import console
from rag.errors import RagError

if TYPE_CHECKING:
    from rag.pipeline import Pipeline


def pipeline_for(args: argparse.Namespace, config: str | None = None) -> Pipeline:
    from rag.pipeline import Pipeline

    overrides = {"store": {"path": str(Path(args.store).resolve())}} if getattr(args, "store", None) else {}
    return Pipeline.from_yaml(config or getattr(args, "config", None), sets=args.sets, **overrides)


def ingest(args: argparse.Namespace) -> int:
    pipeline = pipeline_for(args)
    if args.engine:
        pipeline.settings.ingest.engine = args.engine
    if args.ray_address:
        pipeline.settings.ingest.ray.address = args.ray_address
    report = pipeline.ingest(args.paths, sync=args.sync, wait=not args.no_wait)
    if args.json:
        console.emit_json(report.as_dict())
    else:
        print(report.summary())
    return 1 if report.failed and not args.allow_failures else 0


def search(args: argparse.Namespace) -> int:
    pipeline = pipeline_for(args)
    hits = pipeline.search(args.query, args.k, mode=args.mode)
    if args.json:
        console.emit_json({"query": args.query, "mode": args.mode or pipeline.settings.retrieval.mode,
                              "hits": [h.to_dict() for h in hits]})
    else:
        console.print_hits(hits)
    return 0


def similar(args: argparse.Namespace) -> int:
    hits = pipeline_for(args).similar(chunk_id=args.chunk_id, text=args.text, k=args.k)
    if args.json:
        console.emit_json({"id": args.chunk_id, "text": args.text, "hits": [h.to_dict() for h in hits]})
    else:
        console.print_hits(hits)
    return 0


def info(args: argparse.Namespace) -> int:
    pipeline = pipeline_for(args)
    if args.duplicates:
        groups = pipeline.duplicates(args.threshold)
        if args.json:
            console.emit_json(console.duplicates_json(groups, args.threshold))
        else:
            console.print_duplicates(groups, args.threshold)
        return 0
    info = pipeline.info()
    if args.json:
        console.emit_json(info)
    else:
        console.print_info(info)
    return 0


def draw_map(args: argparse.Namespace) -> int:
    result = pipeline_for(args).map(args.out, color_by=args.color_by, query=args.query, method=args.method,
                                 limit=args.limit, k=args.k)
    drawn, total = result["points"], result["total"]
    sampled = f"all {total:,} chunks" if drawn >= total else f"{drawn:,} of {total:,} chunks sampled"
    print(f"rag: map: {sampled}", file=sys.stderr)
    if args.json:
        console.emit_json(result)
    else:
        print(result["png"])
        print(result["html"])
    return 0


def ask(args: argparse.Namespace) -> int:
    """Exit code 2 when the answer was cut short (its model server failed mid-answer)."""
    pipeline = pipeline_for(args)
    if args.json:
        answer = pipeline.ask(args.question, args.k, mode=args.mode)
        console.print_warnings(answer)
        console.emit_json(answer.to_dict())
    else:
        answer = console.stream_answer(pipeline.stream(args.question, args.k, mode=args.mode))
    return 2 if answer.interrupted else 0


def run(args: argparse.Namespace) -> int:
    from rag.runs import run_job

    result = run_job(pipeline_for(args, args.config_file))
    if args.json:
        console.emit_json(result)
    else:
        print(f"answered {result['questions']} questions -> {result['answers']} (config copy: {result['config']})")
    return 0


def serve(args: argparse.Namespace) -> int:
    from rag.server import serve

    if args.root and not Path(args.root).is_dir():
        raise RagError(f"--root {args.root}: no such folder")
    if args.root:
        args.sets = [*args.sets, f"server.root={json.dumps(str(Path(args.root).resolve()))}"]
    serve(pipeline_for(args), host=args.host, port=args.port, api_key=args.api_key or os.environ.get("RAG_API_KEY"))
    return 0


def evaluate(args: argparse.Namespace) -> int:
    from rag.evaluation import jobs, report

    pipeline = pipeline_for(args)
    if args.kind == "retrieval":
        result = jobs.evaluate_retrieval(pipeline, args.corpus, args.queries, args.qrels, mode=args.mode,
                                         out=args.out)
    else:
        result = jobs.evaluate_qa(pipeline, args.squad, k=args.k, mode=args.mode, generate=args.generate,
                                  limit=args.limit, out=args.out, context=args.context)
    if args.json:
        console.emit_json(result)
    else:
        print(report.format_result(result))
    return 0


def tune(args: argparse.Namespace) -> int:
    from rag.tuning import tune

    tuning = tune(pipeline_for(args), queries=args.queries, qrels=args.qrels, apply=args.apply)
    if args.json:
        console.emit_json({**tuning.as_dict(), "applied": args.apply})
    else:
        print(tuning.summary())
        print("recorded in the collection" if args.apply else "not recorded (add --apply to use it)")
    return 0
