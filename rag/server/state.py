"""What the endpoints share: one Pipeline, the queue of answers being generated, the ingest jobs.

Answers share one loaded model: ``server.generations`` of them run at once and the rest wait their
turn. A streamed answer whose client goes away is closed, which stops the model. An ingest runs in a
thread of its own holding the store's write lock, as the CLI's does; searches keep answering from the
lexical index's last commit (an ingest commits as it goes and at its end).
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Annotated, Any

import anyio
from fastapi import Depends, Request
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from rag.errors import RagError
from rag.loaders import SUPPORTED_EXTENSIONS
from rag.pipeline import Pipeline
from rag.server.errors import APIError, error_body, message_of, status_of
from rag.server.plain import plain_chat
from rag.server.schemas import ChatRequest
from rag.types import Answer

log = logging.getLogger("rag.server")

# Finished ingest jobs kept for GET /ingest/{id}, the newest; older ones are forgotten as new ones start.
KEPT_JOBS = 100


@dataclass
class IngestJob:
    """One POST /ingest, run in a thread; what GET /ingest/{id} shows."""

    id: str
    paths: list[str]
    files_total: int | None = None
    files_done: int = 0
    status: str = "queued"  # queued (waiting for the write lock) | running | done | failed
    report: dict[str, Any] | None = None
    error: str | None = None
    failure_status: int = 500  # the HTTP status of the error that ended it
    started: float = field(default_factory=time.time)
    finished: float | None = None
    done: threading.Event = field(default_factory=threading.Event, repr=False)

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "status": self.status, "paths": self.paths, "files_done": self.files_done,
                "files_total": self.files_total, "report": self.report,
                "error": error_body(self.error, "server_error", "ingest_failed")["error"] if self.error else None,
                "started": self.started, "finished": self.finished}


class Server:
    """The state every endpoint reaches through ``request.app.state.server``."""

    def __init__(self, pipeline: Pipeline):
        self.pipeline = pipeline
        self.settings = pipeline.settings.server
        self.model_id = self.settings.model_id
        self.created = int(time.time())
        self.slots = asyncio.Semaphore(self.settings.generations)
        self.generating = 0
        self.waiting = 0
        self.jobs: dict[str, IngestJob] = {}
        self.uploads = Path(pipeline.settings.store.path).resolve() / "uploads"
        self.root = Path(self.settings.root).resolve() if self.settings.root else None

    # -- answers --------------------------------------------------------------------------------

    async def answer(self, body: ChatRequest, *, plain: bool = False) -> tuple[Generation, str | Answer]:
        """A started answer and its first piece, once a generation slot is free. Everything that can
        fail on the request's account (an empty store, a prompt that cannot fit) fails here, before
        a response has begun. ``plain``: the generator's own answer to the messages, no retrieval."""
        messages = body.messages
        if messages[-1].role != "user" or not messages[-1].text().strip():
            raise APIError(400, "the last message must be the user's question, and not empty", param="messages")
        question = messages[-1].text()
        history = [{"role": m.role, "content": m.text()} for m in messages[:-1]]
        self.waiting += 1
        try:
            await self.slots.acquire()
        finally:
            self.waiting -= 1
        self.generating += 1
        if plain:
            stream = plain_chat(self.pipeline.generator, [*history, {"role": "user", "content": question}],
                                body.generation_options())
        else:
            stream = self.pipeline.stream(question, body.k, mode=body.mode, where=body.where, history=history,
                                          generation=body.generation_options())
        generation = Generation(self, stream)
        try:
            first = await generation.next()
            if first is None:
                raise RuntimeError("the answer stream ended before its Answer")
        except BaseException:
            await generation.close()
            raise
        return generation, first

    def max_new_tokens(self, body: ChatRequest) -> int:
        return body.generation_options().get("max_new_tokens") or int(self.pipeline.generator.max_new_tokens)

    # -- ingestion ------------------------------------------------------------------------------

    def start_ingest(self, paths: list[Path], *, sync: bool = False, uploaded: dict[Path, Path | None] | None = None,
                     files_total: int | None = None) -> IngestJob:
        self._forget_old_jobs()
        job = IngestJob(uuid.uuid4().hex, [str(p) for p in paths], files_total=files_total)
        self.jobs[job.id] = job
        uploaded = uploaded or {}

        def count(_: str) -> None:
            job.status = "running"
            job.files_done += 1

        def run() -> None:
            try:
                report = self.pipeline.ingest(paths, sync=sync, on_file=count)
                job.report = report.as_dict()
                job.status = "done"
            except Exception as exc:
                job.status, job.error, job.failure_status = "failed", message_of(exc), status_of(exc)
                if not isinstance(exc, RagError):
                    log.exception("ingest %s failed", job.id)
            finally:
                settle_uploads(uploaded, job.report)
                job.finished = time.time()
                job.done.set()

        threading.Thread(target=run, name=f"rag-ingest-{job.id[:8]}", daemon=True).start()
        return job

    def _forget_old_jobs(self) -> None:
        """A long-running server keeps the newest KEPT_JOBS finished jobs, and every running one."""
        finished = sorted((job for job in self.jobs.values() if job.done.is_set()), key=lambda job: job.started)
        for job in finished[: max(0, len(finished) - KEPT_JOBS + 1)]:
            del self.jobs[job.id]

    def upload_path(self, name: str | None) -> Path:
        """Where an uploaded file goes: its name, a relative path that stays inside the upload folder."""
        if not name or "\x00" in name or "\\" in name:
            raise APIError(400, f"upload name {name!r}: give each file a plain relative name", code="bad_upload_name")
        parts = PurePosixPath(name).parts
        if name.startswith("/") or any(part in ("..", ".") for part in parts) or not parts:
            raise APIError(400, f"upload name {name!r} would leave the upload folder; use a plain relative name",
                           code="bad_upload_name")
        target = (self.uploads / name).resolve()
        if not target.is_relative_to(self.uploads):
            raise APIError(400, f"upload name {name!r} would leave the upload folder", code="bad_upload_name")
        if target.suffix.lower() not in SUPPORTED_EXTENSIONS:
            raise APIError(415, f"upload {name!r}: unsupported file type {target.suffix or '(none)'}; supported: "
                                f"{' '.join(sorted(SUPPORTED_EXTENSIONS))}", code="unsupported_file_type")
        return target

    def server_path(self, path: str) -> Path:
        """A server-side path a request names: only under the root the server was started with."""
        if self.root is None:
            raise APIError(403, "this server ingests uploads only; start `rag serve --root DIR` to allow paths "
                                "under DIR", code="paths_not_allowed", param="paths")
        target = (self.root / path).resolve()
        if not target.is_relative_to(self.root):
            raise APIError(403, f"path {path!r} is outside the server's root {self.root}", code="path_outside_root",
                           param="paths")
        return target


