"""The plain records that stages pass to each other, and the protocols of the stores and the models."""

from __future__ import annotations

import time
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping, Sequence, Set
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol, get_args

if TYPE_CHECKING:  # for the protocols' annotations only: importing the records stays cheap
    import numpy as np

# The retrieval modes and chunking strategies: the config's types, the CLI's choices and the stages'
# dispatch read them here.
RetrievalMode = Literal["dense", "lexical", "hybrid"]
MODES: tuple[str, ...] = get_args(RetrievalMode)
ChunkingStrategy = Literal["recursive", "markdown", "token"]
STRATEGIES: tuple[str, ...] = get_args(ChunkingStrategy)
# How dense similarity is measured, and the one meaning of a dense score (higher is better) in each:
# cosine: the cosine similarity (-1..1); ip: the inner product; l2: minus the Euclidean distance.
SimilaritySpace = Literal["cosine", "ip", "l2"]
SPACES: tuple[str, ...] = get_args(SimilaritySpace)


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
    """A span of a document's text: ``document.text[start:end] == text``.

    ``metadata["context"]``, when present, is what the chunker found above the chunk (the document's
    title and heading path); it is embedded and indexed with the text (``indexed_text``) but never
    part of ``text``, whose offsets stay exact."""

    id: str
    document_id: str
    text: str
    start: int
    end: int
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def indexed(self) -> str:
        """The text the embedder and the lexical index are given for this chunk."""
        return indexed_text(self.text, self.metadata)


# Between a chunk's context and its text, in what is embedded and indexed.
CONTEXT_SEPARATOR = "\n\n"


