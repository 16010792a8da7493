"""Every error the server sends has OpenAI's shape, ``{"error": {"message", "type", "code", "param"}}``,
with a 4xx the caller can act on; a fault of our own is a 500 whose body says only that (the
traceback goes to the server's log)."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from rag.errors import (
    ConfigError,
    GenerationError,
    LoadError,
    ModelError,
    ModelServerError,
    ModelServerTimeout,
    PromptError,
    RagError,
    StoreError,
)

log = logging.getLogger("rag.server")

# A RagError's HTTP status: what the caller did (400), what the store's state forbids now (409), a
# file that cannot be read (422), the server's own configuration (500), a model server behind this one
# that failed (502) or did not answer in time (504).
STATUS = {ModelServerTimeout: 504, ModelServerError: 502, ConfigError: 400, GenerationError: 400, StoreError: 409,
          LoadError: 422, ModelError: 500, PromptError: 500}
SERVER_FAULT = "the server failed on this request; its log says why"


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


class BodyTooLarge(Exception):
    """A request body grew past the limit while it arrived (rag.server.guard)."""


def error_body(message: str, kind: str = "invalid_request_error", code: str | None = None,
               param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "code": code, "param": param}}


def status_of(exc: BaseException) -> int:
    if not isinstance(exc, RagError):
        return 500
    return next((status for cls, status in STATUS.items() if isinstance(exc, cls)), 400)


def message_of(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def too_large(limit: int) -> JSONResponse:
    return APIError(413, f"the request body is larger than this server accepts ({limit:,} bytes; "
                         "server.max_request_bytes, or server.max_upload_bytes for /ingest)",
                    code="request_too_large").response()


def validation_error(errors: Any) -> APIError:
    """A pydantic error as one line naming the field."""
    first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
    if first.get("type") == "json_invalid":
        context = first.get("ctx")
        detail = context.get("error", first["msg"]) if isinstance(context, dict) else first["msg"]
        return APIError(400, f"the request body is not valid JSON: {detail}", code="invalid_json")
    loc = [str(part) for part in first.get("loc", ()) if part not in ("body", "query")]
    param = ".".join(loc) or None
    message = f"{param}: {first['msg']}" if param else str(first["msg"])
    if len(errors) > 1:
        message += f" (and {len(errors) - 1} more)"
    return APIError(400, message, param=param)


def unknown_model(model: str, available: str) -> APIError:
    return APIError(404, f"model {model!r} does not exist here; use {available!r} (GET /v1/models lists them)",
                    code="model_not_found", param="model")


def add_error_handlers(app: FastAPI) -> None:
    """Whatever goes wrong reaches the caller as OpenAI's error body, never as a traceback."""

    @app.exception_handler(APIError)
    async def api_error(_: Request, exc: APIError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RagError)
    async def rag_error(_: Request, exc: RagError) -> JSONResponse:
        status = status_of(exc)
        kind = "invalid_request_error" if status < 500 else "server_error"
        return APIError(status, message_of(exc), code=type(exc).__name__, kind=kind).response()

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_: Request, exc: RequestValidationError) -> JSONResponse:
        return validation_error(exc.errors()).response()

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, exc: HTTPException) -> JSONResponse:
        codes = {404: "not_found", 405: "method_not_allowed"}
        headers = dict(exc.headers) if exc.headers else None
        return APIError(exc.status_code, str(exc.detail), code=codes.get(exc.status_code)).response(headers)

    @app.exception_handler(BodyTooLarge)
    async def body_too_large(_: Request, exc: BodyTooLarge) -> JSONResponse:
        return too_large(exc.args[0])

    @app.exception_handler(Exception)
    async def server_fault(_: Request, exc: Exception) -> JSONResponse:
        log.error("request failed", exc_info=exc)
        return APIError(500, SERVER_FAULT, code="server_error", kind="server_error").response()
