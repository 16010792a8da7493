"""PDF: one part per page (citations can then name the page). Text from pypdf's text layer, tables
on those pages as Markdown rows (pdfplumber's table finder), and pages without a usable text layer
read by OCR (rag.loaders.ocr) as ``loading.ocr`` says."""

from __future__ import annotations

import io
import logging
from collections import Counter
from pathlib import Path
from typing import Any

from pypdf import PdfReader
from pypdf.errors import DependencyError

from rag.errors import LoadError
from rag.loaders.base import Part, markdown_table
from rag.loaders.ocr import OcrOptions, check_engine, no_text_reason, ocr_metadata, read_pages, unread_pages
from rag.text import one_line

# pypdf logs every recoverable oddity of a PDF as a warning; those are its business, not the user's.
logging.getLogger("pypdf").setLevel(logging.ERROR)
logging.getLogger("pdfminer").setLevel(logging.ERROR)
log = logging.getLogger(__name__)

# A text layer with fewer letters and digits than this is "nearly empty" (a scan with a stamped page
# number or a scanner's banner): under loading.ocr: auto such a page is read by OCR.
NEARLY_EMPTY = 16
# A table found on a page replaces the page's text inside its frame only when its cells hold nearly
# all of that text: a finder that misread the grid must not cost the page any words.
_TABLE_COVERAGE = 0.9
_TABLE_MARGIN = 2.0  # points a glyph's origin may lie outside the table's frame and still be in it
_MARKER = "\x00table{}\x00"


def _title(reader: PdfReader) -> str:
    try:
        info = reader.metadata
        title = info.title if info else None
    except Exception:  # a broken info dictionary is no reason to lose the text
        return ""
    return " ".join(str(title).split()) if title else ""


def _open(path: Path, data: bytes) -> PdfReader:
    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted and not reader.decrypt(""):
            raise LoadError(path, "encrypted PDF that needs a password; decrypt it first (e.g. qpdf --decrypt)")
        if len(reader.pages) == 0:
            raise LoadError(path, "PDF has no pages")
    except LoadError:
        raise
    except DependencyError as exc:  # AES-encrypted files need the optional 'cryptography' package
        raise LoadError(path, f"cannot decrypt PDF: {one_line(exc)}") from exc
    except Exception as exc:
        raise LoadError(path, f"cannot read PDF (corrupt or truncated?): {one_line(exc)}") from exc
    return reader


def nearly_empty(text: str | None) -> bool:
    return sum(c.isalnum() for c in text or "") < NEARLY_EMPTY


def load_pdf(path: Path, data: bytes, *, ocr: OcrOptions | None = None, **_options: object) -> list[Part]:
    ocr = ocr or OcrOptions()
    reader = _open(path, data)
    count = len(reader.pages)
    title = _title(reader)
    tables = _TableFinder(data)
    texts: dict[int, str] = {}  # page number -> text
    for number in range(1, count + 1):
        try:
            text = _page_text(reader.pages[number - 1], tables.find(number))
        except Exception as exc:  # one broken page should not cost the other pages
            log.warning("%s: skipped page %d, cannot extract its text: %s", path, number, one_line(exc))
            continue
        texts[number] = text.replace("\r\n", "\n").replace("\r", "\n").replace("\x00", "").strip()
    tables.close()
    parts = {number: Part(text, {"title": title, "page": number, "pages": count}, part=number)
             for number, text in texts.items() if text}
    if ocr.mode == "always":
        scanned = list(range(1, count + 1))
    elif ocr.mode == "auto":
        scanned = [n for n in range(1, count + 1) if nearly_empty(texts.get(n)) and _draws_something(data, n)]
    else:
        scanned = []
    read = _ocr(path, data, scanned, ocr, has_text=bool(parts))
    for page in read:
        if page.text.strip():
            parts[page.index + 1] = Part(page.text, {"title": title, "page": page.index + 1, "pages": count,
                                                     **ocr_metadata(page)}, part=page.index + 1)
    if not parts:
        if ocr.mode == "never":
            raise LoadError(path, "no extractable text (scanned or image-only PDF?); loading.ocr: auto reads it by OCR")
        raise LoadError(path, no_text_reason(read, "no extractable text: its pages are blank"))
    unread_pages(path, read)
    return [parts[number] for number in sorted(parts)]


def _ocr(path: Path, data: bytes, numbers: list[int], ocr: OcrOptions, *, has_text: bool) -> list:
    """OCR these pages; when the engine is missing, a file with other text keeps it (with a warning)
    and one without fails with what to install."""
    if not numbers:
        return []
    try:
        check_engine(path, ocr.languages)
    except LoadError as exc:
        if not has_text:
            raise
        shown = ", ".join(map(str, numbers[:10])) + (", ..." if len(numbers) > 10 else "")
        log.warning("%s: page %s not read: %s", path, shown, exc.reason)
        return []
    return read_pages(path, data, "pdf", [n - 1 for n in numbers], ocr)


