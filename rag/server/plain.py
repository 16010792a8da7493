"""Chat with the generator itself, without retrieval: what `rag serve` answers for the generator's own
model id (``generation.model``, listed in /v1/models beside the pipeline's), so that one `rag serve`
can be another's model server (``generation.backend: openai``)."""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from rag.types import Answer, TextGenerator


def plain_chat(generator: TextGenerator, messages: Sequence[Mapping[str, str]],
               options: dict[str, Any]) -> Iterator[str | Answer]:
    """The conversation's next turn in pieces, then an Answer that rests on no source (as
    Pipeline.stream yields them, so the server sends both the same way)."""
    clock = time.perf_counter()
    timings: dict[str, float] = {}
    model = generator.with_options(**options) if options else generator
    completion = model.stream_chat(messages)  # a conversation that cannot fit fails here, before any piece
    text = yield from completion.timed(timings, clock)
    yield Answer(text=text, hits=[], citations=[], prompt="", timings=timings,
                 usage=dict(completion.usage), warnings=[completion.interrupted] if completion.interrupted else [],
                 interrupted=completion.interrupted)
