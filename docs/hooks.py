"""MkDocs hooks: the reference pages that are generated from the code, so they cannot drift from it.

A page holds a marker comment where the generated part goes:
- ``<!-- generated: configuration -->``: every configuration key, its default and its documentation
  (the settings' attribute docstrings, rag.config.documented_keys);
- ``<!-- generated: cli -->``: every `rag` command's --help text (rag.cli.build_parser);
- ``<!-- include: PATH -->``: a file of the repository (CONTRIBUTING.md, CHANGELOG.md), included whole.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def _configuration() -> str:
    from rag.config import documented_keys

    lines: list[str] = []
    for key, default, doc, section in documented_keys():
        if section:
            level = "##" if "." not in key else "###"
            lines += ["", f"{level} `{key}`", "", doc, "", "| key | default | what it does |", "| --- | --- | --- |"]
        else:
            shown = json.dumps(default, ensure_ascii=False) if not isinstance(default, str) else default
            doc_cell = doc.replace("|", "\\|")
            lines.append(f"| `{key}` | `{shown}` | {doc_cell} |")
    return "\n".join(lines)


def _cli() -> str:
    from rag.cli import build_parser

    parser = build_parser()
    blocks = ["```text", parser.format_help().rstrip(), "```"]

    def walk(action_parser: argparse.ArgumentParser, prefix: str) -> None:
        for action in action_parser._actions:  # argparse keeps its subcommands here and nowhere public
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    blocks.extend(["", f"## `{prefix} {name}`", "", "```text", sub.format_help().rstrip(), "```"])
                    walk(sub, f"{prefix} {name}")

    walk(parser, "rag")
    return "\n".join(blocks)


def _include(match: re.Match[str]) -> str:
    return (ROOT / match.group(1).strip()).read_text(encoding="utf-8")


def on_page_markdown(markdown: str, **_: Any) -> str:
    if "<!-- generated: configuration -->" in markdown:
        markdown = markdown.replace("<!-- generated: configuration -->", _configuration())
    if "<!-- generated: cli -->" in markdown:
        markdown = markdown.replace("<!-- generated: cli -->", _cli())
    return re.sub(r"<!-- include: (.+?) -->", _include, markdown)
