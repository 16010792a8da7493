"""The `rag` command's options: one parser per command, each dispatching to its function in
rag.commands, which calls the pipeline and shows the result through rag.console.

Results go to stdout (one JSON document with --json); progress, logs and errors go to stderr. An error
the user can fix prints one line and exits 2; a run where some files failed exits 1 unless
``--allow-failures`` is given.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

from rag import commands
from rag.errors import RagError
from rag.types import MODES

if TYPE_CHECKING:
    from typing import TypeAlias

    Commands: TypeAlias = argparse._SubParsersAction[argparse.ArgumentParser]


def _common(parser: argparse.ArgumentParser, *, json_flag: bool = True, k: str | None = None,
            mode: bool = False) -> None:
    """The options every command shares; ``k``: the help of a -k option, ``mode``: a --mode option."""
    if k is not None:
        parser.add_argument("-k", type=int, help=k)
    if mode:
        parser.add_argument("--mode", choices=MODES, help="retrieval mode (default retrieval.mode)")
    parser.add_argument("--config", metavar="FILE", help="YAML config (see configs/default.yaml)")
    parser.add_argument("--store", metavar="DIR", help="store folder (default ./.rag, or store.path in the config)")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key, e.g. --set generation.max_new_tokens=64 (repeatable)")
    if json_flag:
        parser.add_argument("--json", action="store_true", help="print one JSON document on stdout")


def _command(subparsers: Commands, name: str, run: Callable[[argparse.Namespace], int],
             help: str) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(name, help=help)
    parser.set_defaults(run=run)
    return parser





def _add_ingest(subparsers: Commands) -> None:
    ingest = _command(subparsers, "ingest", commands.ingest, help="load, chunk, embed and store files")
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











def _add_store_views(subparsers: Commands) -> None:
    search = _command(subparsers, "search", commands.search, help="print the chunks that best match a query")
    search.add_argument("query")
    _common(search, k="how many chunks (default retrieval.k)", mode=True)

    info = _command(subparsers, "info", commands.info, help="what the store holds")
    info.add_argument("--duplicates", action="store_true",
                      help="list groups of near-duplicate chunks (one line per group) instead")
    info.add_argument("--threshold", type=float, default=0.98,
                      help="with --duplicates: the cosine similarity that makes two chunks copies (0.98)")
    _common(info)

    similar = _command(subparsers, "similar", commands.similar, help="the chunks nearest a stored chunk or a text")
    target = similar.add_mutually_exclusive_group(required=True)
    target.add_argument("--id", dest="chunk_id", metavar="CHUNK_ID", help="a stored chunk's id (itself left out)")
    target.add_argument("--text", metavar="TEXT", help="a text, embedded as the documents are")
    _common(similar, k="how many chunks (default retrieval.k)")

    # The choices are rag.mapping's METHODS and COLOR_BY, written out so that `rag --help` imports
    # nothing heavy (tests/test_map.py checks that they agree).
    map_ = _command(subparsers, "map", commands.draw_map,
                    help="draw the stored vectors in 2-D: map.png and an interactive map.html")
    map_.add_argument("--out", metavar="DIR", default="rag-map", help="where map.png and map.html go (./rag-map)")
    map_.add_argument("--color-by", choices=["source", "format", "cluster"], default="source",
                      help="colour the points by file, by format, or by k-means cluster (source)")
    map_.add_argument("--query", metavar="TEXT", help="also draw this query and circle its top-k hits")
    map_.add_argument("--method", choices=["pca", "umap"], default="pca",
                      help='projection (pca; umap needs pip install -e ".[umap]")')
    map_.add_argument("--limit", type=int, default=5000, metavar="N",
                      help="draw at most N chunks, a reproducible sample (5000)")
    _common(map_, k="how many of the query's hits to circle (default retrieval.k)")









def _add_answers(subparsers: Commands) -> None:
    ask = _command(subparsers, "ask", commands.ask, help="answer a question from the store, streamed, with sources")
    ask.add_argument("question")
    _common(ask, k="how many chunks to retrieve (default retrieval.k)", mode=True)

    run = _command(subparsers, "run", commands.run,
                   help="run a configured job: ingest run.inputs, answer run.questions")
    run.add_argument("config_file", metavar="CONFIG.yaml")
    run.add_argument("--store", metavar="DIR")
    run.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE")
    run.add_argument("--json", action="store_true")

    serve = _command(subparsers, "serve", commands.serve,
                     help="serve the pipeline over HTTP: OpenAI-compatible API and a chat page")
    serve.add_argument("--host", help="address to listen on (default 127.0.0.1; another needs an API key)")
    serve.add_argument("--port", type=int, help="port (default 8000)")
    serve.add_argument("--api-key", metavar="KEY", help="require 'Authorization: Bearer KEY' (or set RAG_API_KEY)")
    serve.add_argument("--root", metavar="DIR", help="POST /ingest may name server-side paths under DIR "
                       "(default: uploads only)")
    _common(serve, json_flag=False)





def _add_eval(subparsers: Commands) -> None:
    evaluate = _command(subparsers, "eval", commands.evaluate,
                        help="measure retrieval (BEIR) or question answering (SQuAD)")
    kinds = evaluate.add_subparsers(dest="kind", required=True, metavar="KIND")
    retrieval = kinds.add_parser("retrieval", help="nDCG, recall, MRR, MAP on a BEIR-format dataset")
    retrieval.add_argument("--corpus", required=True, metavar="corpus.jsonl")
    retrieval.add_argument("--queries", required=True, metavar="queries.jsonl")
    retrieval.add_argument("--qrels", required=True, metavar="qrels.tsv")
    retrieval.add_argument("--out", metavar="DIR", help="also write per-query results and a Markdown report "
                           "comparing all modes, with pictures")
    _common(retrieval, mode=True)
    qa = kinds.add_parser("qa", help="answer recall (and EM/F1 with --generate) on a SQuAD-format file")
    qa.add_argument("--squad", required=True, metavar="FILE")
    qa.add_argument("-k", type=int, default=10, help="deepest k measured (default 10)")
    qa.add_argument("--generate", action="store_true", help="also generate answers: exact match and F1")
    qa.add_argument("--context", choices=["retrieved", "gold", "none"], default="retrieved",
                    help="with --generate, answer from the retrieved chunks (default), the gold paragraph "
                         "alone (upper bound) or nothing (closed book)")
    qa.add_argument("--limit", type=int, help="only the first N questions")
    qa.add_argument("--out", metavar="DIR")
    _common(qa, mode=True)



def _add_tune(subparsers: Commands) -> None:
    tune = _command(subparsers, "tune", commands.tune,
                    help="choose the collection's hybrid fusion on its own chunks (or on labelled queries)")
    tune.add_argument("--queries", metavar="queries.jsonl", help="judged queries (BEIR format); with --qrels")
    tune.add_argument("--qrels", metavar="qrels.tsv", help="their judgements: query id, document (a corpus id, "
                      "a file's path or a document id), grade")
    tune.add_argument("--apply", action="store_true", help="record the choice in the collection, for searches to use")
    _common(tune)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rag", description="Answers from your own documents with local models.")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (_add_ingest, _add_store_views, _add_answers, _add_eval, _add_tune):
        add(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = build_parser().parse_args(argv)
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
        return args.run(args)
    except RagError as exc:
        print(f"rag: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("rag: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
