"""Retrieved chunks -> their best sentences, for generators too small to read whole chunks.

A 135M-parameter model shown five chunks of 256 tokens answers from the wrong one or repeats itself;
shown the three sentences that best match the question it mostly copies the right fact (measured on
XQuAD: docs/benchmarks.md, Answers). Each sentence keeps its place: its ``Hit`` carries the chunk's id and
metadata, and ``start``/``end`` are offsets in the document (``document.text[start:end]`` is the
sentence), so a citation of a sentence points at its chunk and at the exact span.

A sentence's score is the cosine similarity of its embedding to the question's (the retriever's own
embedder), plus ``lexical_weight`` times its BM25 score against the question among the candidate
sentences, min-max normalized to 0..1, minus ``rank_penalty`` per rank of its chunk (a sentence of the
best chunk wins a tie).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

import numpy as np

from rag.types import Chunk, Hit

# A sentence ends at . ! or ? followed by space and an upper-case letter, a digit or an opening quote.
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[\"'(\[]?[A-Z0-9])")
# A line that starts a block of its own: a list item, a Markdown heading or quote, a table row.
_BLOCK_START = re.compile(r"\s*(?:[#>*\u2022|-]|\d+[.)])\s")
MIN_CHARS = 12  # shorter pieces (list markers, stray labels) are not evidence on their own
MAX_HEADING_WORDS = 8


def _heading(text: str) -> bool:
    """A title or heading line: short and not ended like a sentence. It names a topic; it states
    no fact, and its words would match the question without answering it."""
    text = text.strip()
    if text.startswith("#"):
        return True
    return len(text.split()) <= MAX_HEADING_WORDS and not text.endswith((".", "!", "?", ";", ":"))


def _blocks(text: str) -> list[tuple[int, int]]:
    """Paragraphs, list items and headings. A single line break inside a paragraph is only wrapping
    (hard-wrapped text files), so it does not end a sentence."""
    blocks: list[tuple[int, int]] = []
    start = position = 0
    previous = ""
    for line in text.split("\n"):
        ends_block = not line.strip() or _BLOCK_START.match(line) or (previous.strip() and _heading(previous))
        if ends_block and position > start:
            blocks.append((start, position - 1))
            start = position
        if not line.strip():
            start = position + len(line) + 1
        position += len(line) + 1
        previous = line
    if len(text) > start:
        blocks.append((start, len(text)))
    return blocks


def split_sentences(text: str) -> list[tuple[int, int]]:
    """``(start, end)`` of each sentence of ``text`` that can be evidence: stripped of surrounding
    whitespace, headings and short fragments left out."""
    spans: list[tuple[int, int]] = []
    for block_start, block_end in _blocks(text):
        block = text[block_start:block_end]
        position = 0
        for match in [*_SENTENCE_END.finditer(block), None]:
            end = match.start() if match else len(block)
            piece = block[position:end]
            stripped = piece.strip()
            if len(stripped) >= MIN_CHARS and not _heading(stripped):
                first = block_start + position + piece.index(stripped)
                spans.append((first, first + len(stripped)))
            if match:
                position = match.end()
    return spans


def best_sentences(
    question: str,
    hits: Sequence[Hit],
    *,
    count: int,
    embed_query: Callable[[str], np.ndarray],
    embed_texts: Callable[[list[str]], np.ndarray],
    tokenize: Callable[[list[str]], list[list[int]]] | None = None,
    lexical_weight: float = 0.5,
    rank_penalty: float = 0.02,
) -> list[Hit]:
    """The ``count`` best sentences of ``hits``, best first, as hits on sentence spans."""
    candidates: list[tuple[Hit, int, int]] = []
    for hit in hits:
        for start, end in split_sentences(hit.chunk.text):
            candidates.append((hit, start, end))
    if not candidates:
        return list(hits[:count])
    texts = [hit.chunk.text[start:end] for hit, start, end in candidates]
    query = np.asarray(embed_query(question), dtype=np.float32)
    vectors = np.asarray(embed_texts(texts), dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1) * max(float(np.linalg.norm(query)), 1e-12)
    dense = vectors @ query / np.maximum(norms, 1e-12)
    lexical = _bm25(question, texts, tokenize) if tokenize is not None else np.zeros(len(texts))
    ranks = np.array([hit.rank for hit, _, _ in candidates], dtype=np.float32)
    scores = dense + lexical_weight * lexical - rank_penalty * (ranks - 1)
    order = np.argsort(-scores, kind="stable")[:count]
    chosen = []
    for rank, index in enumerate(order, start=1):
        hit, start, end = candidates[index]
        chunk = hit.chunk
        sentence = Chunk(id=chunk.id, document_id=chunk.document_id, text=chunk.text[start:end],
                         start=chunk.start + start, end=chunk.start + end, metadata=chunk.metadata)
        chosen.append(Hit(chunk=sentence, score=float(scores[index]), rank=rank,
                          scores={**hit.scores, "chunk": hit.score, "sentence_dense": float(dense[index]),
                                  "sentence_lexical": float(lexical[index])},
                          ranks={**hit.ranks, "chunk": hit.rank}))
    return chosen


def _bm25(question: str, texts: list[str], tokenize: Callable[[list[str]], list[list[int]]]) -> np.ndarray:
    """BM25 of every text against the question, the texts being the whole corpus; min-max to 0..1."""
    import bm25s

    terms, *corpus = tokenize([question, *texts])  # one call: the same term ids on both sides
    if not terms or not any(corpus):
        return np.zeros(len(texts))
    index = bm25s.BM25()
    vocabulary: dict[int, int] = {}  # the question's terms may be absent from the corpus: ids compacted
    ids = [[vocabulary.setdefault(t, len(vocabulary)) for t in doc] for doc in corpus]
    index.index(bm25s.tokenization.Tokenized(ids=ids, vocab=vocabulary), show_progress=False)
    query = [vocabulary[t] for t in terms if t in vocabulary]
    if not query:
        return np.zeros(len(texts))
    scores = np.asarray(index.get_scores(query), dtype=np.float32)
    low, high = float(scores.min()), float(scores.max())
    return (scores - low) / (high - low) if high > low else np.zeros(len(texts))
