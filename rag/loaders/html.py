"""HTML: the visible text only, with block structure kept as lines (headings as ``#``, list items as
``-``, tables as Markdown rows ``| a | b |``) so the chunker can still see the document's shape.

The tree is walked with an explicit stack, not recursion: pathologically nested pages (thousands
of levels) must not raise RecursionError.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from bs4 import BeautifulSoup, NavigableString, Tag
from bs4.element import PreformattedString

from rag.loaders.base import Part
from rag.loaders.text import decode_with_encoding

# Chrome, scripts and invisible parts of a page: never the content a reader came for.
_DROP = frozenset([
    "script", "style", "noscript", "nav", "aside", "form", "template", "svg", "head", "iframe", "object", "canvas"
])
# <header>/<footer> are page chrome (banner, contentinfo) only outside these; inside an article they
# hold its title and byline, which are content.
_SECTIONING = frozenset(["main", "article", "section"])
_BLOCK = frozenset(
    [
        "address", "article", "blockquote", "body", "caption", "center", "dd", "details", "dialog", "div", "dl",
        "dt", "fieldset", "figcaption", "figure", "footer", "header", "hr", "html", "legend", "main", "p",
        "section", "summary", "tbody", "tfoot", "thead"
    ]
)
_PARAGRAPH = frozenset(["p", "blockquote", "figure", "table", "pre", "dl"])
_HEADINGS = {f"h{level}": level for level in range(1, 7)}
_HIDDEN_STYLE = re.compile(r"display\s*:\s*none|visibility\s*:\s*hidden", re.IGNORECASE)
_SPACES = re.compile(r"\s+")


class _Writer:
    """Collects output lines; inline text is whitespace-collapsed, <pre> text kept as is."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.buffer: list[str] = []
        self.marker = ""  # "# " or "- " waiting for the line's first text: empty items leave no line

    def start(self, marker: str) -> None:
        self.end_line()
        self.marker = marker

    def _open(self) -> None:
        if self.marker:
            self.buffer.append(self.marker)
            self.marker = ""

    def inline(self, text: str) -> None:
        text = _SPACES.sub(" ", text)
        if not self.buffer or self.buffer[-1].endswith(" "):
            text = text.lstrip(" ")
        if text.strip():
            self._open()
        if text:
            self.buffer.append(text)

    def raw(self, text: str) -> None:
        self._open()
        first, *rest = text.split("\n")
        self.buffer.append(first)
        for line in rest:
            self.lines.append("".join(self.buffer).rstrip())
            self.buffer = [line]

    def end_line(self) -> None:
        line = "".join(self.buffer).rstrip()
        self.buffer, self.marker = [], ""
        if line.strip():
            self.lines.append(line)

    def blank_line(self) -> None:
        self.end_line()
        if self.lines and self.lines[-1] != "":
            self.lines.append("")

    def text(self) -> str:
        self.end_line()
        return re.sub(r"\n{3,}", "\n\n", "\n".join(self.lines)).strip()


def _hidden(tag: Tag, in_section: bool) -> bool:
    return (
        tag.name in _DROP
        or (tag.name in ("header", "footer") and not in_section)
        or tag.has_attr("hidden")
        or str(tag.get("aria-hidden", "")).lower() == "true"
        or bool(_HIDDEN_STYLE.search(str(tag.get("style", ""))))
    )


def html_to_text(soup: BeautifulSoup) -> str:
    """Render the visible text of a parsed page as lines."""
    return _Walk(soup).text()


