"""Records: CSV (one document, each row as ``column: value`` lines) and JSON / JSON Lines (one
document per record, the text field as text and the other fields as metadata)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from rag.errors import LoadError
from rag.loaders.base import Part, rows_as_records, user_metadata
from rag.loaders.text import decode_bytes
from rag.text import one_line

_DELIMITERS = ",;\t|"
_SNIFF_SAMPLE = 64 * 1024


# --- CSV ------------------------------------------------------------------------------------------


def sniff_dialect(sample: str) -> type[csv.Dialect] | csv.Dialect:
    """The sample's dialect, or plain comma-separated when the sniffer cannot tell (one column)."""
    try:
        return csv.Sniffer().sniff(sample, delimiters=_DELIMITERS)
    except Exception:  # csv.Error, and the odd regex failure on strange samples
        return csv.excel


def load_csv(path: Path, data: bytes, **_options: object) -> list[Part]:
    text = decode_bytes(data, path)
    # Cut the sample at a line end: a half line can make the sniffer see a different delimiter.
    sample = text[:_SNIFF_SAMPLE]
    if len(text) > _SNIFF_SAMPLE and "\n" in sample:
        sample = sample[: sample.rindex("\n")]
    dialect = sniff_dialect(sample)
    try:
        rows = [row for row in csv.reader(io.StringIO(text), dialect) if any(cell.strip() for cell in row)]
    except csv.Error as exc:
        raise LoadError(path, f"cannot parse CSV: {one_line(exc)}") from exc
    if not rows:
        raise LoadError(path, "empty file")
    metadata = {"title": "", "rows": len(rows) - 1, "columns": len(rows[0]), "delimiter": dialect.delimiter}
    return [Part(rows_as_records(rows), metadata)]


# --- JSON -----------------------------------------------------------------------------------------


def _field(record: dict[str, Any], name: str) -> Any:
    """``record[name]``, or the dotted path ``a.b`` into nested objects."""
    if name in record:
        return record[name]
    value: Any = record
    for key in name.split("."):
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return value


def _record_part(record: Any, text_field: str, part: int | None, extra: dict[str, Any]) -> Part | None:
    """A part for one record, or None when it has no usable text field."""
    if not isinstance(record, dict):
        return None
    value = _field(record, text_field)
    if isinstance(value, bool) or not isinstance(value, str | int | float) or not str(value).strip():
        return None
    # The field holding the text is not repeated as metadata (for "a.b", the whole of "a").
    text_key = text_field if text_field in record else text_field.split(".", maxsplit=1)[0]
    metadata = user_metadata({key: val for key, val in record.items() if key != text_key})
    # Every document has a text title; a record's own "title" of another type is kept as its JSON.
    title = metadata.get("title", "")
    if title is None:
        title = ""
    elif not isinstance(title, str):
        title = json.dumps(title, default=str, ensure_ascii=False)
    metadata["title"] = title
    return Part(str(value), {**metadata, **extra}, part=part)


def _no_field_error(path: Path, records: list[Any], text_field: str) -> LoadError:
    keys = sorted({str(k) for r in records if isinstance(r, dict) for k in r})
    shown = ", ".join(keys[:20]) + (", ..." if len(keys) > 20 else "")
    found = f"keys found: {shown}" if keys else "no JSON objects found"
    return LoadError(path, f"no record has the text field '{text_field}' ({found}); set loading.json_text_field")


def load_json(path: Path, data: bytes, *, json_text_field: str = "text", **_options: object) -> list[Part]:
    text = decode_bytes(data, path)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise LoadError(path, f"invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}") from exc
    if isinstance(data, list):
        records = data
        parts = [
            _record_part(record, json_text_field, index, {"index": index}) for index, record in enumerate(data)
        ]
    else:
        records = [data]
        parts = [_record_part(data, json_text_field, None, {})]
    found = [part for part in parts if part is not None]
    if not found:
        raise _no_field_error(path, records, json_text_field)
    return found


def load_jsonl(path: Path, data: bytes, *, json_text_field: str = "text", **_options: object) -> list[Part]:
    records, parts = [], []
    for number, line in enumerate(decode_bytes(data, path).split("\n"), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise LoadError(path, f"invalid JSON on line {number}, column {exc.colno}: {exc.msg}") from exc
        records.append(record)
        part = _record_part(record, json_text_field, number, {"line": number})
        if part is not None:
            parts.append(part)
    if not parts:
        raise _no_field_error(path, records, json_text_field)
    return parts
