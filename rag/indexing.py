"""Files or documents -> chunks in the store and the lexical index, incrementally and crash-safely.

The collection holds the chunks; each carries its file's ``file_signature`` (a hash of the file's
bytes and of the settings that shaped its chunks) and ``file_chunks``. Planning reads the per-file
record (rag.types.FileRecord) instead: one row per file with its signature and chunk ids, so an
ingest that changes nothing reads one row per file, not every chunk. A file is unchanged when its
row carries the current signature. A changed file's row is marked pending, then its new chunks are
written, its stale chunks deleted, and its row rewritten, so a crash at any point leaves either the
old chunks or a state the next ingest repairs: a pending row makes it ask the store what it holds of
that file, and chunks already written are found by id and not embedded again.

The lexical index follows a source at a time; the record marks which rows it holds, so after a
crash only the rows it may lack are fed to it again (rag.stores.files).

The ``Indexer`` plans and finishes an ingest; an engine does the work between: it loads and chunks
the files the plan says need it, embeds the chunks not stored yet and writes them. ``LocalEngine``
(below) does it in this process; ``rag.engines.ray.RayEngine`` on a Ray cluster. Both are handed
the stages (``IngestStages``) as plain callables and objects, so this module imports none of them.
"""

from __future__ import annotations

import contextlib
import hashlib
import queue
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from rag.errors import LoadError
from rag.text import log, printable
from rag.types import Chunk, Document, FileRecord, FileRow, LexicalStore, VectorStore, lexical_item

LEXICAL_FLUSH = 20_000  # chunks written before the lexical index is brought up to date
COMPACT_ROWS = 100_000  # rows of deleted chunks the lexical index keeps before a rebuild compacts them


@dataclass
class IngestReport:
    added: int = 0
    updated: int = 0
    unchanged: int = 0
    removed: int = 0
    failed: int = 0
    chunks_embedded: int = 0
    chunks_deleted: int = 0
    chunks_total: int = 0
    seconds: float = 0.0
    embedding_dtype: str | None = None  # what the chunks embedded now were computed in
    failures: list[tuple[str, str]] = field(default_factory=list)

    def summary(self) -> str:
        return (
            f"files: {self.added} added, {self.updated} updated, {self.unchanged} unchanged, "
            f"{self.removed} removed, {self.failed} failed; chunks: {self.chunks_embedded} embedded"
            f"{f' in {self.embedding_dtype}' if self.embedding_dtype else ''}, "
            f"{self.chunks_deleted} deleted, {self.chunks_total} in store ({self.seconds:.1f} s)"
        )

    def as_dict(self) -> dict[str, Any]:
        data = {k: v for k, v in self.__dict__.items() if k != "failures"}
        data["failures"] = [{"source": s, "reason": r} for s, r in self.failures]
        return data


WRITTEN = ("added", "updated")  # statuses of a file whose chunks an engine writes


@dataclass
class FileWork:
    """One file (or in-memory document) on its way through ingestion.

    Planned as unchanged, failed, or added/updated with ``item`` (and a file's ``data``) to chunk;
    an engine fills ``chunks`` and ``embedded``. ``stored`` is what the store held for this source
    when it was planned: chunks found there by id are not embedded again.
    """

    source: str
    signature: str = ""
    status: str = "unchanged"  # unchanged | added | updated | failed
    chunks: list[Chunk] = field(default_factory=list)
    reason: str = ""
    item: Path | Document | None = None
    data: bytes | None = None
    stored: dict[str, tuple[str, int]] = field(default_factory=dict)
    embedded: int = 0


@dataclass
class IngestStages:
    """What an engine drives, built from the settings (a Ray worker builds its own copy)."""

    read: Callable[[Path], bytes]  # the checks that need no reading, then the bytes; LoadError
    load: Callable[[Path, bytes], list[Document]]
    split: Callable[[Document], list[Chunk]]
    embed: Callable[[list[str]], np.ndarray]
    salt: Callable[[Path], str]  # names the settings that change what chunks this file yields
    open_store: Callable[[], VectorStore]  # the store, opened for writing


class Engine(Protocol):
    """Where the work of an ingest runs."""

    def run(self, plan: Iterator[FileWork]) -> Iterator[list[FileWork]]:
        """Every planned file back, in batches: unchanged and failed ones as they came, the others
        chunked (or failed now), their new chunks embedded and upserted and their kept chunks'
        metadata updated. Stale chunks are the Indexer's to delete, after a batch comes back."""
        ...


def signature_of(salt: str, data: bytes) -> str:
    """A file's signature: its bytes and the settings that shape its chunks."""
    return hashlib.sha256(salt.encode() + data).hexdigest()[:32]


