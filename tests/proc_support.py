"""Child processes for the crash and robustness tests: `rag` with its stderr on a pseudo-terminal (so
it shows progress, as on a user's terminal), started fresh (``python -m rag.cli``) or forked by the fork
server in tests/crash_child.py (which has already imported torch, transformers and chromadb)."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import select
import signal
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def child_env() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
            "ANONYMIZED_TELEMETRY": "False"}


class ForkServer:
    """tests/crash_child.py --serve: imports torch, transformers and chromadb once, forks a child per run."""

    def __init__(self, cwd: Path):
        self.cwd = cwd
        self.proc = subprocess.Popen([sys.executable, str(HERE / "crash_child.py"), "--serve"], cwd=cwd,
                                     env=child_env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert json.loads(self.proc.stdout.readline() or "{}").get("ready"), "the fork server did not start"
        self.runs = 0

    def call(self, **request) -> dict:
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def spawn(self, argv: list[str], tty: str, point: str | None) -> Forked:
        self.runs += 1
        stdout = self.cwd / f"child-{self.runs}.out"
        reply = self.call(cmd="spawn", argv=argv, cwd=str(self.cwd), stdout=str(stdout), tty=tty, point=point)
        return Forked(self, reply["pid"], stdout)

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


class Forked:
    """The few subprocess.Popen methods IngestChild uses, for a child of the fork server."""

    def __init__(self, server: ForkServer, pid: int, stdout: Path):
        self.server, self.pid, self.path, self.returncode = server, pid, stdout, None

    def poll(self) -> int | None:
        if self.returncode is None:
            self.returncode = self.server.call(cmd="poll", pid=self.pid)["rc"]
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(str(self.pid), timeout)
            time.sleep(0.02)
        return self.returncode

    def kill(self) -> None:
        os.kill(self.pid, signal.SIGKILL)

    def read_stdout(self) -> bytes:
        return self.path.read_bytes() if self.path.exists() else b""


class IngestChild:
    """`rag ...` in a child process: stderr on a pseudo-terminal (so tqdm shows progress), stdout kept.

    Without a server it is ``python -m rag.cli ARGS`` (or ``python tests/crash_child.py POINT ARGS``);
    with one, a child forked by the fork server runs the same ``rag.cli.main(ARGS)``."""

    def __init__(self, argv: list[str], cwd: Path, *, point: str | None = None, server: ForkServer | None = None):
        master, slave = pty.openpty()
        # A pty starts with 0 columns, and tqdm prints nothing into 0 columns.
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 160, 0, 0))
        self.started = time.monotonic()
        if server is not None:
            self.proc = server.spawn(argv, os.ttyname(slave), point)
        else:
            head = [str(HERE / "crash_child.py"), point] if point else ["-m", "rag.cli"]
            self.proc = subprocess.Popen([sys.executable, *head, *argv], cwd=cwd, env=child_env(),
                                         stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=slave)
        # The slave stays open here until the child has ended: a forked child opens it by name, and a
        # pty whose slave nobody holds reads as ended.
        self.slave = slave
        self.master = master
        self.err = bytearray()
        self.progress_at: float | None = None
        self.ended_at: float | None = None
        self.eof = False

    def _pump(self, timeout: float) -> None:
        if self.eof:
            time.sleep(min(timeout, 0.01))
            return
        ready, _, _ = select.select([self.master], [], [], timeout)
        if not ready:
            return
        try:
            data = os.read(self.master, 65536)
        except OSError:  # EIO: the child closed its end
            data = b""
        if not data:
            self.eof = True
            return
        self.err += data
        if self.progress_at is None and b"ingesting" in self.err:
            self.progress_at = time.monotonic()

    def wait_progress(self, timeout: float = 180.0) -> float:
        deadline = time.monotonic() + timeout
        while self.progress_at is None:
            if self.eof or self.proc.poll() is not None or time.monotonic() > deadline:
                self.kill()
                raise AssertionError(f"no progress from rag ingest; stderr:\n{self.stderr}")
            self._pump(0.02)
        return self.progress_at

    def run_until(self, moment: float) -> None:
        while time.monotonic() < moment and self.proc.poll() is None:
            self._pump(min(0.01, max(0.0, moment - time.monotonic())))

    def kill(self) -> bool:
        """SIGKILL now; True when the process was still running (so the kill was a real crash)."""
        running = self.proc.poll() is None
        if running:
            self.proc.kill()
        self.finish()
        return running

    def finish(self, timeout: float = 300.0) -> tuple[int, str]:
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None and time.monotonic() < deadline:
            self._pump(0.05)
        while not self.eof and select.select([self.master], [], [], 0.05)[0]:  # what it wrote before it ended
            self._pump(0)
        try:
            rc = self.proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait()
        if self.ended_at is None:
            self.ended_at = time.monotonic()
        if isinstance(self.proc, Forked):
            out = self.proc.read_stdout()
        else:
            out = self.proc.stdout.read()
            self.proc.stdout.close()
        if self.master is not None:
            os.close(self.slave)
            os.close(self.master)
            self.master = None
        return rc, out.decode("utf-8", "replace")

    @property
    def stderr(self) -> str:
        return self.err.decode("utf-8", "replace").replace("\r", "\n")
