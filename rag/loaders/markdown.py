"""Markdown and MDX: text kept as written (a header-aware chunker needs the ``#`` lines), YAML front
matter lifted into metadata."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from rag.loaders.base import Part, user_metadata
from rag.loaders.text import decode_bytes
from rag.text import FRONT_MATTER

_FENCE = re.compile(r"^\s{0,3}(```|~~~)")
_H1 = re.compile(r"^\s{0,3}#[ \t]+(.+?)[ \t#]*$")


def split_front_matter(text: str) -> tuple[dict[str, Any], str]:
    """``(front matter, body)``; a block that is not a YAML mapping stays in the text untouched."""
    match = FRONT_MATTER.match(text)
    if not match:
        return {}, text
    try:
        data = yaml.safe_load(match.group(1) or "")
    except yaml.YAMLError:
        return {}, text
    if data is None:
        data = {}
    if not isinstance(data, dict):
        return {}, text
    return data, text[match.end() :]


def first_heading(text: str) -> str:
    """The first level-1 ATX heading outside code fences, or ""."""
    in_fence = False
    for line in text.splitlines():
        if _FENCE.match(line):
            in_fence = not in_fence
        elif not in_fence and (match := _H1.match(line)):
            return match.group(1).strip()
    return ""


def load_markdown(path: Path, data: bytes, **_options: object) -> list[Part]:
    front, body = split_front_matter(decode_bytes(data, path))
    metadata = user_metadata(front)
    title = front.get("title")
    metadata["title"] = str(title).strip() if title not in (None, "") else first_heading(body)
    return [Part(body, metadata)]
