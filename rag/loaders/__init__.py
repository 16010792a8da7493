"""Loaders: a path (and its bytes, read once) in, Documents out.

One module per format family (text, markdown, html, pdf, office, tabular), chosen by file extension.
Every failure a file can cause comes out as ``LoadError(path, reason)``, so an ingest can report the
file and go on with the next one. Format modules are imported on first use: ``import rag.loaders``
stays cheap and a missing optional library only affects its own formats.
"""

from __future__ import annotations

import importlib
import os
import stat
from collections.abc import Callable, Iterable, Iterator, Sequence
from fnmatch import fnmatchcase
from pathlib import Path

from rag.errors import LoadError
from rag.loaders.base import Part, content_hash, document_id
from rag.loaders.ocr import OcrOptions, settings_salt
from rag.loaders.text import decode_bytes
from rag.text import one_line
from rag.types import Document

__all__ = ["SUPPORTED_EXTENSIONS", "LoadError", "OcrOptions", "decode_bytes", "document_id", "iter_files", "load_file",
           "ocr_salt", "read_file"]

# extension -> (metadata "format", "module:function" in this package)
_REGISTRY: dict[str, tuple[str, str]] = {
    ".txt": ("text", "text:load_text"),
    ".md": ("markdown", "markdown:load_markdown"),
    ".mdx": ("markdown", "markdown:load_markdown"),
    ".html": ("html", "html:load_html"),
    ".htm": ("html", "html:load_html"),
    ".pdf": ("pdf", "pdf:load_pdf"),
    ".docx": ("docx", "office:load_docx"),
    ".pptx": ("pptx", "office:load_pptx"),
    ".xlsx": ("xlsx", "office:load_xlsx"),
    ".csv": ("csv", "tabular:load_csv"),
    ".json": ("json", "tabular:load_json"),
    ".jsonl": ("json", "tabular:load_jsonl"),
    # Pictures are read by OCR (the ocr extra): their text is all they hold for a search.
    **{ext: ("image", "image:load_image") for ext in (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp")},
}

SUPPORTED_EXTENSIONS: frozenset[str] = frozenset(_REGISTRY)


def _loader(path: Path) -> tuple[str, Callable[..., list[Part]]]:
    suffix = path.suffix.lower()
    if suffix not in _REGISTRY:
        shown = suffix or "(no extension)"
        supported = " ".join(sorted(SUPPORTED_EXTENSIONS))
        raise LoadError(path, f"unsupported file type {shown}; supported: {supported}")
    fmt, target = _REGISTRY[suffix]
    module, function = target.split(":")
    try:
        return fmt, getattr(importlib.import_module(f"{__name__}.{module}"), function)
    except ImportError as exc:
        raise LoadError(path, f"cannot load {fmt} files: {one_line(exc)} (install the missing package)") from exc


def ocr_salt(path: Path, options: OcrOptions) -> str:
    """What of OCR shapes this file's chunks, for its signature: the OCR settings for a PDF or a
    picture, nothing for formats OCR never reads (so their signatures do not move with OCR's)."""
    fmt = _REGISTRY.get(path.suffix.lower(), ("", ""))[0]
    return settings_salt(options) if fmt in ("pdf", "image") else ""


def read_file(path: str | Path, *, max_bytes: int | None = None) -> bytes:
    """A file's bytes, read once, after the checks that need no reading: it is a regular file of a
    supported type (whose library is installed) and no larger than ``max_bytes``. Raises LoadError."""
    path = Path(path)
    try:
        info = path.stat()
    except FileNotFoundError:
        raise LoadError(path, "no such file or directory") from None
    except (OSError, ValueError) as exc:  # ValueError: a NUL byte in the path
        raise LoadError(path, f"cannot read file: {getattr(exc, 'strerror', None) or exc}") from None
    if stat.S_ISDIR(info.st_mode):
        raise LoadError(path, "is a directory, not a file (pass it to iter_files to walk it)")
    if not stat.S_ISREG(info.st_mode):  # a FIFO or device would block or never end
        raise LoadError(path, "not a regular file")
    _loader(path)
    if max_bytes is not None and info.st_size > max_bytes:
        raise LoadError(
            path, f"file is {info.st_size} bytes, over the limit of {max_bytes} (loading.max_file_bytes)"
        )
    try:
        return path.read_bytes()
    except OSError as exc:
        raise LoadError(path, f"cannot read file: {exc.strerror or exc}") from None


def load_file(
    path: str | Path, *, json_text_field: str = "text", max_bytes: int | None = None, data: bytes | None = None,
    ocr: OcrOptions | None = None,
) -> list[Document]:
    """Load one file into Documents: one per file, or one per page / slide / sheet / record.

    ``data``: the file's bytes, already read by ``read_file`` (an ingest hashes them first), so the
    file is read once. ``ocr``: how pages without text and pictures are read (default: OcrOptions()).
    Raises LoadError, and nothing else, for any file that cannot be loaded.
    """
    path = Path(path)
    if data is None:
        data = read_file(path, max_bytes=max_bytes)
    fmt, loader = _loader(path)
    if not data:
        raise LoadError(path, "empty file")
    try:
        documents = _documents(path, fmt, loader(path, data, json_text_field=json_text_field, ocr=ocr))
    except LoadError:
        raise
    except Exception as exc:  # a library's own error on a broken file, reworded as ours
        detail = one_line(exc) or type(exc).__name__
        raise LoadError(path, f"cannot read {fmt} file (corrupt?): {detail}") from exc
    if not documents:
        raise LoadError(path, "no text found in file")
    return documents


def _documents(path: Path, fmt: str, parts: list[Part]) -> list[Document]:
    source = str(path.resolve())
    documents = []
    for part in parts:
        # Lone surrogates (some PDFs' broken font maps) cannot be stored or hashed as UTF-8.
        text = part.text.encode("utf-8", "replace").decode("utf-8").strip()
        if not text:
            continue
        metadata = {"title": "", **part.metadata, "source": source, "format": fmt, "content_hash": content_hash(text)}
        metadata["title"] = str(metadata["title"] or "")
        # Values stay as the file gave them (lists, dates...); the store makes them storable.
        metadata = {str(key): value for key, value in metadata.items() if value is not None}
        documents.append(Document(id=document_id(source, part.part), text=text, metadata=metadata))
    return documents


# --- walking folders ------------------------------------------------------------------------------


def _matches(relative: str, pattern: str) -> bool:
    """fnmatch on the path relative to the walked root; ``**/`` also matches no folder at all, and a
    pattern without ``/`` also matches the bare name."""
    pattern = pattern.strip().removeprefix("./").rstrip("/")
    if not pattern:
        return False
    if fnmatchcase(relative, pattern):
        return True
    if pattern.startswith("**/") and _matches(relative, pattern[3:]):
        return True
    if "/**/" in pattern and _matches(relative, pattern.replace("/**/", "/", 1)):
        return True
    return "/" not in pattern and fnmatchcase(relative.rsplit("/", 1)[-1], pattern)


def _selected(relative: str, include: Sequence[str], exclude: Sequence[str]) -> bool:
    if include and not any(_matches(relative, p) for p in include):
        return False
    return not any(_matches(relative, p) for p in exclude)


def _entries(folder: Path) -> list[os.DirEntry] | LoadError:
    try:
        with os.scandir(folder) as it:
            return sorted(it, key=lambda entry: entry.name)
    except OSError as exc:
        return LoadError(folder, f"cannot read directory: {exc.strerror or exc}")


def _identity(info: os.stat_result) -> tuple[int, int]:
    return info.st_dev, info.st_ino


def _walk(root: Path, include: Sequence[str], exclude: Sequence[str]) -> Iterator[Path | LoadError]:
    """Depth-first, by name at each level. Hidden entries are skipped; a symlinked folder is followed
    only when it leads somewhere not walked yet, so links to an ancestor cannot loop."""
    visited = {_identity(os.stat(root))}
    listing = _entries(root)
    if isinstance(listing, LoadError):
        yield listing
        return
    stack = [iter(listing)]
    while stack:
        entry = next(stack[-1], None)
        if entry is None:
            stack.pop()
            continue
        if entry.name.startswith("."):
            continue
        path = Path(entry.path)
        relative = path.relative_to(root).as_posix()
        wanted = path.suffix.lower() in SUPPORTED_EXTENSIONS and _selected(relative, include, exclude)
        try:
            is_dir, is_file = entry.is_dir(), entry.is_file()
            target = entry.stat() if is_dir else None
        except OSError:
            is_dir = is_file = False
        if not is_dir and not is_file:  # a broken or looping symlink, a socket...: say so if it looked wanted
            if wanted and entry.is_symlink():
                yield LoadError(path, "broken or looping symbolic link")
            continue
        if is_dir:
            assert target is not None  # stat()ed above for every folder
            key = _identity(target)
            if any(_matches(relative, p) for p in exclude) or (entry.is_symlink() and key in visited):
                continue
            visited.add(key)
            listing = _entries(path)
            if isinstance(listing, LoadError):
                yield listing
            else:
                stack.append(iter(listing))
        elif wanted:
            yield path


def iter_files(
    paths: Iterable[str | Path], include: Sequence[str] = (), exclude: Sequence[str] = ()
) -> Iterator[Path | LoadError]:
    """The files to load under ``paths``, in a stable order, each once.

    Folders are walked for supported extensions, filtered by ``include``/``exclude`` globs relative
    to the folder. A file named explicitly is always yielded (load_file then says if its type is
    unsupported). Problems (a missing path, an unreadable folder) are yielded as LoadError, not raised.
    """
    seen: set[str] = set()
    for given in paths:
        root = Path(given)
        try:
            is_dir = stat.S_ISDIR(root.stat().st_mode)
        except FileNotFoundError:
            yield LoadError(root, "no such file or directory")
            continue
        except (OSError, ValueError) as exc:
            yield LoadError(root, f"cannot read: {getattr(exc, 'strerror', None) or exc}")
            continue
        for item in _walk(root, include, exclude) if is_dir else [root]:
            if isinstance(item, Path):
                real = os.path.realpath(item)
                if real in seen:
                    continue
                seen.add(real)
            yield item