class _Walk:
    """One walk over a page: the lines written so far and what is open around the current tag."""

    def __init__(self, soup: BeautifulSoup) -> None:
        self.soup = soup
        self.out = _Writer()
        self.lists: list[list] = []  # [kind, counter] per open <ul>/<ol>
        self.rows: list[int] = []  # cells seen so far in each open <tr>
        self.tables: list[int] = []  # rows seen so far in each open <table>: the first is the Markdown header
        self.pre_depth = 0
        self.cell_depth = 0  # inside a table cell, block breaks become spaces to keep the row on one line
        self.section_depth = 0
        self.tags: dict[str, Callable[[Tag, bool], None]] = {
            **dict.fromkeys(_HEADINGS, self._heading), "ul": self._list, "ol": self._list, "li": self._item,
            "tr": self._row, "td": self._cell, "th": self._cell, "pre": self._pre, "table": self._table,
        }

    def text(self) -> str:
        stack: list[tuple[object, bool]] = [(self.soup, False)]
        while stack:
            node, closing = stack.pop()
            if isinstance(node, NavigableString):
                if not isinstance(node, PreformattedString):  # comments, doctype, CDATA
                    (self.out.raw if self.pre_depth else self.out.inline)(str(node))
                continue
            if not isinstance(node, Tag):
                continue
            if not closing:
                if node is not self.soup and _hidden(node, self.section_depth > 0):
                    continue
                stack.append((node, True))
                stack.extend((child, False) for child in reversed(node.contents))
            self._tag(node, closing)
        return self.out.text()

    def _tag(self, node: Tag, closing: bool) -> None:
        name = node.name
        if name in _SECTIONING:
            self.section_depth += -1 if closing else 1
        if self.cell_depth and name not in ("td", "th"):
            self._inside_cell(node, closing)
        elif name in self.tags:
            self.tags[name](node, closing)
        elif name in _PARAGRAPH:
            self.out.blank_line()
        elif name in _BLOCK or name == "br":
            self.out.end_line()
        else:
            self._image(node, closing)

    def _inside_cell(self, node: Tag, closing: bool) -> None:
        name = node.name
        if name in _BLOCK or name in _HEADINGS or name in ("br", "li", "tr", "table", "pre", "ul", "ol"):
            self.out.inline(" ")
        self._image(node, closing)
        if name == "pre":
            self.pre_depth += -1 if closing else 1

    def _image(self, node: Tag, closing: bool) -> None:
        if node.name == "img" and not closing and node.get("alt"):
            self.out.inline(f" {node['alt']} ")

    def _heading(self, node: Tag, closing: bool) -> None:
        self.out.blank_line()
        if not closing:
            self.out.start("#" * _HEADINGS[node.name] + " ")

    def _list(self, node: Tag, closing: bool) -> None:
        self.out.end_line()
        if closing:
            if self.lists:
                self.lists.pop()
        else:
            start = str(node.get("start", "1"))
            self.lists.append([node.name, int(start) - 1 if start.lstrip("-").isdigit() else 0])

    def _item(self, _: Tag, closing: bool) -> None:
        self.out.end_line()
        if closing:
            return
        indent = "  " * max(len(self.lists) - 1, 0)
        if self.lists and self.lists[-1][0] == "ol":
            self.lists[-1][1] += 1
            self.out.start(f"{indent}{self.lists[-1][1]}. ")
        else:
            self.out.start(f"{indent}- ")

    def _row(self, _: Tag, closing: bool) -> None:
        if not closing:
            self.out.end_line()
            self.rows.append(0)
            return
        if not self.rows:
            self.out.end_line()
            return
        cells = self.rows.pop()
        if not cells:
            return
        self.out.inline(" |")
        self.out.end_line()
        if self.tables:
            if self.tables[-1] == 0:  # after the first row: the header's separator
                self.out.lines.append("|" + " --- |" * cells)
            self.tables[-1] += 1

    def _cell(self, _: Tag, closing: bool) -> None:
        if closing:
            self.cell_depth -= 1
            self.out.inline(" ")
            return
        if self.cell_depth:  # a table inside a cell is flattened into it: no pipes in a Markdown cell
            self.out.inline(" ")
        elif self.rows:
            self.out.inline(" | " if self.rows[-1] else "| ")
            self.rows[-1] += 1
        self.cell_depth += 1

    def _pre(self, _: Tag, closing: bool) -> None:
        self.out.blank_line()
        self.pre_depth += -1 if closing else 1

    def _table(self, _: Tag, closing: bool) -> None:
        self.out.blank_line()
        if closing:
            if self.tables:
                self.tables.pop()
        else:
            self.tables.append(0)


def html_title(soup: BeautifulSoup) -> str:
    """<title>, or the first <h1> when the page has none."""
    for tag in (soup.find("title"), soup.find("h1")):
        if isinstance(tag, Tag):
            title = " ".join(tag.get_text(" ").split())
            if title:
                return title
    return ""


def load_html(path: Path, data: bytes, **_options: object) -> list[Part]:
    text, encoding = decode_with_encoding(data, path)  # refuses empty and binary files
    # A legacy-encoding guess is only a guess: give BeautifulSoup the bytes so <meta charset> wins.
    markup: str | bytes = text if encoding.startswith("utf") else data
    soup = BeautifulSoup(markup, "lxml")
    try:
        body = html_to_text(soup)
    except RecursionError:
        body = "\n".join(line.strip() for line in soup.get_text("\n").splitlines() if line.strip())
    return [Part(body, {"title": html_title(soup)})]
