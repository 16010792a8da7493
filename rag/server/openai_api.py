"""The OpenAI-compatible endpoints (``/v1/chat/completions``, ``/v1/embeddings``, ``/v1/models``): the
official clients work unchanged with ``base_url``. An answer carries its sources beside OpenAI's
fields (in the last streamed chunk when streamed)."""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse

from rag.errors import RagError
from rag.server.errors import SERVER_FAULT, APIError, error_body, log, message_of, unknown_model
from rag.server.schemas import ChatRequest, EmbeddingsRequest
from rag.server.state import AnswerStream, Generation, Server, Shared
from rag.types import Answer

router = APIRouter()
MAX_EMBEDDING_INPUTS = 2048  # OpenAI's own limit per request


def sources(answer: Answer) -> list[dict[str, Any]]:
    """The sources of an answer, numbered as its ``[n]`` citations are: each hit as everywhere else
    (Hit.to_dict), with its number, whether the answer cites it, and ``chunk_id``, the name the HTTP
    API has always given ``id``."""
    cited = set(answer.citations)
    return [{"number": n, **hit.to_dict(), "chunk_id": hit.chunk.id,
             "title": hit.chunk.metadata.get("title") or None, "cited": n in cited}
            for n, hit in enumerate(answer.hits, start=1)]


def rag_fields(answer: Answer) -> dict[str, Any]:
    """What travels beside OpenAI's fields: the sources and how the answer cites them."""
    return {"sources": sources(answer), "citations": answer.citations,
            "unknown_citations": answer.unknown_citations, "cited_by": answer.cited_by,
            "warnings": answer.warnings, "timings": answer.timings}


def usage(answer: Answer) -> dict[str, int]:
    prompt, completion = answer.usage.get("prompt_tokens", 0), answer.usage.get("completion_tokens", 0)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def sse(data: dict[str, Any]) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


def _models(server: Server) -> list[dict[str, Any]]:
    s = server.pipeline.settings

    def card(model_id: str, **extra: Any) -> dict[str, Any]:
        return {"id": model_id, "object": "model", "created": server.created, "owned_by": "rag", **extra}

    return [card(server.model_id, kind="chat", generator=s.generation.model, embedding=s.embedding.model,
                 collection=s.store.collection),
            card(s.generation.model, kind="generator"),  # chat with the generator alone (rag.server.plain)
            card(s.embedding.model, kind="embeddings")]


@router.get("/v1/models")
def list_models(server: Shared) -> dict[str, Any]:
    return {"object": "list", "data": _models(server)}


@router.get("/v1/models/{model_id:path}")
def get_model(model_id: str, server: Shared) -> dict[str, Any]:
    for card in _models(server):
        if card["id"] == model_id:
            return card
    raise unknown_model(model_id, server.model_id)


@router.post("/v1/chat/completions", response_model=None)
async def chat_completions(body: ChatRequest, request: Request, server: Shared) -> JSONResponse | StreamingResponse:
    plain = body.model == server.pipeline.settings.generation.model and body.model != server.model_id
    if body.model != server.model_id and not plain:
        raise unknown_model(body.model, server.model_id)
    generation, first = await server.answer(body, plain=plain)
    completion = Completion(body.model, server.max_new_tokens(body), sources=not plain)
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return AnswerStream(completion.events(generation, first, include_usage=include_usage), generation)
    answer = None
    async with aclosing(generation.pieces(first)) as pieces:
        async for piece in pieces:
            if isinstance(piece, Answer):
                answer = piece
            elif await request.is_disconnected():
                return JSONResponse({}, status_code=499)  # nobody to answer; the model is stopped
    assert answer is not None
    if answer.interrupted:  # the model server behind this one failed mid-answer
        raise APIError(502, answer.interrupted, code="upstream_interrupted", kind="server_error")
    return JSONResponse(completion.whole(answer))


