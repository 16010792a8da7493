"""The FastAPI application behind `rag serve`: one Pipeline shared by every request.

The endpoints are two routers: the OpenAI-compatible ones (rag.server.openai_api) and the native
ones (rag.server.native_api). Every request first passes the Guard (API key, body size); every error
leaves as OpenAI's error body (rag.server.errors). Endpoints that search or embed run in the thread
pool, side by side; answers queue for the generator (rag.server.state).
"""

from __future__ import annotations

from importlib.metadata import version

from fastapi import FastAPI

from rag.pipeline import Pipeline
from rag.server import native_api, openai_api
from rag.server.errors import add_error_handlers
from rag.server.guard import Guard
from rag.server.state import Server


def create_app(pipeline: Pipeline, *, api_key: str | None = None) -> FastAPI:
    """The application over ``pipeline``; ``api_key`` (else ``server.api_key``) guards every endpoint
    but /health."""
    server = Server(pipeline)
    settings = server.settings
    app = FastAPI(title="rag", version=version("rag"), docs_url=None, redoc_url=None,
                  description="Answers from your own documents with local models: OpenAI-compatible and "
                              "native endpoints.")
    app.state.server = server
    app.add_middleware(Guard, api_key=api_key or settings.api_key, max_request_bytes=settings.max_request_bytes,
                       max_upload_bytes=settings.max_upload_bytes)
    add_error_handlers(app)
    app.include_router(openai_api.router)
    app.include_router(native_api.router)
    return app
