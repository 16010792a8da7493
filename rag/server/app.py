"""The FastAPI application behind `rag serve`: one Pipeline shared by every request.

OpenAI-compatible endpoints (``/v1/chat/completions``, ``/v1/embeddings``, ``/v1/models``) let the
official clients work unchanged with ``base_url``; native ones (``/search``, ``/ingest``,
``/documents``, ``/info``, ``/health``) expose what those cannot say. Every error is OpenAI's shape,
``{"error": {"message", "type", "code", "param"}}``, with a 4xx the caller can act on; a fault of
our own is a 500 whose body says only that (the traceback goes to the server's log).

Concurrency: endpoints that search or embed run in the thread pool, side by side. Answers share one
loaded model: ``server.generations`` of them run at once and the rest wait their turn. A streamed
answer whose client goes away is closed, which stops the model. An ingest runs in a thread of its
own holding the store's write lock, as the CLI's does; searches keep answering from the lexical
index's last commit (an ingest commits as it goes and at its end; rag.stores.bm25).
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import aclosing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path, PurePosixPath
from typing import Any

import anyio
import numpy as np
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from rag.errors import ConfigError, GenerationError, LoadError, ModelError, PromptError, RagError, StoreError
from rag.loaders import SUPPORTED_EXTENSIONS
from rag.pipeline import Pipeline
from rag.server.schemas import ChatRequest, EmbeddingsRequest, IngestPaths, SearchRequest
from rag.types import Answer

log = logging.getLogger("rag.server")

# A RagError's HTTP status: what the caller did (400), what the store's state forbids now (409), a
# file that cannot be read (422), the server's own configuration (500).
STATUS = {ConfigError: 400, GenerationError: 400, StoreError: 409, LoadError: 422, ModelError: 500, PromptError: 500}
MAX_EMBEDDING_INPUTS = 2048  # OpenAI's own limit per request


class APIError(Exception):
    """An error for the caller, sent as OpenAI's error body."""

    def __init__(self, status: int, message: str, *, code: str | None = None, param: str | None = None,
                 kind: str = "invalid_request_error", extra: dict[str, Any] | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.param, self.kind = status, message, code, param, kind
        self.extra = extra or {}

    def response(self, headers: dict[str, str] | None = None) -> JSONResponse:
        return JSONResponse(error_body(self.message, self.kind, self.code, self.param) | self.extra,
                            status_code=self.status, headers=headers)


def error_body(message: str, kind: str = "invalid_request_error", code: str | None = None,
               param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "code": code, "param": param}}


class BodyTooLarge(Exception):
    pass


class Guard:
    """Before any endpoint: the API key (every path but /health) and the size of the body, counted
    as it arrives as well as from Content-Length, so no oversized body is ever read whole."""

    def __init__(self, app: Any, *, api_key: str | None, max_request_bytes: int, max_upload_bytes: int):
        self.app = app
        self.api_key = api_key
        self.max_request_bytes = max_request_bytes
        self.max_upload_bytes = max_upload_bytes

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope["path"]
        headers = {k.lower(): v for k, v in scope.get("headers", [])}
        if self.api_key and path != "/health" and not self._authorized(headers.get(b"authorization", b"")):
            # A browser opening the chat page is asked for the key (as the password); clients get Bearer.
            challenge = 'Basic realm="rag", charset="UTF-8"' if path == "/" else "Bearer"
            message = "a valid API key is needed: send the header 'Authorization: Bearer KEY'"
            return await APIError(401, message, code="invalid_api_key")\
                .response({"WWW-Authenticate": challenge})(scope, receive, send)
        limit = self.max_upload_bytes if path == "/ingest" else self.max_request_bytes
        length = headers.get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > limit):
            return await _too_large(limit)(scope, receive, send)
        received = 0

        async def limited() -> dict:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit)
            return message

        await self.app(scope, limited, send)

    def _authorized(self, header: bytes) -> bool:
        scheme, _, value = header.decode("latin-1").partition(" ")
        given = value.strip()
        if scheme.lower() == "basic":  # the chat page in a browser: any user name, the key as password
            try:
                given = base64.b64decode(given, validate=True).decode("utf-8").partition(":")[2]
            except ValueError:
                return False
        elif scheme.lower() != "bearer":
            return False
        return hmac.compare_digest(given.encode("utf-8"), self.api_key.encode("utf-8"))


