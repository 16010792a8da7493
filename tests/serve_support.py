"""A live `rag serve` for the server's tests: a child process on a free loopback port."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path

from proc_support import child_env
from support import free_port, server_process


@contextlib.contextmanager
def rag_server(config: Path, cwd: Path, *args: str, env: dict[str, str] | None = None) -> Iterator[str]:
    """`rag serve` in a child process on a free loopback port; yields its base URL once /health answers
    (the models are loaded by then; the default generator may be converted from GGUF first)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    argv = [sys.executable, "-m", "rag.cli", "serve", "--config", str(config), "--port", str(port), *args]
    with server_process(argv, f"{url}/health", cwd / f"serve-{port}.log", timeout=300, cwd=cwd,
                        env={**child_env(), **(env or {})}):
        yield url