def indexed_text(text: str, metadata: Mapping[str, Any]) -> str:
    """A chunk's text after its context (``metadata["context"]``) when it carries one. Computed from
    the stored text and metadata alone, so a lexical index rebuilt from the store indexes the same
    text the ingest embedded and indexed."""
    context = metadata.get("context")
    return f"{context}{CONTEXT_SEPARATOR}{text}" if context else text


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

    def to_dict(self) -> dict[str, Any]:
        """The hit as JSON: what `rag search --json` and `rag ask --json` print."""
        metadata = self.chunk.metadata
        return {
            "rank": self.rank, "id": self.chunk.id, "score": self.score, "scores": self.scores,
            "ranks": self.ranks, "source": metadata.get("source"), "page": metadata.get("page"),
            "text": self.chunk.text, "start": self.chunk.start, "end": self.chunk.end, "metadata": metadata,
        }


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
    # Why the answer may not rest on the documents (nothing retrieved, nothing fit the budget), or may
    # be incomplete.
    warnings: list[str] = field(default_factory=list)
    # Why the text ended before the model finished it (a model server's stream cut or stalled); None
    # when it finished. It is among the warnings too.
    interrupted: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The answer as JSON, one format everywhere: `rag ask --json`, `rag run`, the evaluation."""
        def cited(n: int) -> dict[str, Any]:
            chunk = self.hits[n - 1].chunk
            return {"number": n, "id": chunk.id, "source": chunk.metadata.get("source"),
                    "page": chunk.metadata.get("page")}

        return {
            "answer": self.text,
            "citations": [cited(n) for n in self.citations],
            "unknown_citations": self.unknown_citations,
            "cited_by": self.cited_by,
            "warnings": self.warnings,
            "interrupted": self.interrupted,
            "hits": [hit.to_dict() for hit in self.hits],
            "dropped_hits": self.dropped_hits,
            "timings": self.timings,
            "usage": self.usage,
        }


# -- the stores, as the indexer and the retriever see them (implementations in rag.stores) ------------


# The store-neutral metadata filter (``where``): ``{"field": value}`` keeps chunks whose field equals
# value; ``{"field": {"$gte": 2, "$lt": 5}}`` applies operators; several fields in one mapping must all
# match; ``{"$and": [...]}`` and ``{"$or": [...]}`` combine filters. Each store translates it.
FILTER_OPERATORS = ("$eq", "$ne", "$gt", "$gte", "$lt", "$lte", "$in", "$nin")


class VectorStore(Protocol):
    """Chunks with their vectors and metadata; the record of what was ingested.

    ``state`` is a token that changes with every write (``bump_state`` at the start of an ingest),
    so a side index such as BM25 can tell that it is behind: ``counter:count``. ``counter`` is its
    first part alone, cheap enough to read on every search; rag's writers bump it, and the next
    ingest also checks the count. Writers hold ``write_lock``.
    """

    @property
    def location(self) -> str: ...
    space: str  # how similarity is measured (SPACES); dense scores are in its unit
    def open(self, record: dict[str, Any], *, create: bool = True) -> None: ...
    def record(self) -> dict[str, Any]: ...
    def update_record(self, values: dict[str, Any]) -> None: ...
    def exists(self) -> bool: ...
    def count(self) -> int: ...
    @property
    def state(self) -> str: ...
    def counter(self) -> str: ...
    def bump_state(self) -> str: ...
    def ids(self, where: dict | None = None) -> set[str]: ...
    def iter_metadata(self, where: dict | None = None) -> Iterator[tuple[str, dict[str, Any]]]: ...
    def iter_texts(self, *, metadata: bool = False) -> Iterator[tuple[str, str] | tuple[str, str, dict[str, Any]]]: ...
    def get(self, ids: Sequence[str], *, embeddings: bool = False) -> list[tuple[Chunk, np.ndarray | None]]: ...
    def query(self, vector: np.ndarray, k: int, where: dict | None = None, *, embeddings: bool = False,
              ids: Sequence[str] | None = None) -> list[tuple[Chunk, float, np.ndarray | None]]: ...
    def nearest(self, vector: np.ndarray, k: int, where: dict | None = None, *,
                ids: Sequence[str] | None = None) -> list[tuple[str, float]]: ...
    def upsert(self, chunks: Sequence[Chunk], vectors: np.ndarray) -> None: ...
    def update_metadata(self, ids: Sequence[str], metadatas: Sequence[dict[str, Any]]) -> None: ...
    def delete(self, ids: Iterable[str]) -> None: ...
    def write_lock(self, *, wait: bool = True, timeout: float = 600.0,
                   on_wait: Callable[[], None] | None = None) -> AbstractContextManager[None]: ...


def counter_of(state: str | None) -> str | None:
    """The write counter of a store state token (see VectorStore)."""
    return None if state is None else state.split(":", 1)[0]


# What a lexical index is fed: (chunk id, text), or (chunk id, text, metadata as the store holds it); the
# text is the chunk's indexed text (``lexical_item``: its context, then its text).
LexicalItem = tuple[str, str] | tuple[str, str, Mapping[str, Any]]


def lexical_item(chunk_id: str, text: str, metadata: Mapping[str, Any]) -> LexicalItem:
    """What the lexical index is fed for a stored chunk, in every case (updates, repairs, rebuilds,
    the index's own rebuild from the store): its id, the text its terms come from (the chunk's
    indexed text: its context, then its stored text), and its metadata as the store holds it (for
    filters). Here, beside the types, so that the stores and the indexer share this one definition."""
    return chunk_id, indexed_text(text, metadata), metadata


class LexicalStore(Protocol):
    """A term index over (chunk id, text) that records the vector store's ``state`` it matches. Fed
    each chunk's metadata too, it answers filters itself (``select``), sparing the store's. ``link``
    names the index's lineage (a rebuild starts a new one), so a record of what it holds can tell
    whether it tracked this very index."""

    @property
    def state(self) -> str | None: ...
    @property
    def link(self) -> str | None: ...
    @property
    def has_metadata(self) -> bool: ...
    @property
    def dead_rows(self) -> int: ...
    def __len__(self) -> int: ...
    def load(self) -> bool: ...
    def rebuild(self, items: Iterable[LexicalItem], state: str, *, save: bool = True) -> None: ...
    def in_step_with(self, store: VectorStore) -> LexicalStore: ...
    def update(self, upserts: Iterable[LexicalItem] = (), deletes: Iterable[str] = (), state: str = "", *,
               sources: Iterable[str] = ()) -> None: ...
    def select(self, where: dict) -> Set[str] | None: ...
    def search(self, query: str, k: int, allowed_ids: Set[str] | None = None) -> list[tuple[str, float]]: ...
    def terms(self, texts: list[str]) -> list[list[int]]: ...


@dataclass
class FileRow:
    """What the per-file record says of one source (a file's resolved path, a document's ``source``).
    ``ids`` are its chunks' ids; ``pending``: a write of its chunks began and did not finish, so the
    store may hold any mix of old and new ones; ``indexed``: the lexical index holds exactly ``ids``.
    A row with no ids that is not pending is a removed file the lexical index has not dropped yet."""

    source: str
    signature: str
    ids: list[str]
    documents: int = 0  # how many documents (pages) its chunks come from
    pending: bool = False
    indexed: bool = False

    @property
    def removed(self) -> bool:
        return not self.ids and not self.pending


class FileRecord(Protocol):
    """One row per ingested source, kept beside the store so that planning reads one row per file
    instead of every chunk's metadata (implementation: rag.stores.files). Its writes follow the
    store's: ``begin`` before a source's chunks are written, ``finish`` after its stale ones are gone."""

    def bring_in_step(self, store: VectorStore) -> bool: ...
    def expect(self, store: VectorStore) -> None: ...
    def follow(self, state: str) -> None: ...
    def info(self, key: str) -> str | None: ...
    def get(self, source: str) -> FileRow | None: ...
    def sources(self) -> list[str]: ...
    def unindexed(self) -> list[FileRow]: ...
    def begin(self, sources: Iterable[str]) -> None: ...
    def restore(self, source: str, row: FileRow | None) -> None: ...
    def finish(self, rows: Iterable[tuple[str, str, list[str], int]]) -> None: ...
    def mark_indexed(self, sources: Iterable[str]) -> None: ...
    def mark_all_indexed(self, link: str | None) -> None: ...


# -- the models, as the pipeline sees them (implementations in rag.generation and rag.embedding) ------


class Interrupted(Exception):
    """Raised by a Completion's pieces when the text ends before the model finished it; the Completion
    ends there and keeps the reason as ``interrupted``."""


class Completion:
    """One generation's text pieces, as they arrive. ``usage`` (``prompt_tokens``, ``completion_tokens``)
    is complete once every piece is read; ``interrupted`` then says why the text ended before the model
    finished it (a model server's stream cut or stalled), else None. ``close()`` before the end stops
    the generation (a client that went away); an error is raised from the next piece."""

    def __init__(self, pieces: Generator[str, None, None], usage: dict[str, int]):
        self._pieces = pieces
        self.usage = usage
        self.interrupted: str | None = None

    def __iter__(self) -> Completion:
        return self

    def __next__(self) -> str:
        try:
            return next(self._pieces)
        except Interrupted as exc:
            self.interrupted = str(exc)
            raise StopIteration from None

    def close(self) -> None:
        self._pieces.close()

    def timed(self, timings: dict[str, float], clock: float) -> Generator[str, None, str]:
        """Yields the pieces and returns the whole text, recording ``first_token`` and ``generation``
        (seconds since ``clock``, a perf_counter reading) in ``timings``. Stopped early, it closes
        the completion, so the model stops too."""
        pieces: list[str] = []
        try:
            for piece in self:
                if not pieces:
                    timings["first_token"] = time.perf_counter() - clock
                pieces.append(piece)
                yield piece
        finally:
            self.close()
        timings["generation"] = time.perf_counter() - clock
        timings.setdefault("first_token", timings["generation"])
        return "".join(pieces)


class TextGenerator(Protocol):
    """Prompt -> text, streamed: a model in this process or behind a model server, one contract.

    The pipeline packs a prompt with ``format_prompt``, ``count_tokens``, ``prompt_budget`` and
    ``neutralize``, then reads ``stream``. ``load`` settles everything ("auto" answer settings, the
    context window) before the first request; the attributes hold plain values from then on.
    """

    model_name: str
    max_new_tokens: int | str  # "auto" until load()
    stop: tuple[str, ...] | str  # "auto" until load()
    context_window: int | None  # None until load() when not configured

    def load(self) -> TextGenerator: ...
    @property
    def small(self) -> bool: ...  # fewer than 1B parameters: short answers from the best sentences
    def with_options(self, **options: Any) -> TextGenerator: ...
    def prompt_budget(self) -> int: ...
    def format_prompt(self, user_message: str) -> str: ...
    def count_tokens(self, text: str) -> int: ...
    def neutralize(self, text: str) -> str: ...
    def stream(self, prompt: str) -> Completion: ...
    def stream_chat(self, messages: Sequence[Mapping[str, str]]) -> Completion: ...


class TextEmbedder(Protocol):
    """Texts -> vectors: a model in this process or behind a model server, one contract."""

    model_name: str
    device: str
    dimension: int
    max_length: int
    tokenizer: Any  # a fast Hugging Face tokenizer: chunk sizes are counted in its tokens
    @property
    def max_content_tokens(self) -> int: ...
    @property
    def dtype_name(self) -> str | None: ...
    def embed_queries(self, texts: Sequence[str]) -> np.ndarray: ...
    def embed_documents(self, texts: Sequence[str], progress: Callable[[int], None] | None = None) -> np.ndarray: ...
    def describe(self) -> dict[str, Any]: ...
