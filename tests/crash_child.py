"""Runs ``rag`` (``rag.cli.main``) in a process of its own, optionally SIGKILLing it at one named point.

    python tests/crash_child.py POINT:N rag-arguments...     one run, killed at POINT
    python tests/crash_child.py --serve                       a fork server (below)

Used by test_crash.py to hit crash points that timing alone reaches only by luck. Nothing is
replaced: each hook wraps the real function and, on its N-th call, kills the process with SIGKILL
(the same signal a kill -9 or the OOM killer sends) before, inside or after the real work.

The fork server imports what an ingest needs once (torch, transformers, chromadb: seconds on a busy
CPU), checks that no thread was started, and then forks one child per request: each child is a fresh
process with its own stdin/stdout/stderr that runs ``rag.cli.main`` from the start (loading the model,
opening the store, ...) and can be SIGKILLed like any other. It saves the imports, nothing else.
Requests and replies are JSON lines: {"cmd": "spawn", "argv": [...], "cwd", "stdout", "tty",
"point"} -> {"pid"}; {"cmd": "poll", "pid"} -> {"rc"} (null while it runs).

POINT is one of
  embed          inside Embedder._encode, after N-1 forward passes of a batch (vectors not stored yet)
  upsert-inside  while the N-th Chroma collection upsert is running (a separate process kills us
                 a few milliseconds after the call starts, so no GIL is needed to land the signal)
  after-upsert   right after the N-th Store.upsert returned (new chunks stored, stale ones not yet deleted)
  before-delete  at the N-th Store.delete with ids to delete (new chunks stored, stale ones still there)
  after-write    after the N-th Indexer._write returned (between files: a batch fully done)
  lexical-save   while the lexical index writes its N-th file (its table half written, not committed)
  record-finish  at the N-th FileRecord.finish (a batch's chunks written and stale ones deleted, rows pending)
  lexical-commit at the N-th FileRecord.mark_indexed (the lexical index committed, the record not told)
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
        from rag.stores.chroma import Store

        _hook(Store, "upsert", point, nth, when="after")
    elif point == "before-delete":
        from rag.stores.chroma import Store

        _hook(Store, "delete", point, nth, only=lambda self, ids: bool(ids))
    elif point == "after-write":
        from rag.indexing import Indexer

        _hook(Indexer, "_write", point, nth, when="after", only=lambda self, batch, *a: bool(batch))
    elif point == "lexical-save":
        from rag.stores.bm25 import LexicalIndex

        _hook(LexicalIndex, "_write", point, nth)
    elif point == "record-finish":
        from rag.stores.files import FileRecord

        _hook(FileRecord, "finish", point, nth)
    elif point == "lexical-commit":
        from rag.stores.files import FileRecord

        _hook(FileRecord, "mark_indexed", point, nth)
    else:
        raise SystemExit(f"crash_child: unknown point {point!r}")


def _child(request: dict) -> None:
    """In the forked child: take the given stdout and terminal, run rag, exit with its code."""
    os.setsid()
    stdin = os.open(os.devnull, os.O_RDONLY)
    stdout = os.open(request["stdout"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    stderr = os.open(request["tty"], os.O_RDWR)
    for fd, target in ((stdin, 0), (stdout, 1), (stderr, 2)):
        os.dup2(fd, target)
        os.close(fd)
    os.chdir(request["cwd"])
    code = 1
    try:
        if request.get("point"):
            arm(request["point"])
        from rag.cli import main

        code = main(request["argv"])
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def serve() -> None:
    import json
    import threading

    import chromadb.api.models.Collection  # noqa: F401
    from transformers import AutoConfig, AutoModel, AutoTokenizer, BertModel  # noqa: F401

    import rag.cli
    import rag.pipeline
    import rag.stores.bm25
    import rag.stores.files  # noqa: F401

    if threading.active_count() != 1:
        raise SystemExit("crash_child: imports started threads; forking would not be safe")
    sys.stdout.write(json.dumps({"ready": True}) + "\n")
    sys.stdout.flush()
    for line in sys.stdin:
        request = json.loads(line)
        if request["cmd"] == "spawn":
            pid = os.fork()
            if pid == 0:
                _child(request)
            reply = {"pid": pid}
        elif request["cmd"] == "poll":
            done, status = os.waitpid(request["pid"], os.WNOHANG)
            reply = {"rc": os.waitstatus_to_exitcode(status) if done else None}
        else:
            reply = {"error": f"unknown command {request['cmd']!r}"}
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    if sys.argv[1] == "--serve":
        serve()
    else:
        arm(sys.argv[1])
        from rag.cli import main

        sys.exit(main(sys.argv[2:]))
