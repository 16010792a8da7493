"""What every format loader shares: the part record, deterministic ids, table rendering."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

# Keys that load_file owns; a loader (front matter, a JSON record) that brings one of these keeps it
# under "meta_<key>" instead of silently overwriting the file's identity.
RESERVED_KEYS = frozenset({"source", "format", "content_hash"})


@dataclass
class Part:
    """One unit a loader found in a file: the whole file, a page, a slide, a sheet or a record.

    ``part`` is None for single-document formats and the page/slide/line/index number otherwise;
    it goes into the document id so every part of a file has its own stable id.
    """

    text: str
    metadata: dict[str, Any] = field(default_factory=dict)
    part: int | None = None


def document_id(source: str, part: int | None = None) -> str:
    """A stable id for a file (or one part of it), so re-ingesting the same file is a no-op."""
    return hashlib.sha256(f"{source}#{part}".encode()).hexdigest()[:32]


def content_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def user_metadata(fields: dict[Any, Any]) -> dict[str, Any]:
    """Fields that come from the file's content (front matter, JSON records), reserved keys moved aside."""
    return {(f"meta_{key}" if str(key) in RESERVED_KEYS else str(key)): value for key, value in fields.items()}


def rows_as_records(rows: list[list[str]]) -> str:
    """Render a table (first row = header) as ``column: value`` lines, one blank line between rows.

    Missing header names become ``column_N``; cells past the header get ``column_N`` too; empty
    cells are left out. Shared by CSV and Excel so both read the same to the retriever.
    """
    header, *body = rows
    names = [name.strip() or f"column_{i}" for i, name in enumerate(header, start=1)]
    records = []
    for row in body:
        lines = [
            f"{names[i] if i < len(names) else f'column_{i + 1}'}: {value.strip()}"
            for i, value in enumerate(row)
            if value.strip()
        ]
        if lines:
            records.append("\n".join(lines))
    if not records:  # a header and nothing else is still the file's text
        return " | ".join(name for name in header if name.strip())
    return "\n\n".join(records)


def markdown_table(rows: list[list[str]]) -> str:
    """A table as Markdown, one row a line and the first row as header, so that a row's cells stay
    together through chunking and the chunker can tell a table's header from its rows."""
    width = max(len(row) for row in rows)
    lines = []
    for number, row in enumerate(rows):
        cells = [" ".join(cell.split()).replace("|", "\\|") for cell in row] + [""] * (width - len(row))
        lines.append("| " + " | ".join(cells) + " |")
        if number == 0:
            lines.append("|" + " --- |" * width)
    return "\n".join(lines)


def table_text(rows: list[list[str]]) -> str:
    """A table found in a document: Markdown when it has a header and rows over two or more columns;
    a one-column or one-row "table" (a box drawn around a note) as its lines."""
    rows = [row for row in rows if any(cell.strip() for cell in row)]
    if len(rows) >= 2 and max(len(row) for row in rows) >= 2:
        return markdown_table(rows)
    return "\n".join(" | ".join(cell for cell in row if cell.strip()) for row in rows)
