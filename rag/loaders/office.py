"""Office Open XML: Word (.docx), PowerPoint (.pptx, one part per slide), Excel (.xlsx, one part per
sheet). All three are zip packages; a file that is not one is refused up front with a clear reason
instead of a library's internal error.
"""

from __future__ import annotations

import datetime as dt
import io
import posixpath
import re
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

from rag.errors import LoadError
from rag.loaders.base import Part, rows_as_records, table_text
from rag.text import one_line

_W = "{http://schemas.openxmlformats.org/wordprocessingml/2006/main}"
_M = "{http://schemas.openxmlformats.org/officeDocument/2006/math}"
_A = "{http://schemas.openxmlformats.org/drawingml/2006/main}"
_MC_FALLBACK = "{http://schemas.openxmlformats.org/markup-compatibility/2006}Fallback"
_HEADING = re.compile(r"heading\s*(\d)", re.IGNORECASE)


def _require_zip(path: Path, data: bytes, kind: str) -> None:
    if not zipfile.is_zipfile(io.BytesIO(data)):
        raise LoadError(path, f"not a valid {kind} file (not a zip package); re-save it from the office application")


# --- Word ---------------------------------------------------------------------------------------


# Parts of an equation (OMML) that start a new operand: a space keeps "πr²" from reading "πr2".
_MATH_OPERANDS = tuple(f"{_M}{name}" for name in ["e", "sup", "sub", "num", "den", "deg", "lim", "fName"])


def _paragraph_text(p: Any) -> str:
    """Text of a <w:p>: runs, hyperlinks, fields and equation (OMML) text; not deleted text, and not
    the VML fallback copies that would duplicate text boxes."""
    skip = {id(el) for fb in p.iter(_MC_FALLBACK) for el in fb.iter()}
    pieces = []
    for el in p.iter(f"{_W}t", f"{_M}t", f"{_W}tab", f"{_W}br", f"{_W}cr", *_MATH_OPERANDS):
        if id(el) in skip:
            continue
        if el.tag in (f"{_W}t", f"{_M}t"):
            pieces.append(el.text or "")
        elif el.tag == f"{_W}tab":
            pieces.append("\t")
        elif el.tag in _MATH_OPERANDS:
            pieces.append(" ")
        else:
            pieces.append("\n")
    return re.sub(r" {2,}", " ", "".join(pieces)).strip()


def _block_children(element: Any) -> Iterator[Any]:
    """Children of a body/cell/row, looking through content controls (<w:sdt>)."""
    for child in element:
        if child.tag == f"{_W}sdt":
            content = child.find(f"{_W}sdtContent")
            if content is not None:
                yield from _block_children(content)
        else:
            yield child


def _cell_text(tc: Any) -> str:
    texts = []
    for child in _block_children(tc):
        if child.tag == f"{_W}p":
            texts.append(_paragraph_text(child))
        elif child.tag == f"{_W}tbl":  # a nested table is flattened into its cell
            texts.extend(" ".join(row) for row in _table_rows(child))
    return one_line(" ".join(texts), limit=None)


def _table_rows(tbl: Any) -> list[list[str]]:
    """Cell texts per row. A merged cell is one <w:tc> (horizontal span) or a first <w:tc> followed by
    empty 'continue' cells (vertical span), so reading <w:tc> elements gives every merged cell once."""
    rows = []
    for tr in _block_children(tbl):
        if tr.tag != f"{_W}tr":
            continue
        cells = []
        for tc in _block_children(tr):
            if tc.tag != f"{_W}tc":
                continue
            vmerge = tc.find(f"{_W}tcPr/{_W}vMerge")
            merged_below = vmerge is not None and vmerge.get(f"{_W}val", "continue") == "continue"
            cells.append("" if merged_below else _cell_text(tc))
            span = tc.find(f"{_W}tcPr/{_W}gridSpan")
            cells.extend([""] * (_int(span.get(f"{_W}val") if span is not None else "1", 1) - 1))  # keep columns
        if any(cells):
            rows.append(cells)
    return rows


