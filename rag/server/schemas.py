"""The request bodies the server accepts: OpenAI's chat and embeddings requests (what their clients
send, with our retrieval options as extras) and the native search and ingest requests.

Unknown fields are ignored, as OpenAI-compatible servers do, so a client sending ``user`` or
``frequency_penalty`` still works; a field we do read is checked, and a bad one is a 400 naming it.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from rag.types import RetrievalMode


class Request(BaseModel):
    model_config = ConfigDict(extra="ignore")


class TextPart(Request):
    type: str = "text"
    text: str = ""


class Message(Request):
    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str | list[TextPart] | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(part.text for part in self.content if part.type == "text")
        return self.content or ""


class StreamOptions(Request):
    include_usage: bool = False


class ChatRequest(Request):
    model: str
    messages: list[Message] = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    n: int = Field(default=1, ge=1, le=1)
    # Ours: how the sources are retrieved (OpenAI clients send them with extra_body).
    k: int | None = Field(default=None, ge=1, le=1000)
    mode: RetrievalMode | None = None
    where: dict[str, Any] | None = None

    def generation_options(self) -> dict[str, Any]:
        """The request's answer settings, named as rag.generation.REQUEST_OPTIONS; unset ones left out."""
        stop = [self.stop] if isinstance(self.stop, str) else self.stop
        options = {
            "max_new_tokens": self.max_completion_tokens or self.max_tokens,
            "temperature": self.temperature, "top_p": self.top_p, "stop": stop, "seed": self.seed,
        }
        return {name: value for name, value in options.items() if value is not None}


class EmbeddingsRequest(Request):
    model: str
    input: str | list[str] | list[int] | list[list[int]]
    encoding_format: Literal["float", "base64"] = "float"
    # Ours: queries and documents may be embedded differently (a model's query prefix).
    input_type: Literal["document", "query"] = "document"


class SearchRequest(Request):
    query: str
    k: int | None = Field(default=None, ge=1, le=1000)
    mode: RetrievalMode | None = None
    where: dict[str, Any] | None = None


class IngestPaths(Request):
    paths: list[str] = Field(min_length=1)
    sync: bool = False