def _too_large(limit: int) -> JSONResponse:
    return APIError(413, f"the request body is larger than this server accepts ({limit:,} bytes; "
                         "server.max_request_bytes, or server.max_upload_bytes for /ingest)",
                    code="request_too_large").response()


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
    """What the endpoints share: the pipeline, the generation queue, the ingest jobs."""

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

    async def answer(self, body: ChatRequest) -> tuple[Generation, str | Answer]:
        """A started answer and its first piece, once a generation slot is free. Everything that can
        fail on the request's account (an empty store, a prompt that cannot fit) fails here, before
        a response has begun."""
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
        generation = Generation(self, self.pipeline.stream(
            question, body.k, mode=body.mode, where=body.where, history=history,
            generation=body.generation_options()))
        try:
            return generation, await run_in_threadpool(next, generation.stream, None)
        except BaseException:
            await generation.close()
            raise

    def max_new_tokens(self, body: ChatRequest) -> int:
        return body.generation_options().get("max_new_tokens") or self.pipeline.generator.max_new_tokens

    # -- ingestion ------------------------------------------------------------------------------

    def start_ingest(self, paths: list[Path], *, sync: bool = False, uploaded: dict[Path, Path | None] | None = None,
                     files_total: int | None = None) -> IngestJob:
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
                job.status, job.error, job.failure_status = "failed", _message(exc), status_of(exc)
                if not isinstance(exc, RagError):
                    log.exception("ingest %s failed", job.id)
            finally:
                _settle_uploads(uploaded, job.report)
                job.finished = time.time()
                job.done.set()

        threading.Thread(target=run, name=f"rag-ingest-{job.id[:8]}", daemon=True).start()
        return job

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

    async def pieces(self, first: str | Answer) -> AsyncIterator[str | Answer]:
        try:
            piece = first
            while piece is not None:
                yield piece
                piece = await run_in_threadpool(next, self.stream, None)
        finally:
            await self.close()

    async def close(self) -> None:
        """Close the stream, which stops the model, and free the slot."""
        if self.closed:
            return
        self.closed = True
        with anyio.CancelScope(shield=True):
            try:
                await run_in_threadpool(self.stream.close)
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

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self.generation.close()


def _settle_uploads(uploaded: dict[Path, Path | None], report: dict[str, Any] | None) -> None:
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


def status_of(exc: BaseException) -> int:
    if not isinstance(exc, RagError):
        return 500
    return next((status for cls, status in STATUS.items() if isinstance(exc, cls)), 400)


