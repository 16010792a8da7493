"""Runs ``rag`` (``rag.cli.main``) in this process and SIGKILLs it at one named point.

    python tests/crash_child.py POINT:N rag-arguments...

Used by test_crash.py to hit crash points that timing alone reaches only by luck. Nothing is
replaced: each hook wraps the real function and, on its N-th call, kills the process with SIGKILL
(the same signal a kill -9 or the OOM killer sends) before, inside or after the real work.

POINT is one of
  embed          inside Embedder._encode, after N-1 forward passes of a batch (vectors not stored yet)
  upsert-inside  while the N-th Chroma collection upsert is running (a separate process kills us
                 a few milliseconds after the call starts, so no GIL is needed to land the signal)
  after-upsert   right after the N-th Store.upsert returned (new chunks stored, stale ones not yet deleted)
  before-delete  at the N-th Store.delete with ids to delete (new chunks stored, stale ones still there)
  after-write    after the N-th Pipeline._write returned (between files: a batch fully done)
  lexical-save   while the lexical index writes its N-th file (data files half written, manifest old)
"""

from __future__ import annotations

import functools
import os
import signal
import subprocess
import sys

_calls: dict[str, int] = {}


def _die() -> None:
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def _hook(owner: type, name: str, point: str, nth: int, *, when: str = "before", only=None) -> None:
    original = getattr(owner, name)

    @functools.wraps(original)
    def wrapper(*args, **kwargs):
        if only is None or only(*args, **kwargs):
            _calls[point] = _calls.get(point, 0) + 1
            if _calls[point] == nth:
                if when == "before":
                    _die()
                if when == "inside":
                    # A killer outside this process: lands while the call runs, GIL or not.
                    subprocess.Popen(["sh", "-c", f"sleep 0.003; kill -9 {os.getpid()}"])
                    result = original(*args, **kwargs)
                    _die()  # the call finished before the killer fired: die right after it
                    return result
                result = original(*args, **kwargs)
                _die()
                return result
        return original(*args, **kwargs)

    setattr(owner, name, wrapper)


def arm(spec: str) -> None:
    point, _, n = spec.partition(":")
    nth = int(n or 1)
    if point == "embed":
        from rag.embedding import Embedder

        _hook(Embedder, "_pool", point, nth)
    elif point == "upsert-inside":
        from chromadb.api.models.Collection import Collection

        _hook(Collection, "upsert", point, nth, when="inside")
    elif point == "after-upsert":
        from rag.store import Store

        _hook(Store, "upsert", point, nth, when="after")
    elif point == "before-delete":
        from rag.store import Store

        _hook(Store, "delete", point, nth, only=lambda self, ids: bool(ids))
    elif point == "after-write":
        from rag.pipeline import Pipeline

        _hook(Pipeline, "_write", point, nth, when="after", only=lambda self, batch, *a: bool(batch))
    elif point == "lexical-save":
        from rag.lexical import LexicalIndex

        _hook(LexicalIndex, "_write", point, nth)
    else:
        raise SystemExit(f"crash_child: unknown point {point!r}")


if __name__ == "__main__":
    arm(sys.argv[1])
    from rag.cli import main

    sys.exit(main(sys.argv[2:]))