class Completion:
    """One chat completion in OpenAI's shapes: whole, or as server-sent events; with the answer's
    sources (``sources``), or without them (the generator's plain chat)."""

    def __init__(self, model_id: str, limit: int, *, sources: bool = True):
        self.limit = limit
        self.base = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": model_id}
        self.extra = rag_fields if sources else (lambda _: {})

    def finish_reason(self, answer: Answer) -> str:
        return "length" if answer.usage.get("completion_tokens", 0) >= self.limit else "stop"

    def whole(self, answer: Answer) -> dict[str, Any]:
        return {**self.base, "object": "chat.completion",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": answer.text},
                             "finish_reason": self.finish_reason(answer), "logprobs": None}],
                "usage": usage(answer), **self.extra(answer)}

    async def events(self, generation: Generation, first: str | Answer, *,
                     include_usage: bool) -> AsyncIterator[str]:
        chunk = {**self.base, "object": "chat.completion.chunk"}
        role_sent = False
        try:
            async with aclosing(generation.pieces(first)) as pieces:
                async for piece in pieces:
                    if isinstance(piece, Answer):
                        delta = {} if role_sent else {"role": "assistant"}
                        choice = {"index": 0, "delta": delta, "finish_reason": self.finish_reason(piece),
                                  "logprobs": None}
                        yield sse({**chunk, "choices": [choice], **self.extra(piece)})
                        if include_usage:
                            yield sse({**chunk, "choices": [], "usage": usage(piece)})
                        if piece.interrupted:  # the model server behind this one failed mid-answer
                            yield sse(error_body(piece.interrupted, "server_error", "upstream_interrupted"))
                        continue
                    delta = {"content": piece} if role_sent else {"role": "assistant", "content": piece}
                    role_sent = True
                    yield sse({**chunk, "choices": [{"index": 0, "delta": delta, "finish_reason": None,
                                                     "logprobs": None}]})
        except Exception as exc:
            if not isinstance(exc, RagError):
                log.error("streamed answer failed", exc_info=exc)
            yield sse(error_body(message_of(exc) if isinstance(exc, RagError) else SERVER_FAULT, "server_error"))
        yield "data: [DONE]\n\n"


@router.post("/v1/embeddings")
def embeddings(body: EmbeddingsRequest, server: Shared) -> dict[str, Any]:
    pipeline = server.pipeline
    model = pipeline.settings.embedding.model
    if body.model not in (server.model_id, model):
        raise unknown_model(body.model, model)
    texts = _embedding_texts(body.input)
    embedder = pipeline.embedder
    lengths = [len(ids) for ids in embedder.tokenizer(texts, add_special_tokens=True)["input_ids"]]
    for i, (text, n) in enumerate(zip(texts, lengths, strict=True)):
        if not text.strip():
            raise APIError(400, f"input[{i}] is empty", param="input")
        if n > embedder.max_length:
            raise APIError(400, f"input[{i}] is {n} tokens; {model} reads at most {embedder.max_length} "
                                "(split it first)", param="input")
    embed = embedder.embed_queries if body.input_type == "query" else embedder.embed_documents
    vectors = np.asarray(embed(texts), dtype=np.float32)

    def encode(vector: np.ndarray) -> str | list[float]:
        if body.encoding_format == "base64":
            return base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii")
        return vector.tolist()

    return {"object": "list", "model": body.model,
            "data": [{"object": "embedding", "index": i, "embedding": encode(v)} for i, v in enumerate(vectors)],
            "usage": {"prompt_tokens": sum(lengths), "total_tokens": sum(lengths)}}


def _embedding_texts(given: Any) -> list[str]:
    texts = [given] if isinstance(given, str) else given
    if not texts or not all(isinstance(t, str) for t in texts):
        raise APIError(400, "input: send a text or a list of texts (token ids are not accepted)", param="input")
    if len(texts) > MAX_EMBEDDING_INPUTS:
        raise APIError(400, f"input: at most {MAX_EMBEDDING_INPUTS} texts per request", param="input")
    return list(texts)