def _message(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _sse(data: dict[str, Any]) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


def _sources(answer: Answer) -> list[dict[str, Any]]:
    """The sources of an answer, numbered as its ``[n]`` citations are."""
    cited = set(answer.citations)
    return [{"number": n, "chunk_id": hit.chunk.id, "source": hit.chunk.metadata.get("source"),
             "page": hit.chunk.metadata.get("page"), "title": hit.chunk.metadata.get("title") or None,
             "score": hit.score, "scores": hit.scores, "ranks": hit.ranks, "start": hit.chunk.start,
             "end": hit.chunk.end, "text": hit.chunk.text, "cited": n in cited}
            for n, hit in enumerate(answer.hits, start=1)]


def _rag_fields(answer: Answer) -> dict[str, Any]:
    """What travels beside OpenAI's fields: the sources and how the answer cites them."""
    return {"sources": _sources(answer), "citations": answer.citations,
            "unknown_citations": answer.unknown_citations, "cited_by": answer.cited_by,
            "warnings": answer.warnings, "timings": answer.timings}


def _usage(answer: Answer) -> dict[str, int]:
    prompt, completion = answer.usage.get("prompt_tokens", 0), answer.usage.get("completion_tokens", 0)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def create_app(pipeline: Pipeline, *, api_key: str | None = None) -> FastAPI:
    """The application over ``pipeline``; ``api_key`` (else ``server.api_key``) guards every endpoint
    but /health."""
    server = Server(pipeline)
    settings = server.settings
    app = FastAPI(title="rag", version="0.1.0", docs_url=None, redoc_url=None,
                  description="Answers from your own documents with local models: OpenAI-compatible and native endpoints.")
    app.state.server = server
    app.add_middleware(Guard, api_key=api_key or settings.api_key, max_request_bytes=settings.max_request_bytes,
                       max_upload_bytes=settings.max_upload_bytes)

    # -- errors: OpenAI's shape, never a traceback -------------------------------------------------

    @app.exception_handler(APIError)
    async def api_error(_: Request, exc: APIError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RagError)
    async def rag_error(_: Request, exc: RagError) -> JSONResponse:
        status = status_of(exc)
        return APIError(status, _message(exc), code=type(exc).__name__, kind="invalid_request_error"
                        if status < 500 else "server_error").response()

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_: Request, exc: RequestValidationError) -> JSONResponse:
        return _validation_error(exc.errors()).response()

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, exc: HTTPException) -> JSONResponse:
        codes = {404: "not_found", 405: "method_not_allowed"}
        return APIError(exc.status_code, str(exc.detail), code=codes.get(exc.status_code)).response(exc.headers)

    @app.exception_handler(BodyTooLarge)
    async def body_too_large(_: Request, exc: BodyTooLarge) -> JSONResponse:
        return _too_large(exc.args[0])

    @app.exception_handler(Exception)
    async def server_fault(_: Request, exc: Exception) -> JSONResponse:
        log.error("request failed", exc_info=exc)
        return APIError(500, "the server failed on this request; its log says why", code="server_error",
                        kind="server_error").response()

    # -- OpenAI-compatible ----------------------------------------------------------------------

    def model_card(model_id: str, **extra: Any) -> dict[str, Any]:
        return {"id": model_id, "object": "model", "created": server.created, "owned_by": "rag", **extra}

    def models() -> list[dict[str, Any]]:
        s = pipeline.settings
        return [model_card(server.model_id, kind="chat", generator=s.generation.model,
                           embedding=s.embedding.model, collection=s.store.collection),
                model_card(s.embedding.model, kind="embeddings")]

    @app.get("/v1/models")
    def list_models() -> dict[str, Any]:
        return {"object": "list", "data": models()}

    @app.get("/v1/models/{model_id:path}")
    def get_model(model_id: str) -> dict[str, Any]:
        for card in models():
            if card["id"] == model_id:
                return card
        raise _unknown_model(model_id, server.model_id)

    @app.post("/v1/chat/completions", response_model=None)
    async def chat_completions(body: ChatRequest, request: Request) -> JSONResponse | StreamingResponse:
        if body.model != server.model_id:
            raise _unknown_model(body.model, server.model_id)
        generation, first = await server.answer(body)
        limit = server.max_new_tokens(body)
        ident, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        base = {"id": ident, "created": created, "model": server.model_id}

        def finish_reason(answer: Answer) -> str:
            return "length" if answer.usage.get("completion_tokens", 0) >= limit else "stop"

        if not body.stream:
            pieces: list[str] = []
            answer = None
            async with aclosing(generation.pieces(first)) as pieces:
                async for piece in pieces:
                    if isinstance(piece, Answer):
                        answer = piece
                    elif await request.is_disconnected():
                        return JSONResponse({}, status_code=499)  # nobody to answer; the model is stopped
            assert answer is not None
            return JSONResponse({
                **base, "object": "chat.completion",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": answer.text},
                             "finish_reason": finish_reason(answer), "logprobs": None}],
                "usage": _usage(answer), **_rag_fields(answer),
            })

        include_usage = bool(body.stream_options and body.stream_options.include_usage)

        async def events() -> AsyncIterator[str]:
            chunk = {**base, "object": "chat.completion.chunk"}
            role_sent = False
            try:
                async with aclosing(generation.pieces(first)) as pieces:
                    async for piece in pieces:
                        if isinstance(piece, Answer):
                            yield _sse({**chunk, "choices": [{"index": 0, "delta": {} if role_sent else {"role": "assistant"},
                                                              "finish_reason": finish_reason(piece), "logprobs": None}],
                                        **_rag_fields(piece)})
                            if include_usage:
                                yield _sse({**chunk, "choices": [], "usage": _usage(piece)})
                            continue
                        delta = {"content": piece} if role_sent else {"role": "assistant", "content": piece}
                        role_sent = True
                        yield _sse({**chunk, "choices": [{"index": 0, "delta": delta, "finish_reason": None,
                                                          "logprobs": None}]})
            except Exception as exc:
                if not isinstance(exc, RagError):
                    log.error("streamed answer failed", exc_info=exc)
                yield _sse(error_body(_message(exc) if isinstance(exc, RagError) else
                                      "the server failed on this request; its log says why", "server_error"))
            yield "data: [DONE]\n\n"

        return AnswerStream(events(), generation)

    @app.post("/v1/embeddings")
    def embeddings(body: EmbeddingsRequest) -> dict[str, Any]:
        embedder = pipeline.embedder
        if body.model not in (server.model_id, pipeline.settings.embedding.model):
            raise _unknown_model(body.model, pipeline.settings.embedding.model)
        texts = [body.input] if isinstance(body.input, str) else body.input
        if not texts or not all(isinstance(t, str) for t in texts):
            raise APIError(400, "input: send a text or a list of texts (token ids are not accepted)", param="input")
        if len(texts) > MAX_EMBEDDING_INPUTS:
            raise APIError(400, f"input: at most {MAX_EMBEDDING_INPUTS} texts per request", param="input")
        lengths = [len(ids) for ids in embedder.tokenizer(list(texts), add_special_tokens=True)["input_ids"]]
        for i, (text, n) in enumerate(zip(texts, lengths)):
            if not text.strip():
                raise APIError(400, f"input[{i}] is empty", param="input")
            if n > embedder.max_length:
                raise APIError(400, f"input[{i}] is {n} tokens; {pipeline.settings.embedding.model} reads at most "
                                    f"{embedder.max_length} (split it first)", param="input")
        embed = embedder.embed_queries if body.input_type == "query" else embedder.embed_documents
        vectors = np.asarray(embed(list(texts)), dtype=np.float32)
        encode = (lambda v: base64.b64encode(v.astype("<f4").tobytes()).decode("ascii")) \
            if body.encoding_format == "base64" else (lambda v: v.tolist())
        return {"object": "list", "model": body.model,
                "data": [{"object": "embedding", "index": i, "embedding": encode(v)} for i, v in enumerate(vectors)],
                "usage": {"prompt_tokens": sum(lengths), "total_tokens": sum(lengths)}}

    # -- native ---------------------------------------------------------------------------------

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/info")
    def info() -> dict[str, Any]:
        running = sum(job.status in ("queued", "running") for job in server.jobs.values())
        return {**pipeline.info(), "server": {
            "model_id": server.model_id, "generator": pipeline.settings.generation.model,
            "generations": {"slots": settings.generations, "active": server.generating, "waiting": server.waiting},
            "ingests_running": running, "uploads": str(server.uploads),
            "root": str(server.root) if server.root else None}}

    @app.post("/search")
    def search(body: SearchRequest) -> dict[str, Any]:
        hits = pipeline.search(body.query, body.k, mode=body.mode, where=body.where)
        return {"query": body.query, "mode": body.mode or pipeline.settings.retrieval.mode,
                "hits": [hit.to_dict() for hit in hits]}

    @app.post("/ingest", status_code=200, response_model=None)
    async def ingest(request: Request, wait: float | None = Query(None, ge=0, le=3600)) -> JSONResponse:
        kind = request.headers.get("content-type", "")
        if kind.startswith("multipart/form-data"):
            job = await _ingest_uploads(server, request)
        elif kind.startswith("application/json"):
            try:
                body = IngestPaths.model_validate_json(await request.body())
            except ValidationError as exc:
                raise _validation_error(exc.errors()) from None
            paths = [server.server_path(p) for p in body.paths]
            job = server.start_ingest(paths, sync=body.sync)
        else:
            raise APIError(415, "send files as multipart/form-data (field 'files'), or JSON {\"paths\": [...]}",
                           code="unsupported_media_type")
        finished = await run_in_threadpool(job.done.wait, settings.ingest_wait if wait is None else wait)
        return _job_response(job, finished)

    @app.get("/ingest/{job_id}", response_model=None)
    def ingest_status(job_id: str) -> JSONResponse:
        job = server.jobs.get(job_id)
        if job is None:
            raise APIError(404, f"no ingest {job_id!r} on this server (jobs are kept until it restarts)",
                           code="not_found")
        return _job_response(job, job.done.is_set(), status_only=True)

    @app.delete("/documents")
    def delete_document(source: str = Query(..., min_length=1)) -> dict[str, Any]:
        candidates = [source]
        if not source.startswith("/"):
            try:
                candidates.append(str(server.upload_path(source)))
            except APIError:
                pass
        report = pipeline.remove(candidates)
        if not report.removed:
            raise APIError(404, f"no document with source {source!r} in the store; /search shows each hit's source",
                           code="not_found", param="source")
        for candidate in candidates:  # an uploaded file goes with its chunks
            path = Path(candidate).resolve()
            if path.is_relative_to(server.uploads):
                path.unlink(missing_ok=True)
        return {"source": source, **report.as_dict()}

    @app.get("/", response_class=HTMLResponse)
    def chat_page() -> HTMLResponse:
        return HTMLResponse(resources.files("rag.server").joinpath("static/chat.html").read_text(encoding="utf-8"))

    return app