class _ListNumbers:
    """Markers for list paragraphs: "- " for bullets, "1. ", "2. " for numbered levels, as Word
    numbers them (numbering.xml gives each list level a format and a start value)."""

    def __init__(self, doc: Any) -> None:
        self.levels: dict[tuple[str, int], tuple[str, int]] = {}
        self.counters: dict[tuple[str, int], int] = {}
        try:
            numbering = doc.part.numbering_part.element
        except Exception:  # no numbering part: every list is a bullet list
            return
        abstract = {}
        for definition in numbering.iter(f"{_W}abstractNum"):
            levels = {}
            for lvl in definition.iter(f"{_W}lvl"):
                fmt, start = lvl.find(f"{_W}numFmt"), lvl.find(f"{_W}start")
                levels[_int(lvl.get(f"{_W}ilvl"))] = (
                    fmt.get(f"{_W}val", "bullet") if fmt is not None else "bullet",
                    _int(start.get(f"{_W}val") if start is not None else "1", 1),
                )
            abstract[definition.get(f"{_W}abstractNumId")] = levels
        for num in numbering.iter(f"{_W}num"):
            ref = num.find(f"{_W}abstractNumId")
            for level, spec in abstract.get(ref.get(f"{_W}val") if ref is not None else None, {}).items():
                self.levels[(str(num.get(f"{_W}numId") or ""), level)] = spec

    def marker(self, p: Any, style_name: str) -> str | None:
        """The indented list marker of a paragraph, or None when it is not a list item."""
        num = p.find(f"{_W}pPr/{_W}numPr")
        if num is None:
            return "- " if style_name.lower().startswith("list") else None
        num_el = num.find(f"{_W}numId")
        num_id = str(num_el.get(f"{_W}val") or "") if num_el is not None else ""
        level_el = num.find(f"{_W}ilvl")
        level = _int(level_el.get(f"{_W}val") if level_el is not None else "0")
        if num_id == "0":  # numbering explicitly switched off
            return None
        fmt, start = self.levels.get((num_id, level), ("bullet", 1))
        for key in [k for k in self.counters if k[0] == num_id and k[1] > level]:
            del self.counters[key]  # a new parent item restarts its sub-list
        indent = "  " * level
        if fmt in ("bullet", "none"):
            return f"{indent}- "
        number = self.counters.get((num_id, level), start - 1) + 1
        self.counters[(num_id, level)] = number
        return f"{indent}{number}. "


def _int(value: str | None, default: int = 0) -> int:
    return int(value) if value and value.isdigit() else default


def load_docx(path: Path, data: bytes, **_options: object) -> list[Part]:
    from docx import Document as open_docx
    from docx.text.paragraph import Paragraph

    _require_zip(path, data, ".docx")
    doc = open_docx(io.BytesIO(data))
    blocks: list[tuple[str, bool]] = []  # (text, is a list item): list items are not split by blank lines
    first_heading = ""
    lists = _ListNumbers(doc)
    for element in _block_children(doc.element.body):
        if element.tag == f"{_W}tbl":
            table = table_text(_table_rows(element))
            if table:
                blocks.append((table, False))
            continue
        if element.tag != f"{_W}p":
            continue
        text = _paragraph_text(element)
        if not text:
            continue
        style = Paragraph(element, doc).style
        style_name = (style.name or "") if style is not None else ""
        heading = _HEADING.fullmatch(style_name.strip())
        level = 1 if style_name == "Title" else min(int(heading.group(1)), 6) if heading else 0
        if level:
            first_heading = first_heading or (one_line(text, limit=None) if level == 1 else "")
            blocks.append((f"{'#' * level} {one_line(text, limit=None)}", False))
            continue
        marker = lists.marker(element, style_name)
        blocks.append((text, False) if marker is None else (marker + text, True))
    text = "".join(
        ("" if i == 0 else "\n" if item and blocks[i - 1][1] else "\n\n") + block
        for i, (block, item) in enumerate(blocks)
    )
    title = (doc.core_properties.title or "").strip() or first_heading
    return [Part(text, {"title": title})]


# --- PowerPoint -----------------------------------------------------------------------------------


def _shape_lines(shapes: Any) -> Iterator[tuple[str, bool]]:
    """``(text, is_title)`` for every text frame and table of a slide, groups included, in slide order."""
    from pptx.enum.shapes import PP_PLACEHOLDER
    from pptx.shapes.group import GroupShape

    title_types = {PP_PLACEHOLDER.TITLE, PP_PLACEHOLDER.CENTER_TITLE}
    for shape in shapes:
        if isinstance(shape, GroupShape):
            yield from _shape_lines(shape.shapes)
        elif getattr(shape, "has_table", False) and shape.has_table:
            # a merged cell's text once, its spanned cells empty
            table = table_text([["" if cell.is_spanned else one_line(cell.text, limit=None) for cell in row.cells]
                                for row in shape.table.rows])
            if table:
                yield table, False
        elif shape.has_text_frame:
            is_title = shape.is_placeholder and shape.placeholder_format.type in title_types
            paragraphs = []
            numbers: dict[int, int] = {}  # auto-numbered paragraphs: the current number per level
            for paragraph in shape.text_frame.paragraphs:
                text = one_line(paragraph.text.replace("\x0b", " "), limit=None)
                if not text:
                    continue
                if not is_title:
                    text = "  " * paragraph.level + _bullet(paragraph, numbers) + text
                paragraphs.append(text)
            if paragraphs:
                yield "\n".join(paragraphs), is_title


def _bullet(paragraph: Any, numbers: dict[int, int]) -> str:
    """The paragraph's own bullet ("- ") or auto-number ("1. "); bullets inherited from the slide
    layout are not visible here, so such paragraphs get none."""
    props = paragraph._p.pPr
    auto = props.find(f"{_A}buAutoNum") if props is not None else None
    level = paragraph.level
    if auto is None:
        numbers.pop(level, None)
        has_char = props is not None and props.find(f"{_A}buChar") is not None
        return "- " if has_char else ""
    numbers[level] = numbers.get(level, _int(auto.get("startAt"), 1) - 1) + 1
    return f"{numbers[level]}. "