class Generation:
    """One answer being generated: its stream and its place in the queue, given back exactly once
    however the answer ends (done, a client gone, an error, a response never started)."""

    def __init__(self, server: Server, stream: Iterator[str | Answer]):
        self.server = server
        self.stream = stream
        self.closed = False

    async def next(self) -> str | Answer | None:
        """The next piece, generated in the thread pool; None at the end."""
        return await run_in_threadpool(next, self.stream, None)

    async def pieces(self, first: str | Answer) -> AsyncGenerator[str | Answer, None]:
        try:
            piece: str | Answer | None = first
            while piece is not None:
                yield piece
                piece = await self.next()
        finally:
            await self.close()

    async def close(self) -> None:
        """Close the stream, which stops the model, and free the slot."""
        if self.closed:
            return
        self.closed = True
        with anyio.CancelScope(shield=True):
            try:
                close = getattr(self.stream, "close", None)
                if close is not None:
                    await run_in_threadpool(close)
            finally:
                self.server.generating -= 1
                self.server.slots.release()


class AnswerStream(StreamingResponse):
    """Server-sent events of one answer; the generation is closed when the response ends, even one
    cancelled before its first event."""

    def __init__(self, events: AsyncIterator[str], generation: Generation):
        super().__init__(events, media_type="text/event-stream",
                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self.generation = generation

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self.generation.close()


def settle_uploads(uploaded: dict[Path, Path | None], report: dict[str, Any] | None) -> None:
    """After an ingest, an uploaded file that failed to load gives way to the version it replaced (or
    goes), so the upload folder holds what the store holds; the replaced versions are dropped."""
    failed = {f["source"] for f in (report or {}).get("failures", [])} if report else {str(p) for p in uploaded}
    for target, previous in uploaded.items():
        if str(target) in failed:
            if previous is not None:
                os.replace(previous, target)
            else:
                target.unlink(missing_ok=True)
        elif previous is not None:
            previous.unlink(missing_ok=True)


def server_of(request: Request) -> Server:
    return request.app.state.server


# What an endpoint declares to be handed the server's shared state.
Shared = Annotated[Server, Depends(server_of)]