async def _ingest_uploads(server: Server, request: Request) -> IngestJob:
    """Save the uploaded files under the upload folder (each replacing a file of its name, kept aside
    until the ingest shows the new one loads), then ingest them."""
    try:
        form = await request.form(max_files=10_000, max_fields=100)
    except BodyTooLarge:
        raise
    except Exception as exc:
        raise APIError(400, f"the upload could not be read as multipart/form-data: {_message(exc)}",
                       code="bad_upload") from None
    files = [item for key in ("files", "file") for item in form.getlist(key) if hasattr(item, "filename")]
    if not files:
        raise APIError(400, "no files in the upload: send them in the form field 'files'", param="files")
    targets = [server.upload_path(item.filename) for item in files]  # every name checked before any is saved
    uploaded: dict[Path, Path | None] = {}
    for item, target in zip(files, targets):
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{target.name}.upload-{uuid.uuid4().hex[:8]}")
        with open(partial, "wb") as out:
            while chunk := await item.read(1 << 20):
                out.write(chunk)
        previous = None
        if target.exists() and target not in uploaded:
            previous = target.with_name(f".{target.name}.previous-{uuid.uuid4().hex[:8]}")
            os.replace(target, previous)
        os.replace(partial, target)
        uploaded.setdefault(target, previous)
    await form.close()
    return server.start_ingest(list(uploaded), uploaded=uploaded, files_total=len(uploaded))


