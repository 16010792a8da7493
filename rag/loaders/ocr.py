"""OCR: text from pictures of pages (PDF pages without a usable text layer, image files).

The engine is Tesseract (Debian's ``tesseract-ocr`` and a language pack per language), run as one
``tesseract`` process per page: a page that crashes it or runs past the time limit costs that page
only (the process is killed) and the other pages go on. Pages are rendered here (pypdfium2 for PDF
pages, Pillow for images: the ``ocr`` extra) and read side by side, ``workers`` Tesseract processes at
once, each started with OMP_THREAD_LIMIT=1: Tesseract's own OpenMP threads only spin against each
other when several pages run at once. That variable is why Tesseract is started here rather than
through pytesseract, which hands every process this process's environment, and setting it there
would also bind torch's threads in this process.
"""

from __future__ import annotations

import csv
import io
import logging
import os
import re
import shutil
import subprocess
import tempfile
import threading
import warnings
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, Literal

from rag.errors import LoadError
from rag.text import one_line

log = logging.getLogger(__name__)

INSTALL = 'pip install -e ".[ocr]"'
ENGINE = "tesseract"
# A rendered page whose darkest and lightest pixels differ by less than this holds nothing to read.
_BLANK_CONTRAST = 16
# "auto" resolution: a scanned page is rendered at the resolution of its picture (resampling a raster
# adds nothing and can blur it), kept within what Tesseract reads well; a page drawn without
# pictures (text turned into outlines, say) at 300 dpi.
_AUTO_DPI = (200, 400)
_VECTOR_DPI = 300
_LANGUAGE = re.compile(r"[A-Za-z0-9_]+(?:/[A-Za-z0-9_]+)?")
_PDFIUM = threading.Lock()  # pdfium is not thread-safe: one rendering at a time, OCR runs side by side


@dataclass(frozen=True)
class OcrOptions:
    """What the loaders need of ``loading.ocr*`` (rag.config builds it from the settings)."""

    mode: Literal["auto", "always", "never"] = "auto"
    languages: tuple[str, ...] = ("eng",)
    dpi: int | None = None  # None: auto, from the page's picture
    page_timeout: float = 120.0
    workers: int | None = None  # None: one per usable core
    max_pixels: int = 80_000_000
    progress: bool = False  # a bar of pages on stderr


@dataclass
class PageText:
    """What OCR made of one page (``index`` from 0): its text, or the reason it has none."""

    index: int
    text: str = ""
    confidence: float | None = None  # mean word confidence, 0-1
    dpi: int | None = None
    reason: str | None = None  # why the page gave no text (None: it was read, or it is blank)


class _Unreadable(Exception):
    """A page or file that cannot be read; its message is the one-line reason."""


def settings_salt(options: OcrOptions) -> str:
    """What of OCR shapes the chunks of a file read by it, for its signature: the settings, and whether
    the engine is there at all (a PDF whose pictures could not be read then is read again once it is)."""
    engine = ENGINE if shutil.which(ENGINE) else "none"
    return f":ocr={options.mode},{'+'.join(options.languages)},{options.dpi or 'auto'},{options.max_pixels},{engine}"


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


# --- the engine ---------------------------------------------------------------------------------


def check_engine(path: Path, languages: Sequence[str]) -> None:
    """Raise LoadError naming what to install when the renderers, Tesseract or a language is missing."""
    try:
        import PIL.Image  # noqa: F401  (only checked here)
        import pypdfium2  # noqa: F401
    except ImportError as exc:
        raise LoadError(path, f"needs OCR, whose Python packages are not installed ({exc.name}): {INSTALL}") from None
    program = shutil.which(ENGINE)
    if program is None:
        raise LoadError(path, f"needs OCR, but the {ENGINE} program is not found: install it "
                              f"(Debian/Ubuntu: apt-get install tesseract-ocr) and {INSTALL}")
    for language in languages:
        if not _LANGUAGE.fullmatch(language):
            raise LoadError(path, f"loading.ocr_languages: {language!r} is not a Tesseract language name (e.g. eng)")
    installed = _installed_languages(program)
    missing = [lang for lang in languages if installed and lang not in installed]
    if missing:
        packages = " ".join(f"tesseract-ocr-{lang.lower().replace('_', '-')}" for lang in missing)
        raise LoadError(path, f"OCR language {', '.join(missing)} is not installed for Tesseract "
                              f"(Debian/Ubuntu: apt-get install {packages}); see loading.ocr_languages")


@cache
def _installed_languages(program: str) -> frozenset[str]:
    """What ``tesseract --list-langs`` lists (empty when it cannot say: Tesseract then says itself)."""
    try:
        listed = subprocess.run([program, "--list-langs"], capture_output=True, text=True, timeout=30, check=True)
    except (OSError, subprocess.SubprocessError):
        return frozenset()
    return frozenset(line.strip() for line in listed.stdout.splitlines()[1:] if line.strip())


