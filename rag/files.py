"""Files written so that a crash never leaves a half-written one in place: every writer of results,
reports and indexes uses these. Imports nothing of the project, so any module may use it."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import IO


@contextlib.contextmanager
def atomic_file(path: Path, *, partial: str | None = None, sync_folder: bool = True) -> Iterator[IO[bytes]]:
    """A binary file to write that appears at ``path`` only once complete and on disk: it is written
    beside it (as ``partial``, a name in the same folder), flushed to disk, then renamed over ``path``.
    ``sync_folder``: also make the rename itself durable (a writer of several files may do it once
    at the end instead, with fsync_folder)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(partial or f".{path.name}.partial")
    try:
        with open(temporary, "wb") as out:
            yield out
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    if sync_folder:
        fsync_folder(path.parent)


def write_atomic(path: Path, content: str | bytes) -> None:
    """``content`` (text as UTF-8) written to ``path`` through atomic_file."""
    with atomic_file(path) as out:
        out.write(content.encode("utf-8") if isinstance(content, str) else content)


def fsync_folder(folder: Path) -> None:
    """Make renames in ``folder`` durable (not possible on Windows, where it is skipped)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