def _job_response(job: IngestJob, finished: bool, *, status_only: bool = False) -> JSONResponse:
    """A finished ingest: 200 with its summary, or 422 when files failed (the rest is ingested) or
    500/409 when the ingest itself failed; one still running: 202 with its progress."""
    body = job.as_dict()
    if not finished:
        return JSONResponse(body, status_code=202, headers={"Location": f"/ingest/{job.id}"})
    if job.status == "failed":
        return JSONResponse(body, status_code=200 if status_only else job.failure_status)
    failures = (job.report or {}).get("failures", [])
    if failures and not status_only:
        reasons = "; ".join(f"{Path(f['source']).name}: {f['reason']}" for f in failures[:5])
        message = f"{len(failures)} file(s) could not be ingested ({reasons}); the others were"
        return JSONResponse(body | error_body(message, "invalid_request_error", "files_failed"), status_code=422)
    return JSONResponse(body)


def _validation_error(errors: list[dict[str, Any]]) -> APIError:
    """A pydantic error as one line naming the field."""
    first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
    if first.get("type") == "json_invalid":
        return APIError(400, f"the request body is not valid JSON: {first.get('ctx', {}).get('error', first['msg'])}",
                        code="invalid_json")
    loc = [str(part) for part in first.get("loc", ()) if part not in ("body", "query")]
    param = ".".join(loc) or None
    message = f"{param}: {first['msg']}" if param else str(first["msg"])
    if len(errors) > 1:
        message += f" (and {len(errors) - 1} more)"
    return APIError(400, message, param=param)


def _unknown_model(model: str, available: str) -> APIError:
    return APIError(404, f"model {model!r} does not exist here; use {available!r} (GET /v1/models lists them)",
                    code="model_not_found", param="model")
