"""How the `rag` command shows results on a terminal: hits, answers as they stream, sources, the
store's info. Results go to stdout (one JSON document with --json); warnings and notes to stderr."""

from __future__ import annotations

import json
import os
import shutil
import sys
import textwrap
from collections.abc import Iterable, Iterator
from typing import Any

from rag.text import printable
from rag.types import Answer, Chunk, Hit


def emit_json(data: Any) -> None:
    json.dump(data, sys.stdout, ensure_ascii=False, indent=2, default=str)
    sys.stdout.write("\n")


def where(metadata: dict[str, Any]) -> str:
    """A chunk's file (relative to the working directory when under it) and page, printable."""
    source = str(metadata.get("source", "?"))
    cwd = os.getcwd().rstrip("/") + "/"
    source = printable(source.removeprefix(cwd))
    return f"{source} (p. {metadata['page']})" if metadata.get("page") else source


def print_hits(hits: list[Hit]) -> None:
    width = shutil.get_terminal_size((100, 20)).columns
    for hit in hits:
        print(f"{hit.rank:>2}. {hit.score:.4f}  {where(hit.chunk.metadata)}")
        text = " ".join(hit.chunk.text.split())
        print(textwrap.indent(textwrap.shorten(text, width=max(40, 3 * width - 20), placeholder=" ..."), "    "))
    if not hits:
        print("no matching chunks", file=sys.stderr)


def print_info(info: dict[str, Any]) -> None:
    for key, value in info.items():
        print(f"{key}: {value}")


def duplicates_json(groups: list[list[Chunk]], threshold: float) -> dict[str, Any]:
    return {"threshold": threshold, "groups": [
        [{"id": c.id, "source": c.metadata.get("source"), "page": c.metadata.get("page"), "start": c.start,
          "end": c.end} for c in group] for group in groups]}


def print_duplicates(groups: list[list[Chunk]], threshold: float) -> None:
    for group in groups:
        places = [f"{where(c.metadata)} [{c.start}:{c.end}]" for c in group]
        print(f"{len(group)} chunks: " + ", ".join(places))
    copies = sum(len(g) for g in groups)
    print(f"{len(groups)} groups of near-duplicate chunks ({copies} chunks, cosine >= {threshold})",
          file=sys.stderr)


def print_warnings(answer: Answer) -> None:
    """The answer's warnings; why it was cut short (its model server failed mid-answer), if it was, as
    the one error line instead."""
    for warning in answer.warnings:
        if warning != answer.interrupted:
            print(f"rag: warning: {warning}", file=sys.stderr)
    if answer.interrupted:
        print(f"rag: error: {answer.interrupted}", file=sys.stderr)


def stream_answer(pieces: Iterable[str | Answer] | Iterator[str | Answer]) -> Answer:
    """Write the answer's text as it is generated, then its warnings and numbered sources."""
    answer = None
    for piece in pieces:
        if isinstance(piece, Answer):
            answer = piece
        else:
            sys.stdout.write(piece)
            sys.stdout.flush()
    print()
    if answer is None:
        raise RuntimeError("the answer stream ended without its Answer")
    print_warnings(answer)
    if answer.dropped_hits:
        print(f"({answer.dropped_hits} retrieved sources did not fit the context window)", file=sys.stderr)
    if answer.citations:
        print("\nSources:")
        for n in answer.citations:
            print(f"  [{n}] {where(answer.hits[n - 1].chunk.metadata)}")
    if answer.unknown_citations:
        print(f"(cited sources that do not exist: {answer.unknown_citations})", file=sys.stderr)
    return answer
