"""What every request passes before any endpoint: the API key and the size of its body."""

from __future__ import annotations

import base64
import hmac
from typing import Any

from rag.server.errors import APIError, BodyTooLarge, too_large


class Guard:
    """ASGI middleware: the API key (every path but /health) and the size of the body, counted as it
    arrives as well as from Content-Length, so no oversized body is ever read whole."""

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
            denied = APIError(401, message, code="invalid_api_key").response({"WWW-Authenticate": challenge})
            return await denied(scope, receive, send)
        limit = self.max_upload_bytes if path == "/ingest" else self.max_request_bytes
        length = headers.get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > limit):
            return await too_large(limit)(scope, receive, send)
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
        assert self.api_key is not None
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