def load_pptx(path: Path, data: bytes, **_options: object) -> list[Part]:
    from pptx import Presentation

    _require_zip(path, data, ".pptx")
    presentation = Presentation(io.BytesIO(data))
    title = (presentation.core_properties.title or "").strip()
    parts = []
    for number, slide in enumerate(presentation.slides, start=1):
        blocks, slide_title = [], ""
        for line, is_title in _shape_lines(slide.shapes):
            if is_title:
                slide_title = slide_title or one_line(line, limit=None)
            blocks.append(f"# {one_line(line, limit=None)}" if is_title else line)
        if slide.has_notes_slide and slide.notes_slide.notes_text_frame is not None:
            notes = slide.notes_slide.notes_text_frame.text.strip()
            if notes:
                blocks.append(f"Notes: {notes}")
        text = "\n\n".join(blocks)
        if text.strip():
            title = title or slide_title
            parts.append(Part(text, {"page": number, "slide_title": slide_title}, part=number))
    for part in parts:
        part.metadata["title"] = title
    return parts


# --- Excel ----------------------------------------------------------------------------------------


def _cell_value(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, dt.datetime) and value.time() == dt.time(0):
        return value.date().isoformat()
    if isinstance(value, dt.date | dt.time):
        return value.isoformat()
    return one_line(str(value), limit=None)


_REL = "{http://schemas.openxmlformats.org/officeDocument/2006/relationships}id"
_C = "{http://schemas.openxmlformats.org/drawingml/2006/chart}"
_MAIN = "{http://schemas.openxmlformats.org/spreadsheetml/2006/main}"


def _relations(package: zipfile.ZipFile, part: str) -> dict[str, tuple[str, str]]:
    """``{rId: (type, target part)}`` from a part's .rels file."""
    folder, name = posixpath.split(part)
    try:
        root = ElementTree.fromstring(package.read(posixpath.join(folder, "_rels", name + ".rels")))
    except KeyError:
        return {}
    relations = {}
    for rel in root:
        target = rel.get("Target", "")
        target = target.lstrip("/") if target.startswith("/") else posixpath.normpath(posixpath.join(folder, target))
        relations[rel.get("Id", "")] = (rel.get("Type", "").rsplit("/", 1)[-1], target)
    return relations


def _chart_line(chart: ElementTree.Element) -> str:
    """'Line chart: <title> (series: a, b)' - what a reader of the sheet sees of a chart."""
    title = "".join(t.text or "" for t in chart.iterfind(f"{_C}chart/{_C}title//{_A}t")).strip()
    kinds = [
        el.tag.removeprefix(_C).removesuffix("Chart")
        for el in chart.iterfind(f"{_C}chart/{_C}plotArea/*")
        if el.tag.endswith("Chart")
    ]
    series = [v.text or "" for v in chart.iterfind(f".//{_C}ser/{_C}tx//{_C}v")]
    kind = " and ".join(kinds) or "a"
    line = f"{kind[0].upper()}{kind[1:]} chart"
    if title:
        line += f": {title}"
    return line + (f" (series: {', '.join(series)})" if series else "")


def _charts_by_sheet(data: bytes) -> dict[str, list[str]]:
    """Chart descriptions per sheet name, read from the package (openpyxl's read-only mode skips
    charts). Charts are extra: anything unexpected here gives no charts, never a failed file."""
    charts: dict[str, list[str]] = {}
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as package:
            workbook_rels = _relations(package, "xl/workbook.xml")
            workbook = ElementTree.fromstring(package.read("xl/workbook.xml"))
            for sheet in workbook.iterfind(f"{_MAIN}sheets/{_MAIN}sheet"):
                sheet_part = workbook_rels.get(sheet.get(_REL, ""), ("", ""))[1]
                for rel_type, drawing in _relations(package, sheet_part).values():
                    if rel_type != "drawing":
                        continue
                    for chart_type, chart in _relations(package, drawing).values():
                        if chart_type == "chart":
                            line = _chart_line(ElementTree.fromstring(package.read(chart)))
                            charts.setdefault(sheet.get("name", ""), []).append(line)
    except Exception:
        return {}
    return charts


def load_xlsx(path: Path, data: bytes, **_options: object) -> list[Part]:
    from openpyxl import load_workbook

    _require_zip(path, data, ".xlsx")
    charts = _charts_by_sheet(data)
    workbook = load_workbook(io.BytesIO(data), read_only=True, data_only=True)
    try:
        title = (workbook.properties.title or "").strip()
        parts = []
        for number, sheet in enumerate(workbook.worksheets, start=1):
            rows = [[_cell_value(v) for v in row] for row in sheet.iter_rows(values_only=True)]
            rows = [row for row in rows if any(row)]
            if not rows:
                continue
            text = "\n\n".join([f"# {sheet.title}", rows_as_records(rows), *charts.get(sheet.title, [])])
            parts.append(Part(text, {"title": title, "sheet": sheet.title, "rows": len(rows) - 1}, part=number))
    finally:
        workbook.close()
    return parts
