"""Chroma, embedded on disk (default) or a Chroma server over HTTP: one collection of chunks.

The collection is the source of truth for what was ingested: every chunk carries its source file's
ingest signature and chunk count in its metadata, so no second bookkeeping store can drift from it.
The collection's own metadata records what built it; reopening it with another embedding model is
refused instead of silently mixing vector spaces.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import math
import os
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from rag.errors import StoreError
from rag.stores.filters import canonical_where
from rag.types import Chunk

if TYPE_CHECKING:  # chromadb is imported when a store is made
    from chromadb.api.models.Collection import Collection

os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")

# Recorded settings that must match for the stored vectors to mean anything.
MUST_MATCH = ("embedding_model", "embedding_dimension", "embedding_pooling", "embedding_normalized")
# (embedding.space is checked against the collection's own hnsw configuration, which cannot change.)
# Recorded settings that may differ between the ingests that wrote vectors (embedding.dtype): the
# record keeps every value that wrote some, comma-joined, written with the first vectors of a new one.
ACCUMULATED = ("embedding_dtype",)
STATE_KEY = "rag_state"
_INT64 = 2**63


class Store:
    """A Chroma collection of chunks in one similarity space (see SPACES); every score it returns is
    higher-is-better in that space's unit."""

    def __init__(self, path: str | Path = ".rag", *, url: str | None = None, collection: str = "rag",
                 token: str | None = None, space: str = "cosine"):
        import chromadb
        from chromadb.config import Settings as ChromaSettings

        self.path = Path(path)
        self.url = url
        self.collection_name = collection
        self.space = space
        settings = ChromaSettings(anonymized_telemetry=False)
        try:
            if url:
                from urllib.parse import urlparse

                parsed = urlparse(url)
                headers = {"Authorization": f"Bearer {token}"} if token else None
                self.client = chromadb.HttpClient(
                    host=parsed.hostname or "localhost",
                    port=parsed.port or (443 if parsed.scheme == "https" else 8000),
                    ssl=parsed.scheme == "https",
                    headers=headers,
                    settings=settings,
                )
                self.client.heartbeat()
            else:
                self.path.mkdir(parents=True, exist_ok=True)
                self.client = chromadb.PersistentClient(path=str(self.path), settings=settings)
        except StoreError:
            raise
        except Exception as exc:
            where = url or str(self.path)
            raise StoreError(f"store: cannot open Chroma at {where}: {type(exc).__name__}: {exc}") from None
        self._collection: Collection | None = None
        self._unrecorded: dict[str, str] = {}  # ACCUMULATED values to record with the next vectors

    @property
    def location(self) -> str:
        return self.url or str(self.path.resolve())

    # -- the collection and what built it --------------------------------------------------------

    def exists(self) -> bool:
        try:
            self.client.get_collection(self.collection_name)
            return True
        except Exception:
            return False

    def open(self, record: dict[str, Any], *, create: bool = True) -> None:
        """Open (or create) the collection, refusing one built with a different embedding model."""
        from chromadb.api.collection_configuration import CreateCollectionConfiguration, CreateHNSWConfiguration

        if self._collection is not None:
            return
        if not create and not self.exists():
            raise StoreError(
                f"store: no collection {self.collection_name!r} at {self.location}; run `rag ingest PATH` first"
            )
        collection = self.client.get_or_create_collection(
            self.collection_name,
            metadata={**record, STATE_KEY: 0},
            configuration=CreateCollectionConfiguration(hnsw=CreateHNSWConfiguration(
                space=self.space, ef_search=200, ef_construction=200)),  # type: ignore[typeddict-item]  # space: one of SPACES
            embedding_function=None,
        )
        stored = collection.metadata or {}
        built_in = _space_of(collection)
        if built_in != self.space:
            raise StoreError(
                f"store: collection {self.collection_name!r} at {self.location} was built with "
                f"embedding.space={built_in!r}, not {self.space!r}; use that space, another store.collection, "
                "or a new store.path"
            )
        for key in MUST_MATCH:
            if key in stored and key in record and stored[key] != record[key]:
                raise StoreError(
                    f"store: collection {self.collection_name!r} at {self.location} was built with "
                    f"{key}={stored[key]!r}, not {record[key]!r}; use that model, another store.collection, "
                    "or a new store.path"
                )
        self._collection = collection
        # Only a writer records how the collection is built: a reader's settings say nothing about it.
        if create:
            self._unrecorded = {k: _joined(stored.get(k), record[k], collection.count()) for k in ACCUMULATED
                                if k in record and record[k] not in str(stored.get(k, "")).split(",")}
            fixed = {k: v for k, v in record.items() if k not in self._unrecorded}
            if any(stored.get(k) != v for k, v in fixed.items()):
                self._write_metadata({**stored, **fixed})

    @property
    def collection(self):
        if self._collection is None:
            raise StoreError("store: collection is not open")
        return self._collection

    def record(self) -> dict[str, Any]:
        """What the collection says built it (empty when there is no collection yet)."""
        try:
            return dict(self.client.get_collection(self.collection_name).metadata or {})
        except Exception:
            return {}

    def update_record(self, values: dict[str, Any]) -> None:
        """Add ``values`` to what the collection records (choices made about it since it was built,
        such as its tuned fusion); the rest of the record stays as it is."""
        current = self.client.get_collection(self.collection_name).metadata or {}
        self._write_metadata({**current, **storable(values)})

    def _write_metadata(self, metadata: dict[str, Any]) -> None:
        # Chroma refuses the hnsw:* keys in modify(); they are fixed at creation anyway.
        self.collection.modify(metadata={k: v for k, v in metadata.items() if not k.startswith("hnsw:")})

    @property
    def state(self) -> str:
        """A token that changes with every write, so a side index can tell whether it is stale."""
        metadata = self.client.get_collection(self.collection_name).metadata or {}
        return f"{metadata.get(STATE_KEY, 0)}:{self.count()}"

    def counter(self) -> str:
        """The write counter alone (the state without the count, which costs a scan of the
        collection): what a search compares with a side index's state on every call."""
        metadata = self.client.get_collection(self.collection_name).metadata or {}
        return str(metadata.get(STATE_KEY, 0))

    def bump_state(self) -> str:
        metadata = dict(self.client.get_collection(self.collection_name).metadata or {})
        metadata[STATE_KEY] = int(metadata.get(STATE_KEY, 0)) + 1
        self._write_metadata(metadata)
        return f"{metadata[STATE_KEY]}:{self.count()}"

    # -- reads --------------------------------------------------------------------------------

    def count(self) -> int:
        return self.collection.count()

    def _page_size(self) -> int:
        return max(1, min(self.client.get_max_batch_size(), 5000))

    def _pages(self, include: list[str], where: dict | None = None, page: int = 0) -> Iterator[dict[str, Any]]:
        """Chroma's answers for every chunk (matching ``where``), a page at a time so memory stays bounded."""
        page = page or self._page_size()
        offset = 0
        where = chroma_where(where)
        while True:
            got = self.collection.get(where=where, limit=page, offset=offset, include=include)
            yield got
            if len(got["ids"]) < page:
                return
            offset += page

    def ids(self, where: dict | None = None) -> set[str]:
        """The ids of every chunk (matching ``where``). Ids alone are small, so they come in large
        pages, much faster than reading their metadata as well (docs/benchmarks.md)."""
        return {chunk_id for got in self._pages([], where, page=100_000) for chunk_id in got["ids"]}

    def iter_metadata(self, where: dict | None = None) -> Iterator[tuple[str, dict[str, Any]]]:
        """(id, metadata) of every chunk (matching ``where``)."""
        for got in self._pages(["metadatas"], where):
            for chunk_id, metadata in zip(got["ids"], got["metadatas"], strict=True):
                yield chunk_id, metadata or {}

    def iter_texts(self, *, metadata: bool = False) -> Iterator[tuple[str, str] | tuple[str, str, dict[str, Any]]]:
        """(id, text) of every chunk, or (id, text, metadata) with ``metadata``, for rebuilding a side
        index from the source of truth."""
        if not metadata:
            for got in self._pages(["documents"]):
                yield from zip(got["ids"], got["documents"], strict=True)
            return
        for got in self._pages(["documents", "metadatas"]):
            for chunk_id, text, stored in zip(got["ids"], got["documents"], got["metadatas"], strict=True):
                yield chunk_id, text, stored or {}

    def get(self, ids: Sequence[str], *, embeddings: bool = False) -> list[tuple[Chunk, np.ndarray | None]]:
        """Chunks by id, in the order asked; ids not in the store are left out."""
        if not ids:
            return []
        include = ["documents", "metadatas"] + (["embeddings"] if embeddings else [])
        found: dict[str, tuple[Chunk, np.ndarray | None]] = {}
        page = self._page_size()
        for begin in range(0, len(ids), page):
            got = self.collection.get(ids=list(ids[begin : begin + page]), include=include)
            vectors = got.get("embeddings") if embeddings else None
            for i, chunk_id in enumerate(got["ids"]):
                vector = np.asarray(vectors[i], dtype=np.float32) if vectors is not None else None
                found[chunk_id] = (_chunk(chunk_id, got["documents"][i], got["metadatas"][i]), vector)
        return [found[i] for i in ids if i in found]

    def query(self, vector: np.ndarray, k: int, where: dict | None = None, *, embeddings: bool = False,
              ids: Sequence[str] | None = None) -> list[tuple[Chunk, float, np.ndarray | None]]:
        """The k nearest chunks as (chunk, score, vector?), best first; the score is the space's own
        similarity (see SPACES), worked out from Chroma's distance. ``ids`` restricts the search to
        those chunks, as a filter would (see ``nearest``)."""
        include = ["documents", "metadatas", "distances"] + (["embeddings"] if embeddings else [])
        got = self._query(vector, k, where, ids, include)
        if got is None:
            return []
        found = got.get("embeddings") if embeddings else None
        vectors = found[0] if found is not None else None
        return [
            (
                _chunk(chunk_id, text, metadata),
                _similarity(float(distance), self.space),
                np.asarray(vectors[i], dtype=np.float32) if vectors is not None else None,
            )
            for i, (chunk_id, text, metadata, distance) in enumerate(
                zip(got["ids"][0], got["documents"][0], got["metadatas"][0], got["distances"][0], strict=True)
            )
        ]

    def nearest(self, vector: np.ndarray, k: int, where: dict | None = None, *,
                ids: Sequence[str] | None = None) -> list[tuple[str, float]]:
        """The k nearest chunks as (id, score), best first, as ``query`` ranks and scores them. Ids
        and distances alone: Chroma answers far faster without the texts and metadata, so a caller
        that shows only a few of them fetches those with ``get`` (docs/benchmarks.md, Queries).

        ``ids`` restricts the search to those chunks, each of which must be in the store. Chroma
        then searches as it does for a filter keeping them (the same ranking and distances) but skips
        evaluating the filter, which is several times faster (docs/benchmarks.md, Queries)."""
        got = self._query(vector, k, where, ids, ["distances"])
        if got is None:
            return []
        return [(chunk_id, _similarity(float(distance), self.space))
                for chunk_id, distance in zip(got["ids"][0], got["distances"][0], strict=True)]

    def _query(self, vector: np.ndarray, k: int, where: dict | None, ids: Sequence[str] | None,
               include: list[str]) -> dict[str, Any] | None:
        """Chroma's answer, or None when there is nothing to search (k < 1, or no ids)."""
        if k < 1 or (ids is not None and not ids):
            return None
        translated = chroma_where(where)
        try:
            return self.collection.query(query_embeddings=[vector.tolist()], n_results=k, where=translated,
                                         ids=list(ids) if ids is not None else None, include=include)
        except Exception as exc:
            if ids is not None:
                raise StoreError(f"store: Chroma could not search among {len(ids)} given chunk ids: {exc}") from None
            raise StoreError(f"retrieval.where: Chroma rejected the filter {where!r}: {exc}") from None

    # -- writes -------------------------------------------------------------------------------

    def upsert(self, chunks: Sequence[Chunk], vectors: np.ndarray) -> None:
        """Write in batches no larger than the client allows."""
        if self._unrecorded and len(chunks):
            self._write_metadata({**(self.client.get_collection(self.collection_name).metadata or {}),
                                  **self._unrecorded})
            self._unrecorded = {}
        page = self.client.get_max_batch_size()
        for begin in range(0, len(chunks), page):
            batch = chunks[begin : begin + page]
            self.collection.upsert(
                ids=[c.id for c in batch],
                embeddings=vectors[begin : begin + page],
                documents=[c.text for c in batch],
                metadatas=[storable(c.metadata) for c in batch],
            )

    def update_metadata(self, ids: Sequence[str], metadatas: Sequence[dict[str, Any]]) -> None:
        page = self.client.get_max_batch_size()
        for begin in range(0, len(ids), page):
            self.collection.update(ids=list(ids[begin : begin + page]),
                                   metadatas=[storable(m) for m in metadatas[begin : begin + page]])

    def delete(self, ids: Iterable[str]) -> None:
        ids = list(ids)
        page = self.client.get_max_batch_size()
        for begin in range(0, len(ids), page):
            self.collection.delete(ids=ids[begin : begin + page])

    # -- one writer at a time -----------------------------------------------------------------

    @contextlib.contextmanager
    def write_lock(self, *, wait: bool = True, timeout: float = 600.0, on_wait=None) -> Iterator[None]:
        """An exclusive lock on the store for writers. Searches never wait for it; they only try it
        (without waiting) before saving a rebuilt lexical index."""
        # With a Chroma server the lock lives in the local store folder too, beside the lexical index.
        self.path.mkdir(parents=True, exist_ok=True)
        handle = open(self.path / f"{self.collection_name}.lock", "a+")  # noqa: SIM115 - held until exit
        try:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if not wait:
                    raise StoreError(
                        f"store: another ingest is writing to {self.location}; wait for it, or drop --no-wait"
                    ) from None
                if on_wait:
                    on_wait()
                deadline = time.monotonic() + timeout
                while True:
                    try:
                        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        break
                    except BlockingIOError:
                        if time.monotonic() > deadline:
                            raise StoreError(
                                f"store: still locked by another ingest after {timeout:.0f} s "
                                "(store.lock_timeout)"
                            ) from None
                        time.sleep(0.2)
            yield
        finally:
            handle.close()