def chunk_work(work: FileWork, load: Callable[[Path, bytes], list[Document]],
               split: Callable[[Document], list[Chunk]]) -> FileWork:
    """Load and split a planned file; every chunk records its file's signature and chunk count. A
    file that cannot be loaded, or yields no text, comes back failed."""
    try:
        if isinstance(work.item, Document):
            documents = [work.item]
        elif work.item is None or work.data is None:
            raise ValueError(f"{work.source}: planned for chunking without its path and bytes")
        else:
            documents = load(work.item, work.data)
        chunks = [chunk for document in documents for chunk in split(document)]
    except LoadError as exc:
        chunks, work.reason = [], exc.reason
    except RecursionError:
        chunks, work.reason = [], "structure nested too deeply to read"
    work.data = None
    if not chunks:
        work.status, work.reason = "failed", work.reason or "no text to index"
        return work
    for chunk in chunks:
        chunk.metadata.update(document_id=chunk.document_id, file_signature=work.signature, file_chunks=len(chunks))
    work.chunks = chunks
    return work


def write_chunks(store: VectorStore, embed: Callable[[list[str]], np.ndarray], new: list[Chunk],
                 kept: list[Chunk]) -> None:
    """New chunks embedded together (their indexed text: context and text) and upserted; chunks
    already stored by id (a changed file's unchanged parts) only get their new metadata. Both are
    idempotent, so a retried batch is harmless."""
    if new:
        store.upsert(new, embed([c.indexed for c in new]))
    if kept:
        store.update_metadata([c.id for c in kept], [c.metadata for c in kept])


def _ahead(make: Callable[[], Iterator[Any]], depth: int = 16) -> Iterator[Any]:
    """Runs an iterator in a thread a few items ahead of its consumer. Loading and chunking then
    overlap with embedding on a GPU, and only ``depth`` items are ever held."""
    ready: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def produce() -> None:
        try:
            for item in make():
                if stop.is_set():
                    return
                ready.put(item)
        except BaseException as exc:
            ready.put(exc)
        ready.put(done)

    thread = threading.Thread(target=produce, name="rag-prepare", daemon=True)
    thread.start()
    try:
        while (item := ready.get()) is not done:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while thread.is_alive():  # unblock a producer waiting on a full queue
            with contextlib.suppress(queue.Empty):
                ready.get(timeout=0.1)


@dataclass
class LocalEngine:
    """The engine in this process: a batch of files' new chunks is embedded and written together.
    ``prepare_ahead`` loads and chunks in a thread ahead of embedding (worth it only when the
    encoder leaves the CPU idle)."""

    stages: IngestStages
    write_batch: int = 1024  # chunks embedded and written together
    prepare_ahead: bool = False

    def run(self, plan: Iterator[FileWork]) -> Iterator[list[FileWork]]:
        load, split = self.stages.load, self.stages.split
        prepared = lambda: (chunk_work(w, load, split) if w.status in WRITTEN else w for w in plan)  # noqa: E731 - a generator factory, named to read
        batch: list[FileWork] = []
        batch_chunks = 0
        for work in _ahead(prepared) if self.prepare_ahead else prepared():
            if work.status not in WRITTEN:
                yield [work]
                continue
            batch.append(work)
            batch_chunks += len(work.chunks)
            if batch_chunks >= self.write_batch:
                yield self._write(batch)
                batch, batch_chunks = [], 0
        if batch:
            yield self._write(batch)

    def _write(self, batch: list[FileWork]) -> list[FileWork]:
        new, kept = [], []
        for work in batch:
            fresh = [c for c in work.chunks if c.id not in work.stored]
            work.embedded = len(fresh)
            new += fresh
            kept += [c for c in work.chunks if c.id in work.stored]
        write_chunks(self.stages.open_store(), self.stages.embed, new, kept)
        return batch


