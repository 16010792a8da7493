"""Small helpers shared by the test modules."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

PROSE = {
    "alpha.md": "# Alpha\n\nThe alpha reactor runs on molten salt and produces 300 megawatts of heat.\n\n"
    + "Its control rods are made of boron carbide. " * 60,
    "beta.txt": "Beta notes. The beta telescope observes infrared light from distant galaxies.\n\n"
    + "Mirrors are cooled with liquid helium to reduce noise. " * 40,
    "gamma.txt": "Gamma is a recipe for sourdough bread with rye flour and a long cold fermentation.",
}


def make_folder(root: Path, files: dict[str, str]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (root / name).write_text(text, encoding="utf-8")
    return root


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def server_process(argv: list[str], ready_url: str, log: Path, *, timeout: float = 60,
                   **popen) -> Iterator[subprocess.Popen]:
    """A server started as a child process, ready once ``ready_url`` answers; stopped on exit (if it has
    not been already). Yields the process. Its output goes to ``log``, shown when it fails to start."""
    import pytest

    with open(log, "w") as out:
        server = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, **popen)
        try:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    urllib.request.urlopen(ready_url, timeout=1)
                    break
                except OSError:
                    if server.poll() is not None or time.monotonic() > deadline:
                        command = f"{Path(argv[0]).name} {' '.join(argv[1:3])}"
                        pytest.fail(f"{command} did not start: {log.read_text()[-3000:]}")
                    time.sleep(0.2)
            yield server
        finally:
            server.terminate()
            try:
                server.wait(timeout=15)
            except subprocess.TimeoutExpired:
                server.kill()


@contextlib.contextmanager
def chroma_server(data: Path) -> Iterator[str]:
    """A real `chroma run` on a free loopback port, its data and log under ``data``; yields its URL."""
    import pytest

    chroma = shutil.which("chroma") or str(Path(sys.executable).with_name("chroma"))
    if not Path(chroma).exists():
        pytest.skip("the `chroma` command (from the chromadb package) is not installed")
    port = free_port()
    data.mkdir(parents=True, exist_ok=True)
    url = f"http://127.0.0.1:{port}"
    argv = [chroma, "run", "--path", str(data / "db"), "--host", "127.0.0.1", "--port", str(port)]
    with server_process(argv, f"{url}/api/v2/heartbeat", data / "server.log"):
        yield url
