"""An OpenAI-compatible model server, as the generator and the embedder use it: Ollama, vLLM, llama.cpp's
server, Text Generation Inference, LM Studio, `transformers serve`, another `rag serve`.

httpx underneath (the ``openai`` extra), one pool of kept-alive connections per stage, so a request
pays no new handshake. A request that fails before any answer arrives (the server unreachable, or
busy: 429, 502, 503, 504) is tried again ``retries`` times after a growing pause; what cannot succeed
(a wrong key, an unknown model, a bad request) fails at once. Every failure is one ModelServerError
line naming the server, the setting to look at, and the server's own words.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlparse

from rag.errors import ConfigError, ModelServerError, ModelServerTimeout
from rag.text import one_line

# Busy or briefly away: worth another try. Anything else the server says will not change on a retry.
RETRY_STATUS = frozenset({408, 429, 502, 503, 504})
FIRST_PAUSE = 0.5  # seconds before the first retry, doubled for each next one
MAX_PAUSE = 10.0  # the longest pause, whatever Retry-After asks
CONNECT_TIMEOUT = 10.0  # a server that exists accepts a connection at once; the rest is `timeout`
# Environment variables read when the api_key setting is unset, per section.
API_KEY_VARIABLES = {"generation": "RAG_GENERATION_API_KEY", "embedding": "RAG_EMBEDDING_API_KEY"}


def api_root(base_url: str) -> str:
    """The API root requests are made under: ``base_url`` without a trailing slash, with ``/v1``
    added when it names no path (``http://host:11434`` means ``http://host:11434/v1``)."""
    url = base_url.strip().rstrip("/")
    return url + "/v1" if urlparse(url).path in ("", "/") else url


class ModelServer:
    """Requests to one model server for one stage (``section``: generation or embedding, which names
    the settings in messages) and one model."""

    def __init__(self, base_url: str, *, model: str, api_key: str | None, timeout: float, retries: int,
                 section: str):
        try:
            import httpx
        except ImportError:
            raise ConfigError(f'{section}.backend: openai needs the openai extra: pip install -e ".[openai]"') from None
        self.httpx = httpx
        self.section = section
        self.url = api_root(base_url)
        self.model = model
        self.api_key = api_key
        self.timeout = timeout
        self.retries = retries
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.client = httpx.Client(base_url=self.url + "/", headers=headers,
                                   timeout=httpx.Timeout(timeout, connect=min(timeout, CONNECT_TIMEOUT)))

    def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """A JSON request and its JSON answer."""
        response = self._send(path, body, stream=False)
        try:
            answer = response.json()
        except ValueError:
            raise self.malformed(f"{path} answered with something that is not JSON: {response.text!r}") from None
        if not isinstance(answer, dict):
            raise self.malformed(f"{path} answered {answer!r}")
        return answer

    def open_stream(self, path: str, body: dict[str, Any]) -> Any:
        """A streamed request once the server has accepted it: its response, to read events from
        with ``events`` and to close. Everything that fails before the first event fails here."""
        response = self._send(path, body, stream=True)
        kind = response.headers.get("content-type", "").partition(";")[0].strip()
        if kind != "text/event-stream":
            response.read()
            response.close()
            raise self.malformed(f"{path} answered {kind or 'no content type'}, not an event stream: "
                                 f"{response.text!r}")
        return response

    def events(self, response: Any) -> Iterator[dict[str, Any]]:
        """The JSON events of a stream until ``[DONE]`` or its end. An event that is not JSON, or an
        error event, raises ModelServerError; a network failure is httpx's own error."""
        from httpx_sse import EventSource

        for event in EventSource(response).iter_sse():
            if event.data == "[DONE]":
                return
            if not event.data:
                continue
            try:
                data = json.loads(event.data)
            except ValueError:
                raise self.malformed(f"an event of the stream is not JSON: {event.data!r}") from None
            if not isinstance(data, dict):
                raise self.malformed(f"an event of the stream is {data!r}")
            if "error" in data or event.event == "error":
                raise ModelServerError(f"{self.section}: the model server at {self.url} reported an error in the "
                                       f"stream: {one_line(_error_text(data), 300)}")
            yield data

    def served(self) -> list[str] | None:
        """The model ids the server lists (GET /models), or None when it lists none readable."""
        try:
            response = self.client.get("models")
            data = response.json().get("data") if response.status_code == 200 else None
            return [str(card["id"]) for card in data] if isinstance(data, list) else None
        except (self.httpx.HTTPError, ValueError, KeyError, TypeError, AttributeError):
            return None

    def malformed(self, detail: str) -> ModelServerError:
        return ModelServerError(f"{self.section}.base_url: the server at {self.url} does not answer as an "
                                f"OpenAI-compatible server: {one_line(detail)}")

    def timed_out(self, what: str) -> ModelServerTimeout:
        return ModelServerTimeout(f"{self.section}.timeout: {what} from the model server at {self.url} within "
                                  f"{self.timeout:g} s; raise {self.section}.timeout if it is busy or slow")

    def close(self) -> None:
        self.client.close()

    # -- sending, with retries -----------------------------------------------------------------

    def _send(self, path: str, body: dict[str, Any], *, stream: bool) -> Any:
        httpx = self.httpx
        attempt = 0
        while True:
            pause = FIRST_PAUSE * 2**attempt
            try:
                request = self.client.build_request("POST", path, json=body)
                response = self.client.send(request, stream=stream)
            except httpx.ConnectError as exc:
                failure: ModelServerError = ModelServerError(
                    f"{self.section}.base_url: cannot reach the model server at {self.url} "
                    f"({one_line(exc) or type(exc).__name__}); start it, or check the address")
            except httpx.ConnectTimeout:
                failure = self.timed_out("no connection")
            except httpx.TimeoutException:
                # Only a connection that never opened is tried again: a server that took the request
                # and is slow to answer would only be given it twice.
                raise self.timed_out("no answer") from None
            except httpx.TransportError as exc:
                failure = ModelServerError(f"{self.section}.base_url: the connection to the model server at "
                                           f"{self.url} failed ({one_line(exc) or type(exc).__name__})")
            else:
                if response.status_code < 400:
                    return response
                if stream:
                    response.read()
                response.close()
                if response.status_code not in RETRY_STATUS or attempt >= self.retries:
                    raise self._refused(path, response) from None
                failure = self._refused(path, response)
                pause = max(pause, _retry_after(response))
            if attempt >= self.retries:
                raise failure from None
            attempt += 1
            time.sleep(min(pause, MAX_PAUSE))

    def _refused(self, path: str, response: Any) -> ModelServerError:
        status = response.status_code
        said = one_line(_error_text(_json_or_text(response)), 300)
        where = f"the model server at {self.url}"
        if status in (401, 403):
            variable = API_KEY_VARIABLES.get(self.section, "")
            sent = "it refused the API key" if self.api_key else "no API key was sent"
            return ModelServerError(f"{self.section}.api_key: {where} answered {status} ({said}); {sent}: set "
                                    f"{self.section}.api_key or {variable}")
        if status in (400, 404, 422):
            served = self.served()
            if served is not None and self.model not in served:
                listed = ", ".join(repr(m) for m in served[:10]) or "no models"
                return ModelServerError(f"{self.section}.model: {where} does not serve {self.model!r}; it serves "
                                        f"{listed} ({status}: {said})")
            if status == 404 and served is None:
                return ModelServerError(f"{self.section}.base_url: {where} has no {path} ({said}); an "
                                        "OpenAI-compatible API usually ends in /v1")
        if status in (408, 504):
            return self.timed_out(f"no answer ({status}: {said})")
        return ModelServerError(f"{self.section}: {where} refused the request ({status}: {said})")


def _json_or_text(response: Any) -> Any:
    try:
        return response.json()
    except ValueError:
        return response.text


def _error_text(body: Any) -> str:
    """The server's own words about an error, from the shapes servers use: OpenAI's
    ``{"error": {"message"}}``, ``{"error": "..."}``, FastAPI's ``{"detail": ...}``, or plain text."""
    if isinstance(body, dict):
        error = body.get("error", body.get("detail", body.get("message")))
        if isinstance(error, dict):
            return str(error.get("message") or error)
        if error is not None:
            return str(error)
    return str(body) or "no reason given"


def _retry_after(response: Any) -> float:
    try:
        return float(response.headers.get("retry-after", 0))
    except ValueError:
        return 0.0
