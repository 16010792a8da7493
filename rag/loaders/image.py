"""Pictures (PNG, JPEG, TIFF including multi-page, BMP, WebP): their text, read by OCR, one part per
page (a TIFF's frames are its pages)."""

from __future__ import annotations

from pathlib import Path

from rag.errors import LoadError
from rag.loaders.base import Part
from rag.loaders.ocr import OcrOptions, check_engine, no_text_reason, ocr_metadata, read_pages, unread_pages


def load_image(path: Path, data: bytes, *, ocr: OcrOptions | None = None, **_options: object) -> list[Part]:
    ocr = ocr or OcrOptions()
    if ocr.mode == "never":
        raise LoadError(path, "an image is read by OCR, which loading.ocr: never turns off")
    check_engine(path, ocr.languages)
    pages = read_pages(path, data, "image", None, ocr)
    parts = [
        Part(page.text, {"title": "", "page": page.index + 1, "pages": len(pages), **ocr_metadata(page)},
             part=page.index + 1)
        for page in pages
        if page.text.strip()
    ]
    if not parts:
        raise LoadError(path, no_text_reason(pages, "OCR found no text in the image"))
    unread_pages(path, pages)
    return parts