@dataclass
class Indexer:
    """Plans (new, changed, unchanged, gone) and finishes one ingest; ``engine`` does the work between.

    ``salt`` names the settings that change what chunks a file yields (some only for some formats):
    a change re-ingests the file. The per-file ``record`` says what the store holds of each file, so
    planning reads one row per file; its writes follow the store's (see FileRecord). The lexical index
    is brought up to date in step with the writes, a source at a time.
    """

    store: VectorStore
    lexical: LexicalStore
    record: FileRecord
    read: Callable[[Path], bytes]  # the checks that need no reading, then the bytes; LoadError
    salt: Callable[[Path], str]
    engine: Engine
    progress: bool = False
    lock_timeout: float = 600.0
    embedding_dtype: str | None = None  # for the report
    _lexical_rebuild: bool = field(default=False, init=False)  # rebuilt from the store at the end instead
    _lexical_pending: dict[str, list[str]] = field(default_factory=dict, init=False)  # source -> its chunk ids now
    _begun: dict[str, FileRow | None] = field(default_factory=dict, init=False)  # planned, row as it was

    def run(self, items: Callable[[], Iterable[Path | LoadError | Document]], *,
            sync_roots: list[Path] | None = None, wait: bool = True) -> IngestReport:
        """Ingest every item (a file path, a LoadError from the walk, or an in-memory Document, whose
        ``metadata["source"]`` is its identity). With ``sync_roots``, files ingested before from under
        those paths that are gone now are removed. The store must already be open."""
        started = time.perf_counter()
        store = self.store
        report = IngestReport(embedding_dtype=self.embedding_dtype)
        with store.write_lock(wait=wait, timeout=self.lock_timeout,
                              on_wait=lambda: log(f"waiting for another ingest to finish writing to {store.location}")):
            self._start()
            seen: set[str] = set()
            progress = self._progress_bar()
            for batch in self.engine.run(self._plan(item) for item in items()):
                for work in batch:
                    seen.add(work.source)
                    progress.update(1)
                    if work.status == "failed":
                        report.failed += 1
                        report.failures.append((work.source, work.reason))
                        log(f"failed: {printable(work.source)}: {work.reason}")
                        if work.source in self._begun:  # nothing of it was written: its row as it was
                            self.record.restore(work.source, self._begun.pop(work.source))
                    elif work.status == "unchanged":
                        report.unchanged += 1
                self._write([w for w in batch if w.status in WRITTEN], report)
            progress.close()
            if sync_roots is not None:
                self._remove_gone(sync_roots, seen, report)
            self._flush_lexical(final=True)
            report.chunks_total = store.count()
        report.seconds = time.perf_counter() - started
        return report

    def remove(self, sources: Iterable[str], *, wait: bool = True) -> IngestReport:
        """Delete every chunk of these sources (each as stored: a file's resolved path, a
        document's ``source``) from the store and the lexical index, as an ingest would: under the
        write lock, the lexical index brought in step at the end. A source not stored is skipped."""
        started = time.perf_counter()
        report = IngestReport()
        with self.store.write_lock(wait=wait, timeout=self.lock_timeout):
            self._start()
            for source in dict.fromkeys(sources):
                row = self.record.get(source)
                if row is not None and not row.removed:
                    self._delete_source(row, report)
            self._flush_lexical(final=True)
            report.chunks_total = self.store.count()
        report.seconds = time.perf_counter() - started
        return report

    def _start(self) -> None:
        """Under the write lock, before anything is written: the record in step with the store (built
        from the chunks' metadata once, for a store written without it); the lexical index kept up
        incrementally when it is the one the record tracked, or else rebuilt at the end; the rows
        the lexical index may not hold (a crashed ingest's) queued for it; the store's state bumped."""
        store, record, lexical = self.store, self.record, self.lexical
        record.bring_in_step(store)
        self._lexical_pending, self._begun = {}, {}
        loaded = lexical.load() and lexical.has_metadata
        if loaded and lexical.state == store.state:  # exactly the store's chunks, whatever the record says
            record.mark_all_indexed(lexical.link)
            self._lexical_rebuild = False
        elif loaded and lexical.link is not None and lexical.link == record.info("link"):
            self._lexical_rebuild = False  # behind by what the record marks unindexed: queued below
        elif store.count() == 0:  # nothing to rebuild from: start an empty index and keep it up
            lexical.rebuild([], store.state)
            record.mark_all_indexed(lexical.link)
            self._lexical_rebuild = False
        else:
            self._lexical_rebuild = True
        if not self._lexical_rebuild:
            for row in record.unindexed():
                self._lexical_pending[row.source] = self._stored_ids(row)
        record.expect(store)
        record.follow(store.bump_state())  # from here on the lexical index is stale until brought up to date

    def _stored_ids(self, row: FileRow | None) -> list[str]:
        """The ids of a source's chunks in the store: as its row says, or, while a write of it is
        pending, as the store says (one filtered read, for this source alone)."""
        if row is None:
            return []
        if row.pending:
            return sorted(self.store.ids(where={"source": row.source}))
        return row.ids

    def _progress_bar(self):
        from tqdm import tqdm

        return tqdm(desc="ingesting", unit="file", disable=not self.progress, file=sys.stderr, leave=False)

    # -- planning: what each item needs -------------------------------------------------------------

    def _plan(self, item: Path | LoadError | Document) -> FileWork:
        """Read and hash a file (read once; its bytes go on to the engine) or an in-memory document;
        it needs chunking only when its row in the record does not hold it as it is now. A file that
        does is marked pending in the record before the engine writes anything of it."""
        if isinstance(item, LoadError):
            return FileWork(item.path, status="failed", reason=item.reason)
        if isinstance(item, Document):
            source = str(item.metadata.get("source") or item.id)
            item.metadata.setdefault("source", source)
            signature = hashlib.sha256(f"{self.salt(Path(source))}\0{item.text}".encode()).hexdigest()[:32]
            data = None
        else:
            source = str(item.resolve())
            try:
                data = self.read(item)
            except LoadError as exc:
                return FileWork(source, status="failed", reason=exc.reason)
            signature = signature_of(self.salt(item), data)
        row = self.record.get(source)
        if row is not None and not row.pending and row.ids and row.signature == signature:
            return FileWork(source, signature)
        ids = self._stored_ids(row)
        stored = {chunk_id: (row.signature if row else "", len(ids)) for chunk_id in ids}
        if source not in self._begun:
            self._begun[source] = row
            self.record.begin([source])
        return FileWork(source, signature, "updated" if stored else "added", item=item, data=data, stored=stored)

    # -- finishing: what the engine wrote -----------------------------------------------------------

    def _write(self, batch: list[FileWork], report: IngestReport) -> None:
        """A batch whose new chunks the engine has written: retire each file's stale chunks, then
        record the file as it is now; bring the lexical index along and count."""
        if not batch:
            return
        store = self.store
        finished = []
        for work in batch:
            current = [c.id for c in work.chunks]
            kept = set(current)
            stale = [i for i in work.stored if i not in kept]
            store.delete(stale)
            report.chunks_embedded += work.embedded
            report.chunks_deleted += len(stale)
            setattr(report, work.status, getattr(report, work.status) + 1)
            finished.append((work.source, work.signature, current, len({c.document_id for c in work.chunks})))
            self._begun.pop(work.source, None)
            if not self._lexical_rebuild:  # an index out of step is rebuilt at the end instead
                self._lexical_pending[work.source] = current
        self.record.finish(finished)
        if sum(len(ids) for ids in self._lexical_pending.values()) >= LEXICAL_FLUSH:
            self._flush_lexical(final=False)

    def _remove_gone(self, paths: list[Path], seen: set[str], report: IngestReport) -> None:
        """--sync: chunks of files under the given paths that are no longer there are deleted."""
        roots = [str(p.resolve()) for p in paths]
        for source in self.record.sources():
            under = any(source == r or source.startswith(r.rstrip("/") + "/") for r in roots)
            if under and source not in seen and not Path(source).exists():
                row = self.record.get(source)
                if row is not None:
                    self._delete_source(row, report)

    def _delete_source(self, row: FileRow, report: IngestReport) -> None:
        """Every chunk of a source out of the store: pending first, deleted, then recorded as removed
        (the row goes once the lexical index has dropped them too)."""
        ids = self._stored_ids(row)
        self.record.begin([row.source])
        self.store.delete(ids)
        self.record.finish([(row.source, "", [], 0)])
        if not self._lexical_rebuild:
            self._lexical_pending[row.source] = []
        report.removed += 1
        report.chunks_deleted += len(ids)

    def _flush_lexical(self, *, final: bool) -> None:
        """Bring the lexical index up to date with what was written, a source at a time (each
        source's chunks replace whatever it held of it); it records the store state only when the
        ingest is complete, so a crash in between leaves it visibly behind, and the record's rows
        not yet marked indexed say what to feed it again."""
        store, record, lexical = self.store, self.record, self.lexical
        pending, self._lexical_pending = self._lexical_pending, {}
        if self._lexical_rebuild or (final and lexical.dead_rows > max(len(lexical), COMPACT_ROWS)):
            if final:  # (rows of deleted chunks outnumber the live ones: a rebuild compacts them)
                items = store.iter_texts(metadata=True)
                lexical.rebuild((lexical_item(*item) for item in items), store.state)
                record.mark_all_indexed(lexical.link)
                self._lexical_rebuild = False
            return
        if not pending and not final:
            return
        # Each chunk's text and metadata read back as the store holds them (Chroma merges a write into
        # the metadata it had), for the filters the lexical index answers.
        chunks = store.get([chunk_id for ids in pending.values() for chunk_id in ids])
        lexical.update([lexical_item(c.id, c.text, c.metadata) for c, _ in chunks], sources=list(pending),
                       state=store.state if final else "ingest in progress")
        record.mark_indexed(pending)