def _tesseract(image: Any, dpi: int | None, options: OcrOptions) -> tuple[str, float | None]:
    """The page's text, lines and paragraphs as Tesseract found them, and its mean word confidence."""
    program = shutil.which(ENGINE)
    if program is None:
        raise _Unreadable(f"the {ENGINE} program is gone")
    picture = io.BytesIO()
    image.save(picture, format="PPM")  # uncompressed: the quickest to write and for Tesseract to read
    with tempfile.TemporaryDirectory(prefix="rag-ocr-") as folder:
        out = Path(folder) / "page"
        # Two outputs of one run: the text as Tesseract spaces it (no spaces between the words of
        # scripts written without them), and the words' confidences.
        command = [program, "stdin", str(out), "-l", "+".join(options.languages)]
        command += ["--dpi", str(dpi)] if dpi else []
        try:
            done = subprocess.run([*command, "txt", "tsv"], input=picture.getvalue(), capture_output=True,
                                  check=False, timeout=options.page_timeout,
                                  env={**os.environ, "OMP_THREAD_LIMIT": "1"})
        except subprocess.TimeoutExpired:
            raise _Unreadable(f"OCR took longer than {options.page_timeout:g} s (loading.ocr_page_timeout)") from None
        if done.returncode != 0:
            errors = [line for line in done.stderr.decode("utf-8", "replace").splitlines() if line.strip()]
            raise _Unreadable(f"{ENGINE} failed (exit {done.returncode}): {one_line(errors[-1] if errors else '')}")
        text = out.with_suffix(".txt").read_text(encoding="utf-8", errors="replace").replace("\f", "").strip()
        return text, _confidence(out.with_suffix(".tsv").read_text(encoding="utf-8", errors="replace"))


def _confidence(tsv: str) -> float | None:
    """The mean of the words' confidences in Tesseract's TSV, from 0 to 1."""
    confidences = []
    for row in csv.DictReader(io.StringIO(tsv), delimiter="\t", quoting=csv.QUOTE_NONE):
        try:
            if row.get("level") == "5" and (row.get("text") or "").strip() and float(row["conf"]) >= 0:
                confidences.append(float(row["conf"]))
        except (TypeError, ValueError):
            pass
    return round(sum(confidences) / len(confidences) / 100, 3) if confidences else None


# --- reading pages ----------------------------------------------------------------------------


def read_pages(path: Path, data: bytes, kind: Literal["pdf", "image"], indices: Sequence[int] | None,
               options: OcrOptions) -> list[PageText]:
    """OCR the pages ``indices`` (None: every page) of a PDF or image file, ``options.workers`` at
    once, each within ``options.page_timeout``. The engine must have passed ``check_engine``.
    Returns one PageText per page, in page order; raises LoadError when the file cannot be opened."""
    if indices is None:
        indices = range(_frames(path, data, options))
    workers = max(1, min(options.workers or usable_cores(), len(indices)))
    with ThreadPoolExecutor(workers, thread_name_prefix="rag-ocr") as pool:
        futures = [pool.submit(_read_page, data, kind, index, options) for index in indices]
        try:
            return _collect(path, futures, options.progress)
        finally:
            for future in futures:  # an interrupted file: the pages not started are not started
                future.cancel()


def _collect(path: Path, futures: list[Future], progress: bool) -> list[PageText]:
    from tqdm import tqdm

    bar = tqdm(total=len(futures), desc=f"OCR {path.name}", unit="page", disable=not progress, leave=False)
    pages = []
    try:
        for future in futures:  # in page order: the bar moves as the pages come in
            pages.append(future.result())
            bar.update(1)
    finally:
        bar.close()
    return pages


def ocr_metadata(page: PageText) -> dict[str, object]:
    """What a part read by OCR says about itself (``ocr: true``, so a search can tell or filter)."""
    return {"ocr": True, "ocr_engine": ENGINE, "ocr_confidence": page.confidence, "ocr_dpi": page.dpi}


def unread_pages(path: Path, pages: list[PageText]) -> None:
    """Warn about the pages OCR could not read; the file's other pages are kept."""
    for page in pages:
        if page.reason:
            log.warning("%s: skipped page %d: %s", path, page.index + 1, page.reason)


def no_text_reason(pages: list[PageText], otherwise: str) -> str:
    """Why a file gave no text: the first unreadable page's reason, or ``otherwise``."""
    failed = next((page for page in pages if page.reason), None)
    if failed is None or failed.reason is None:
        return otherwise
    return failed.reason if len(pages) == 1 else f"no page gave text; page {failed.index + 1}: {failed.reason}"


