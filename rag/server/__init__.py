"""`rag serve`: the pipeline over HTTP (FastAPI on uvicorn; ``pip install -e ".[serve]"``).

``create_app`` (rag.server.app) builds the application over one Pipeline; ``serve`` checks that the
address is safe to bind, loads the models before the first request, and runs it.
"""

from __future__ import annotations

import contextlib
import ipaddress
import sys

from rag.errors import ConfigError, RagError


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def warm(pipeline) -> None:
    """Load the models and open the store now, so the first request is as fast as the others and two
    first requests never load a model twice."""
    pipeline.embedder.embed_queries(["warm up"])
    pipeline.generator.load()  # also settles its "auto" answer settings, which the prompt template follows
    with contextlib.suppress(RagError):  # no collection yet: the first ingest creates it
        pipeline.retriever()


def serve(pipeline, *, host: str | None = None, port: int | None = None, api_key: str | None = None) -> None:
    """Run the server until interrupted. Binding beyond loopback needs an API key."""
    try:
        import uvicorn

        from rag.server.app import create_app
    except ImportError as exc:
        raise ConfigError(
            f'rag serve needs the serve extra: pip install -e ".[serve]" ({exc.name} is missing)') from None
    settings = pipeline.settings.server
    host = host or settings.host
    port = settings.port if port is None else port
    key = api_key or settings.api_key
    if not is_loopback(host) and not key:
        raise ConfigError(f"rag serve: refusing to listen on {host} without an API key; pass --api-key KEY or set "
                          "RAG_API_KEY (or bind to 127.0.0.1)")
    print(f"rag: loading models for {pipeline.settings.store.collection!r}", file=sys.stderr)
    warm(pipeline)
    app = create_app(pipeline, api_key=key)
    shown = f"[{host}]" if ":" in host else host
    print(f"rag: serving on http://{shown}:{port} (model {settings.model_id!r}; chat page at /)",
          file=sys.stderr, flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=5)
