"""The plain records that stages pass to each other, and nothing else."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Document:
    """One loaded unit of text: a file, or one page of a paged file.

    ``metadata`` holds at least ``source`` (the file's path), ``format``, ``title`` (may be empty),
    ``page`` for paged formats, and ``content_hash`` (sha256 of ``text``).
    """

    id: str
    text: str
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass
class Chunk:
    """A span of a document's text: ``document.text[start:end] == text``."""

    id: str
    document_id: str
    text: str
    start: int
    end: int
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass
class Hit:
    """A retrieved chunk. ``score`` is higher-is-better; its meaning depends on the retrieval mode
    (cosine similarity for dense, BM25 for lexical, fused rank score for hybrid). ``scores`` and
    ``ranks`` keep each retriever's own figures so nothing is hidden by fusion."""

    chunk: Chunk
    score: float
    rank: int
    scores: dict[str, float] = field(default_factory=dict)
    ranks: dict[str, int] = field(default_factory=dict)


@dataclass
class Answer:
    """A generated answer with everything needed to check it."""

    text: str
    hits: list[Hit]
    citations: list[int]
    prompt: str
    timings: dict[str, float] = field(default_factory=dict)
    usage: dict[str, int] = field(default_factory=dict)
    dropped_hits: int = 0
    unknown_citations: list[int] = field(default_factory=list)
    # "answer": the numbers the answer wrote ([n]); "overlap": the answer cited nothing, and these are
    # the sources whose text holds most of its words (see rag.prompting.attribute).
    cited_by: str = "answer"
    # Why the answer may not rest on the documents (nothing retrieved, nothing fit the budget).
    warnings: list[str] = field(default_factory=list)
