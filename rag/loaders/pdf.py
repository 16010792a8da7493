"""PDF: one part per page (citations can then name the page), text from pypdf."""

from __future__ import annotations

import io
import logging
from pathlib import Path

from pypdf import PdfReader
from pypdf.errors import DependencyError

from rag.errors import LoadError
from rag.loaders.base import Part
from rag.text import one_line

# pypdf logs every recoverable oddity of a PDF as a warning; those are its business, not the user's.
logging.getLogger("pypdf").setLevel(logging.ERROR)
log = logging.getLogger(__name__)


def _title(reader: PdfReader) -> str:
    try:
        info = reader.metadata
        title = info.title if info else None
    except Exception:  # a broken info dictionary is no reason to lose the text
        return ""
    return " ".join(str(title).split()) if title else ""


def load_pdf(path: Path, data: bytes, **_options: object) -> list[Part]:
    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted and not reader.decrypt(""):
            raise LoadError(path, "encrypted PDF that needs a password; decrypt it first (e.g. qpdf --decrypt)")
        pages = reader.pages
        count = len(pages)
    except LoadError:
        raise
    except DependencyError as exc:  # AES-encrypted files need the optional 'cryptography' package
        raise LoadError(path, f"cannot decrypt PDF: {one_line(exc)}") from exc
    except Exception as exc:
        raise LoadError(path, f"cannot read PDF (corrupt or truncated?): {one_line(exc)}") from exc
    if count == 0:
        raise LoadError(path, "PDF has no pages")
    title = _title(reader)
    parts = []
    for number in range(1, count + 1):
        try:
            text = pages[number - 1].extract_text() or ""
        except Exception as exc:  # one broken page should not cost the other pages
            log.warning("%s: skipped page %d, cannot extract its text: %s", path, number, one_line(exc))
            continue
        text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\x00", "").strip()
        if text:
            parts.append(Part(text, {"title": title, "page": number, "pages": count}, part=number))
    if not parts:
        raise LoadError(path, "no extractable text (scanned or image-only PDF?)")
    return parts
