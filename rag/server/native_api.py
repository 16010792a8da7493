"""The native endpoints, for what OpenAI's API cannot say: ``/search``, ``/ingest`` (uploads or paths
under ``--root``, as background jobs), ``DELETE /documents``, ``/info``, ``/health`` and the chat page."""

from __future__ import annotations

import os
import uuid
from contextlib import suppress
from importlib import resources
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from rag.server.errors import APIError, BodyTooLarge, error_body, message_of, validation_error
from rag.server.schemas import IngestPaths, SearchRequest
from rag.server.state import IngestJob, Server, Shared

router = APIRouter()


@router.get("/health")
def health() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/info")
def info(server: Shared) -> dict[str, Any]:
    running = sum(job.status in ("queued", "running") for job in server.jobs.values())
    return {**server.pipeline.info(), "server": {
        "model_id": server.model_id, "generator": server.pipeline.settings.generation.model,
        "generations": {"slots": server.settings.generations, "active": server.generating,
                        "waiting": server.waiting},
        "ingests_running": running, "uploads": str(server.uploads),
        "root": str(server.root) if server.root else None}}


@router.post("/search")
def search(body: SearchRequest, server: Shared) -> dict[str, Any]:
    pipeline = server.pipeline
    hits = pipeline.search(body.query, body.k, mode=body.mode, where=body.where)
    return {"query": body.query, "mode": body.mode or pipeline.settings.retrieval.mode,
            "hits": [hit.to_dict() for hit in hits]}


@router.post("/ingest", status_code=200, response_model=None)
async def ingest(request: Request, server: Shared, wait: float | None = Query(None, ge=0, le=3600)) -> JSONResponse:
    kind = request.headers.get("content-type", "")
    if kind.startswith("multipart/form-data"):
        job = await _ingest_uploads(server, request)
    elif kind.startswith("application/json"):
        try:
            body = IngestPaths.model_validate_json(await request.body())
        except ValidationError as exc:
            raise validation_error(exc.errors()) from None
        job = server.start_ingest([server.server_path(p) for p in body.paths], sync=body.sync)
    else:
        raise APIError(415, "send files as multipart/form-data (field 'files'), or JSON {\"paths\": [...]}",
                       code="unsupported_media_type")
    finished = await run_in_threadpool(job.done.wait, server.settings.ingest_wait if wait is None else wait)
    return _job_response(job, finished)


@router.get("/ingest/{job_id}", response_model=None)
def ingest_status(job_id: str, server: Shared) -> JSONResponse:
    job = server.jobs.get(job_id)
    if job is None:
        raise APIError(404, f"no ingest {job_id!r} on this server (the newest finished ones are kept until it "
                            "restarts)", code="not_found")
    return _job_response(job, job.done.is_set(), status_only=True)


@router.delete("/documents")
def delete_document(server: Shared, source: str = Query(..., min_length=1)) -> dict[str, Any]:
    candidates = [source]
    if not source.startswith("/"):
        with suppress(APIError):
            candidates.append(str(server.upload_path(source)))
    report = server.pipeline.remove(candidates)
    if not report.removed:
        raise APIError(404, f"no document with source {source!r} in the store; /search shows each hit's source",
                       code="not_found", param="source")
    for candidate in candidates:  # an uploaded file goes with its chunks
        path = Path(candidate).resolve()
        if path.is_relative_to(server.uploads):
            path.unlink(missing_ok=True)
    return {"source": source, **report.as_dict()}


@router.get("/", response_class=HTMLResponse)
def chat_page() -> HTMLResponse:
    return HTMLResponse(resources.files("rag.server").joinpath("static/chat.html").read_text(encoding="utf-8"))


async def _ingest_uploads(server: Server, request: Request) -> IngestJob:
    """Save the uploaded files under the upload folder (each replacing a file of its name, kept aside
    until the ingest shows the new one loads), then ingest them."""
    try:
        form = await request.form(max_files=10_000, max_fields=100)
    except BodyTooLarge:
        raise
    except Exception as exc:
        raise APIError(400, f"the upload could not be read as multipart/form-data: {message_of(exc)}",
                       code="bad_upload") from None
    files = [item for key in ("files", "file") for item in form.getlist(key) if not isinstance(item, str)]
    if not files:
        raise APIError(400, "no files in the upload: send them in the form field 'files'", param="files")
    targets = [server.upload_path(item.filename) for item in files]  # every name checked before any is saved
    uploaded: dict[Path, Path | None] = {}
    for item, target in zip(files, targets, strict=True):
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