def _draws_something(data: bytes, number: int) -> bool:
    """Whether the page has anything to render: a page without objects needs no OCR to be blank."""
    import pypdfium2 as pdfium

    try:
        document = pdfium.PdfDocument(data)
    except Exception:  # pdfium cannot open what pypdf could: let OCR say what is wrong
        return True
    try:
        page = document[number - 1]
        return next(iter(page.get_objects(max_depth=1)), None) is not None
    except Exception:
        return True
    finally:
        document.close()


# --- tables -----------------------------------------------------------------------------------


class _TableFinder:
    """pdfplumber's table finder over the file's pages, opened once (and only if it is installed)."""

    def __init__(self, data: bytes) -> None:
        try:
            import pdfplumber
            import pypdfium2 as pdfium

            self._pdf: Any = pdfplumber.open(io.BytesIO(data))
            self._drawing: Any = pdfium.PdfDocument(data)
        except Exception:  # not installed, or a file they cannot parse: pages keep their plain text
            self._pdf = None

    def _has_lines(self, number: int) -> bool:
        """Whether the page draws any path: the finder looks for tables along drawn lines, and asking
        pdfium first spares pdfminer's slower parse of the many pages of prose that draw none."""
        import pypdfium2.raw as pdfium_c

        page = self._drawing[number - 1]
        try:
            return next(iter(page.get_objects([pdfium_c.FPDF_PAGEOBJ_PATH])), None) is not None
        finally:
            page.close()

    def find(self, number: int) -> list[tuple[tuple[float, float, float, float], list[list[str]], float]]:
        """(frame in PDF coordinates, rows, page height) for each table worth keeping on the page."""
        if self._pdf is None:
            return []
        page = None
        try:
            if not self._has_lines(number):
                return []
            page = self._pdf.pages[number - 1]
            found = page.find_tables()
            tables = []
            for table in found:
                rows = [[one_line(cell or "", limit=None) for cell in row] for row in table.extract()]
                rows = [row for row in rows if any(row)]
                if len(rows) >= 2 and max(sum(1 for cell in row if cell) for row in rows) >= 2:
                    x0, top, x1, bottom = table.bbox
                    # pdfplumber measures from the page's top, the PDF from its bottom
                    height = float(page.height) + float(page.bbox[1])
                    tables.append(((x0, height - bottom, x1, height - top), rows, height))
            return tables
        except Exception:  # the finder's trouble with one page costs that page its tables only
            return []
        finally:
            if page is not None:
                page.close()  # pdfplumber keeps every page's parsed objects until told

    def close(self) -> None:
        if self._pdf is not None:
            self._pdf.close()
            self._drawing.close()


def _page_text(page: Any, tables: list) -> str:
    """The page's text layer; the text inside each table's frame replaced by the table's rows."""
    if not tables:
        return page.extract_text() or ""
    pieces: list[tuple[str, int | None]] = []  # (text, index of the table it lies in)

    def visit(text: str, cm: list[float], tm: list[float], _font: Any, _size: Any) -> None:
        x = tm[4] * cm[0] + tm[5] * cm[2] + cm[4]
        y = tm[4] * cm[1] + tm[5] * cm[3] + cm[5]
        m = _TABLE_MARGIN
        inside = next((i for i, ((x0, y0, x1, y1), _, _) in enumerate(tables)
                       if x0 - m <= x <= x1 + m and y0 - m <= y <= y1 + m), None)
        pieces.append((text, inside))

    plain = page.extract_text(visitor_text=visit) or ""
    if "".join(text for text, _ in pieces) != plain:  # a pypdf whose visitor sees other pieces: keep its text
        return plain
    kept = {i for i, (_, rows, _) in enumerate(tables)
            if _covers(rows, "".join(text for text, inside in pieces if inside == i))}
    out: list[str] = []
    placed: set[int] = set()
    for text, inside in pieces:
        if inside not in kept:
            out.append(text)
        elif inside not in placed:
            placed.add(inside)
            out.append(_MARKER.format(inside))
    text = "".join(out)
    for i in placed:
        text = text.replace(_MARKER.format(i), f"\n\n{markdown_table(tables[i][1])}\n\n")
    return "\n".join(line.rstrip() for line in text.split("\n")).replace("\n\n\n", "\n\n")


def _covers(rows: list[list[str]], inside: str) -> bool:
    """The table's cells hold (nearly) every character the text layer has inside its frame."""
    wanted = Counter(c for c in inside if not c.isspace())
    if not wanted:
        return False
    found = Counter(c for row in rows for cell in row for c in cell if not c.isspace())
    return sum((wanted & found).values()) >= _TABLE_COVERAGE * sum(wanted.values())
