"""Text conventions every stage and front end shares: where front matter ends, and how a message is
written (one line, printable, on stderr). Imports nothing of the project, so any module may use it."""

from __future__ import annotations

import re
import sys

# A YAML front-matter block at the very start of a text: "---", the YAML (possibly empty), then
# "---" or "..." on a line of its own; Unix or Windows line ends.
FRONT_MATTER = re.compile(r"\A---[ \t]*\r?\n(.*?\r?\n)?(?:---|\.\.\.)[ \t]*(?:\r?\n|\Z)", re.DOTALL)


def one_line(text: object, limit: int | None = 200) -> str:
    """Any text (a library's error message, a cell) squeezed onto one line, cut to ``limit`` characters."""
    line = " ".join(str(text).split())
    return line if limit is None or len(line) <= limit else line[: limit - 3] + "..."


def printable(text: str) -> str:
    """A file name fit for a one-line message: newlines and other control characters escaped."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def log(message: str) -> None:
    """Messages go to stderr so that stdout stays clean for --json."""
    print(message, file=sys.stderr, flush=True)


def note(message: str) -> None:
    """How something was settled or assumed, for the person running rag: one line on stderr."""
    log(f"rag: note: {message}")
