"""rag's metadata filter (see ``rag.types``): checked into one canonical form, and answered from a
column table of chunk metadata kept beside a side index, without asking the vector store.

The canonical form is Chroma's own syntax (each mapping holds one field or one operator), so the
Chroma store sends it as it is. ``MetadataTable.matching`` answers it as Chroma does, as measured
against Chroma 1.5 (tests/test_retrieval.py compares the two for every operator):

- a number compares with a number operand in the stored value's own type: a float with the operand
  as a float, an int with the operand cast to an int, truncated toward zero. So 3 == 3.0, but also
  ``{"n": {"$gte": 1.5}}`` keeps n=1 and ``{"n": 1.5}`` matches n=1 (Chroma's way, kept on purpose:
  the answer must be the store's);
- a bool is its own type (True is not 1) and never in a range; a string equals only the same string;
- ``$ne`` and ``$nin`` also keep chunks that lack the field;
- ranges take an int or float operand and match numbers only;
- ``$in`` / ``$nin`` take a non-empty list of one type.

Whatever it cannot answer exactly so it declines with None and the caller asks the store: a field no
chunk has (Chroma has reserved keys), a field holding values Chroma may treat otherwise, operands
Chroma refuses (its error then reaches the user as before), and number operands past 2**62, near
where Chroma's cast to int64 saturates.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from rag.errors import ConfigError
from rag.types import FILTER_OPERATORS

__all__ = ["MetadataTable", "canonical_where"]

SCALARS = (str, bool, int, float)
LIMIT = 2**62  # number operands up to this size are answered here
_OPS = {"$eq": np.equal, "$gt": np.greater, "$gte": np.greater_equal, "$lt": np.less, "$lte": np.less_equal}
_RESERVED = ("$", "#", "chroma:")  # Chroma's own keys (#document, chroma:document) and operators


def canonical_where(where: dict | None) -> dict | None:
    """rag's filter in the canonical form, where a mapping holds exactly one field or operator:
    several fields, or several operators on one field, become an ``$and``. A malformed filter is a
    ConfigError."""
    if not where:
        return None
    if not isinstance(where, dict):
        raise ConfigError(f"retrieval.where: expected a mapping of metadata field -> value, got {where!r}")
    clauses: list[dict[str, Any]] = []
    for key, value in where.items():
        if key in ("$and", "$or"):
            if not isinstance(value, list) or not value or not all(isinstance(v, dict) and v for v in value):
                raise ConfigError(f"retrieval.where: {key} takes a list of filters, got {value!r}")
            parts = [part for v in value if (part := canonical_where(v)) is not None]  # none is empty
            clauses.append(parts[0] if len(parts) == 1 else {key: parts})
        elif key.startswith("$"):
            raise ConfigError(f"retrieval.where: {key!r} is not an operator here; use $and, $or, or a field name")
        elif isinstance(value, dict):
            unknown = [op for op in value if op not in FILTER_OPERATORS]
            if unknown or not value:
                raise ConfigError(f"retrieval.where: {key}: {unknown or value!r} is not an operator; use one "
                                  f"of {', '.join(FILTER_OPERATORS)}")
            clauses.extend({key: {op: operand}} for op, operand in value.items())
        else:
            clauses.append({key: value})
    return clauses[0] if len(clauses) == 1 else {"$and": clauses}


def _scalar(value: Any) -> bool:
    """A value the table keeps and compares: str, bool, int or finite float (exact types only)."""
    return type(value) in SCALARS and (type(value) is not float or math.isfinite(value))


class MetadataTable:
    """Chunk metadata by column: for each field, its distinct values and one code per row (-1: the
    row lacks the field). A filter is worked out once per distinct value, then spread over the rows
    with one array lookup, so it costs about a millisecond at 100k rows.

    ``opaque`` names fields where some row holds a value that is not a plain scalar (none of rag's
    own writes do: the store keeps lists and mappings as JSON text); filters on them are declined.
    """

    def __init__(self, fields: Sequence[str], values: Sequence[Sequence[Any]], codes: np.ndarray,
                 opaque: Sequence[str] = ()):
        self.fields = list(fields)
        self.values = [list(v) for v in values]
        self.codes = codes  # int32, one row per field, one column per chunk row
        self.opaque = frozenset(opaque)
        self._column = {field: i for i, field in enumerate(self.fields)}
        self._lookups: dict[int, dict[tuple[type, Any], int]] = {}
        self._numbers: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = {}

    @property
    def rows(self) -> int:
        return int(self.codes.shape[1])

    @classmethod
    def build(cls, metadatas: Sequence[Mapping[str, Any]]) -> MetadataTable:
        """A table of these rows, in order."""
        empty = cls([], [], np.zeros((0, 0), dtype=np.int32))
        return empty.updated(np.full(len(metadatas), -1, dtype=np.int64), metadatas)

    def updated(self, source: np.ndarray, added: Sequence[Mapping[str, Any]],
                dropped: np.ndarray | None = None) -> MetadataTable:
        """A new table whose row r is this table's row ``source[r]`` where that is >= 0, and the next
        of ``added`` (in order) where it is -1; rows in ``dropped`` (indices) lack every field. Values
        no row uses any more are dropped."""
        source = np.asarray(source, dtype=np.int64)
        fresh = np.flatnonzero(source < 0)
        if len(fresh) != len(added):
            raise ValueError("one added row is needed for each -1 in source")
        fields, values, opaque = list(self.fields), [list(v) for v in self.values], set(self.opaque)
        column = dict(self._column)
        encoders = [{(type(v), v): code for code, v in enumerate(vals)} for vals in values]
        at_field: list[int] = []
        at_row: list[int] = []
        at_code: list[int] = []
        for row, metadata in zip(fresh.tolist(), added, strict=True):
            for key, value in (metadata or {}).items():
                if not _scalar(value):
                    opaque.add(str(key))
                    continue
                f = column.get(key)
                if f is None:
                    f = column[key] = len(fields)
                    fields.append(key)
                    values.append([])
                    encoders.append({})
                code = encoders[f].setdefault((type(value), value), len(values[f]))
                if code == len(values[f]):
                    values[f].append(value)
                at_field.append(f)
                at_row.append(row)
                at_code.append(code)
        codes = np.full((len(fields), len(source)), -1, dtype=np.int32)
        kept = source >= 0
        rows = self.rows
        if len(self.fields) and len(source) >= rows and np.array_equal(source[:rows], np.arange(rows)):
            codes[: len(self.fields), :rows] = self.codes  # rows kept in place (an append): one block copy
            codes[: len(self.fields), rows:][:, kept[rows:]] = self.codes[:, source[rows:][kept[rows:]]]
        elif len(self.fields) and kept.any():
            codes[: len(self.fields), kept] = self.codes[:, source[kept]]
        if at_field:
            codes[np.asarray(at_field), np.asarray(at_row)] = np.asarray(at_code, dtype=np.int32)
        if dropped is not None and len(dropped):
            codes[:, np.asarray(dropped, dtype=np.int64)] = -1
        return MetadataTable(*_compact(fields, values, codes), sorted(opaque))

    # -- answering a filter -------------------------------------------------------------------------

    def matching(self, where: dict) -> np.ndarray | None:
        """The rows a canonical filter keeps (a bool per row), or None when it is not certain to
        answer as the store would (see the module's docstring)."""
        return self._clause(where)

    def _clause(self, clause: Any) -> np.ndarray | None:
        if type(clause) is not dict or len(clause) != 1:
            return None
        ((key, value),) = clause.items()
        if key in ("$and", "$or"):
            if type(value) is not list or len(value) < 2:
                return None
            parts = []
            for part in value:
                mask = self._clause(part)
                if mask is None:
                    return None
                parts.append(mask)
            return np.logical_and.reduce(parts) if key == "$and" else np.logical_or.reduce(parts)
        if type(key) is not str or key.startswith(_RESERVED) or key in self.opaque or key not in self._column:
            return None
        if type(value) is dict:
            if len(value) != 1:
                return None
            ((op, operand),) = value.items()
        else:
            op, operand = "$eq", value
        f = self._column[key]
        hit = self._hit(f, op, operand)
        # hit has one more entry than there are values: the answer for rows lacking the field (-1).
        return None if hit is None else hit[self.codes[f]]

    def _hit(self, f: int, op: str, operand: Any) -> np.ndarray | None:
        """Whether each distinct value of field ``f`` (then: the field missing) passes ``op operand``."""
        if op in ("$eq", "$ne", "$in", "$nin"):
            if op in ("$in", "$nin"):
                if type(operand) is not list or not operand or len({type(x) for x in operand}) != 1:
                    return None
                wanted = operand
            else:
                wanted = [operand]
            hit = np.zeros(len(self.values[f]) + 1, dtype=bool)
            for x in wanted:
                found = self._equal(f, x)
                if found is None:
                    return None
                hit[found] = True
            return ~hit if op in ("$ne", "$nin") else hit
        if op in _OPS:
            if type(operand) not in (int, float) or not _scalar(operand) or abs(operand) > LIMIT:
                return None
            return self._compare(f, op, operand)
        return None

    def _equal(self, f: int, x: Any) -> np.ndarray | list[int] | None:
        """The codes of field ``f``'s values equal to ``x`` as Chroma compares them."""
        if not _scalar(x):
            return None
        if type(x) in (int, float):
            if abs(x) > LIMIT:
                return None
            return np.flatnonzero(self._compare(f, "$eq", x))
        lookup = self._lookups.get(f)
        if lookup is None:
            lookup = self._lookups[f] = {(type(v), v): code for code, v in enumerate(self.values[f])}
        code = lookup.get((type(x), x))
        return [] if code is None else [code]

    def _compare(self, f: int, op: str, x: int | float) -> np.ndarray:
        """Whether each value of field ``f`` (then: the field missing) is ``op x``: ints against x cast
        to an int (truncated toward zero), floats against x as a float, nothing else at all."""
        int_codes, ints, float_codes, floats = self._numeric(f)
        compare = _OPS[op]
        hit = np.zeros(len(self.values[f]) + 1, dtype=bool)
        hit[int_codes] = compare(ints, x if type(x) is int else math.trunc(x))
        hit[float_codes] = compare(floats, float(x))
        return hit

    def _numeric(self, f: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Field ``f``'s ints (codes, values as int64) and floats (codes, values); a bool is neither."""
        cached = self._numbers.get(f)
        if cached is None:
            values = self.values[f]
            int_codes = [code for code, v in enumerate(values) if type(v) is int]
            float_codes = [code for code, v in enumerate(values) if type(v) is float]
            cached = self._numbers[f] = (
                np.asarray(int_codes, dtype=np.int64), np.asarray([values[c] for c in int_codes], dtype=np.int64),
                np.asarray(float_codes, dtype=np.int64), np.asarray([values[c] for c in float_codes], dtype=np.float64),
            )
        return cached

    # -- persistence --------------------------------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        """Everything but the codes, as JSON."""
        return {"fields": self.fields, "values": self.values, "opaque": sorted(self.opaque)}

    @classmethod
    def restore(cls, described: Any, codes: np.ndarray, rows: int) -> MetadataTable:
        """The table ``describe`` and ``codes`` were saved from; ValueError unless they form one
        table of ``rows`` rows."""
        ok = isinstance(described, dict) and {"fields", "values", "opaque"} <= described.keys()
        fields, values, opaque = (described.get(k) for k in ("fields", "values", "opaque")) if ok else ([], [], [])
        ok = (
            ok
            and isinstance(fields, list) and all(type(f) is str for f in fields) and len(set(fields)) == len(fields)
            and isinstance(values, list) and len(values) == len(fields)
            and all(isinstance(v, list) and all(_scalar(x) for x in v) for v in values)
            and isinstance(opaque, list) and all(type(f) is str for f in opaque)
            and isinstance(codes, np.ndarray) and codes.dtype == np.int32 and codes.shape == (len(fields), rows)
        )
        if ok and codes.size:
            ok = bool(codes.min() >= -1) and all(len(codes[f]) == 0 or codes[f].max() < len(values[f])
                                                  for f in range(len(fields)))
        if not ok:
            raise ValueError("inconsistent metadata table")
        return cls(fields, values, codes, opaque)


def _compact(fields: list[str], values: list[list[Any]], codes: np.ndarray) -> tuple[list, list, np.ndarray]:
    """Drop values no row uses (and fields left with none), renumbering the codes."""
    keep_fields = []
    for f in range(len(fields)):
        column = codes[f]
        used = np.zeros(len(values[f]) + 1, dtype=bool)
        used[column] = True  # -1 marks the extra last slot, which is ignored
        used = used[:-1]
        if not used.any():
            continue
        if not used.all():
            renumber = np.cumsum(used, dtype=np.int32) - 1
            codes[f] = np.where(column >= 0, renumber[column], -1)
            values[f] = [v for v, u in zip(values[f], used.tolist(), strict=True) if u]
        keep_fields.append(f)
    if len(keep_fields) == len(fields):
        return fields, values, codes
    return [fields[f] for f in keep_fields], [values[f] for f in keep_fields], codes[keep_fields]