def _joined(recorded: Any, value: str, count: int) -> str:
    """An ACCUMULATED record value with ``value`` added; vectors stored before rag recorded the key
    (``count`` of them, none recorded) are named "unrecorded"."""
    values = set(str(recorded).split(",")) if recorded else ({"unrecorded"} if count else set())
    return ",".join(sorted(values | {value}))


def _space_of(collection: Any) -> str:
    """The similarity space a collection was created with (Chroma's own configuration)."""
    configuration = getattr(collection, "configuration", None) or {}
    hnsw = configuration.get("hnsw") or {}
    space = hnsw.get("space") if isinstance(hnsw, dict) else getattr(hnsw, "space", None)
    return str(getattr(space, "value", space) or (collection.metadata or {}).get("hnsw:space") or "l2")


def _similarity(distance: float, space: str) -> float:
    """Chroma's distance as the space's higher-is-better score: cosine ``1 - cos`` and ip ``1 - dot``
    give the similarity back; l2 is the squared distance, negated after its square root."""
    if space == "l2":
        return -math.sqrt(max(distance, 0.0))
    return 1.0 - distance


def _chunk(chunk_id: str, text: str, metadata: dict[str, Any] | None) -> Chunk:
    metadata = dict(metadata or {})
    return Chunk(
        id=chunk_id,
        document_id=str(metadata.get("document_id", "")),
        text=text or "",
        start=int(metadata.get("start", 0)),
        end=int(metadata.get("end", len(text or ""))),
        metadata=metadata,
    )


def chroma_where(where: dict | None) -> dict | None:
    """rag's filter (see rag.types.VectorStore) in Chroma's syntax, which is the filter's canonical
    form (rag.stores.filters.canonical_where): a mapping holds exactly one field or operator."""
    return canonical_where(where)


def storable(metadata: dict[Any, Any]) -> dict[str, str | int | float | bool]:
    """Metadata as Chroma stores it: None dropped, scalars kept, dates in ISO form, numbers past
    int64 and non-finite floats as text, anything else (lists, mappings) as JSON."""
    return {str(key): _storable_value(value) for key, value in metadata.items() if value is not None}


def _storable_value(value: Any) -> str | int | float | bool:
    if isinstance(value, bool | str):
        return value
    if isinstance(value, int):
        return value if -_INT64 <= value < _INT64 else str(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, dt.date | dt.time):
        return value.isoformat()
    return json.dumps(value, default=str, ensure_ascii=False)