def _read_page(data: bytes, kind: str, index: int, options: OcrOptions) -> PageText:
    try:
        image, dpi = _render_pdf_page(data, index, options) if kind == "pdf" else _image_frame(data, index, options)
        low, high = image.getextrema()
        if high - low < _BLANK_CONTRAST:
            return PageText(index, dpi=dpi)
        text, confidence = _tesseract(image, dpi, options)
    except _Unreadable as exc:
        return PageText(index, reason=str(exc))
    except Exception as exc:  # a library's error on one broken page: that page's reason
        return PageText(index, reason=f"cannot read page: {one_line(exc) or type(exc).__name__}")
    return PageText(index, text, confidence, dpi)


# --- rendering ----------------------------------------------------------------------------------


def _render_pdf_page(data: bytes, index: int, options: OcrOptions) -> tuple[Any, int]:
    import pypdfium2 as pdfium

    with _PDFIUM:
        document = pdfium.PdfDocument(data)  # opened per page: cheap, and nothing stays open after it
        try:
            page = document[index]
            dpi = options.dpi or _auto_dpi(page)
            width, height = page.get_size()  # points
            if width * height * (dpi / 72) ** 2 > options.max_pixels:  # a huge page: fewer dots, not a refusal
                dpi = int((options.max_pixels / (width * height)) ** 0.5 * 72)
                if dpi < 1:
                    raise _Unreadable(f"page is too large to render within loading.ocr_max_pixels "
                                      f"({options.max_pixels:,})")
            image = page.render(scale=dpi / 72, grayscale=True).to_pil()
            page.close()
        finally:
            document.close()
    return image, dpi


def _auto_dpi(page: Any) -> int:
    """The resolution of the page's largest picture as placed on it, within _AUTO_DPI."""
    import pypdfium2.raw as pdfium_c

    best, area = _VECTOR_DPI, 0.0
    for picture in page.get_objects([pdfium_c.FPDF_PAGEOBJ_IMAGE]):
        left, bottom, right, top = picture.get_bounds()
        if right - left > 0 and (right - left) * (top - bottom) > area:
            area = (right - left) * (top - bottom)
            pixels = picture.get_px_size()[0]
            best = round(min(max(pixels / ((right - left) / 72), _AUTO_DPI[0]), _AUTO_DPI[1]))
    return best


@contextmanager
def _open_image(data: bytes, options: OcrOptions) -> Iterator[Any]:
    """The picture, opened (its header read, nothing decoded) and checked against max_pixels."""
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the size is checked below
            image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise _Unreadable("not an image Pillow can read (corrupt, or another format?)") from None
    except Image.DecompressionBombError as exc:  # past Pillow's own hard limit, which holds whatever ours is
        size = re.search(r"\((\d+) pixels\)", str(exc))
        shown = f"{int(size.group(1)):,} pixels" if size else "too many pixels"
        raise _Unreadable(f"image of {shown} is over loading.ocr_max_pixels ({options.max_pixels:,}) and Pillow's "
                          "decompression-bomb limit; shrink it") from None
    with image:
        if image.width * image.height > options.max_pixels:
            raise _Unreadable(f"image of {image.width}x{image.height} pixels is over loading.ocr_max_pixels "
                              f"({options.max_pixels:,}); shrink it or raise the limit")
        yield image


def _frames(path: Path, data: bytes, options: OcrOptions) -> int:
    """How many pages (frames) an image file has; LoadError when it cannot be read at all."""
    try:
        with _open_image(data, options) as image:
            return int(getattr(image, "n_frames", 1))
    except _Unreadable as exc:
        raise LoadError(path, str(exc)) from None
    except Exception as exc:  # a truncated TIFF can fail while its frames are counted
        raise LoadError(path, f"cannot read the image (truncated or corrupt?): {one_line(exc)}") from None


def _image_frame(data: bytes, index: int, options: OcrOptions) -> tuple[Any, int | None]:
    from PIL import Image

    with _open_image(data, options) as image:
        try:
            image.seek(index)
            image.load()
        except (OSError, EOFError, SyntaxError, ValueError) as exc:  # Pillow's words for truncated data
            raise _Unreadable(f"cannot decode the image (truncated or corrupt?): {one_line(exc)}") from None
        frame = image
        if "A" in frame.getbands() or frame.mode in ("P", "PA"):  # transparent pixels read as white paper
            frame = Image.alpha_composite(Image.new("RGBA", frame.size, "white"), frame.convert("RGBA"))
        frame = frame.convert("L")
        dpi = image.info.get("dpi")
    try:
        resolution = round(float(dpi[0])) if dpi else None
    except (TypeError, ValueError, IndexError):
        resolution = None
    return frame, resolution if resolution and resolution >= 50 else None
