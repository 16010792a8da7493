"""The per-file record: one row per ingested file (or in-memory document), kept beside the store so
that planning an ingest reads one row per file instead of every chunk's metadata.

A row holds the file's ``source``, its ``signature`` (rag.indexing.signature_of), how many chunks it
has and their ids, and how many documents (pages) they come from. Two flags keep it honest across crashes:

- ``pending``: a write of this file's chunks has begun and not finished, so the store may hold any
  mix of its old and new chunks; the next ingest asks the store which chunks of the source it holds
  (one filtered read, for that file alone) instead of trusting ``ids``.
- ``indexed``: the lexical index holds exactly this row's chunks. A changed row is not indexed until
  the lexical index commits it; a removed file stays as a row with no chunks until then, so that
  its chunks leave the lexical index too. After a crash, only rows not indexed are fed to it again.

The record is a small SQLite file (WAL, one transaction per step) in the store folder, beside the
write lock and the lexical index; with a Chroma server the folder is the ingesting machine's, as it
is for those. It says which collection ``counter`` (the store's state token, rag.stores.chroma) it
has seen every write of: a store written since by anything else (an older rag, another machine)
is behind it, and the record is built again from the chunks' metadata, once, with one line saying
so. That is also how a store written before the record existed is migrated; nothing is embedded
again.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterable, Iterator
from pathlib import Path

from rag.text import log
from rag.types import FileRow, VectorStore, counter_of

FORMAT = "2"
_FILES = """
CREATE TABLE IF NOT EXISTS files (
    source TEXT PRIMARY KEY,
    signature TEXT NOT NULL,
    chunks INTEGER NOT NULL,
    ids TEXT NOT NULL,
    documents INTEGER NOT NULL DEFAULT 0,
    pending INTEGER NOT NULL DEFAULT 0,
    indexed INTEGER NOT NULL DEFAULT 0
)"""
_INFO = "CREATE TABLE IF NOT EXISTS info (key TEXT PRIMARY KEY, value TEXT NOT NULL)"


class FileRecord:
    """The record of one collection (see the module docstring). Writers hold the store's write lock."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._db: sqlite3.Connection | None = None

    # -- opening, and keeping in step with the store --------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        if self._db is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")  # a process killed loses nothing; only a power cut could
            db.execute(_FILES)
            db.execute(_INFO)
            self._db = db
        return self._db

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        db = self._connect()
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def info(self, key: str) -> str | None:
        row = self._connect().execute("SELECT value FROM info WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def set_info(self, **values: str | None) -> None:
        with self._transaction() as db:
            for key, value in values.items():
                if value is None:
                    db.execute("DELETE FROM info WHERE key = ?", (key,))
                else:
                    db.execute("INSERT OR REPLACE INTO info VALUES (?, ?)", (key, value))

    def in_step_with(self, store: VectorStore) -> bool:
        """Whether this record has seen every write to ``store``: it recorded the store's current
        write counter (or the one its writer was about to set), and when no file is pending it counts
        as many chunks as the store holds."""
        counter = store.counter()
        if self.info("format") != FORMAT or counter not in (self.info("counter"), self.info("next")):
            return False
        db = self._connect()
        if db.execute("SELECT 1 FROM files WHERE pending = 1 LIMIT 1").fetchone():
            return True
        total = db.execute("SELECT COALESCE(SUM(chunks), 0) FROM files").fetchone()[0]
        return int(total) == store.count()

    def bring_in_step(self, store: VectorStore) -> bool:
        """Build the record again from the chunks' metadata when it is behind the store (see the module
        docstring); True when it did. Rows built so are not indexed: the lexical index, unlinked,
        is rebuilt from the store."""
        if self.in_step_with(store):
            return False
        count = store.count()
        if count:
            log(f"store: building the per-file record of {store.location} from its {count} chunks' metadata "
                "(once: the store was written without it, or by another writer)")
        found: dict[str, dict[str, tuple[str, int, int, str]]] = {}
        for chunk_id, metadata in store.iter_metadata():
            entry = (str(metadata.get("file_signature", "")), _int(metadata.get("file_chunks")),
                     _int(metadata.get("start")), str(metadata.get("document_id", "")))
            found.setdefault(str(metadata.get("source", "")), {})[chunk_id] = entry
        with self._transaction() as db:
            db.execute("DROP TABLE files")  # (with its columns: a record of another format goes whole)
            db.execute(_FILES)
            rows = []
            for source, chunks in found.items():
                signatures = {entry[0] for entry in chunks.values()}
                counts = {entry[1] for entry in chunks.values()}
                documents = len({entry[3] for entry in chunks.values()})
                # A file whose chunks do not all agree (a write cut short by an older version) keeps its
                # ids but no signature, so the next ingest of it writes it again.
                whole = len(signatures) == 1 and counts == {len(chunks)}
                ids = sorted(chunks, key=lambda i: (chunks[i][2], i))
                rows.append((source, signatures.pop() if whole else "", len(ids), " ".join(ids), documents, 0, 0))
            db.executemany("INSERT INTO files VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
            db.execute("INSERT OR REPLACE INTO info VALUES ('format', ?)", (FORMAT,))
            db.execute("INSERT OR REPLACE INTO info VALUES ('counter', ?)", (store.counter(),))
            db.execute("DELETE FROM info WHERE key = 'link'")
        return True

    def expect(self, store: VectorStore) -> None:
        """Before this writer bumps the store's write counter: the next value is ours too."""
        counter = store.counter()
        self.set_info(next=str(int(counter) + 1) if counter.isdigit() else None)

    def follow(self, state: str) -> None:
        """Record the store's write counter after this writer bumped it (rag.stores.chroma.Store.bump_state)."""
        self.set_info(format=FORMAT, counter=counter_of(state) or "", next=None)

    # -- reading ------------------------------------------------------------------------------------

    def get(self, source: str) -> FileRow | None:
        row = self._connect().execute(
            f"SELECT {_COLUMNS} FROM files WHERE source = ?", (source,)).fetchone()
        return _row(row) if row else None

    def sources(self) -> list[str]:
        """Every source with chunks in the store (removed files waiting for the lexical index left out)."""
        rows = self._connect().execute("SELECT source FROM files WHERE chunks > 0 OR pending = 1")
        return [source for (source,) in rows]

    def unindexed(self) -> list[FileRow]:
        """Rows whose chunks the lexical index may not hold as they are now."""
        rows = self._connect().execute(f"SELECT {_COLUMNS} FROM files WHERE indexed = 0")
        return [_row(row) for row in rows]

    def totals(self) -> tuple[int, int, int]:
        """Files, documents and chunks in the store, as the record counts them."""
        files, documents, chunks = self._connect().execute(
            "SELECT COUNT(*), COALESCE(SUM(documents), 0), COALESCE(SUM(chunks), 0) FROM files "
            "WHERE chunks > 0 OR pending = 1").fetchone()
        return int(files), int(documents), int(chunks)

    # -- writing, in the order an ingest writes the store ------------------------------------------------

    def begin(self, sources: Iterable[str]) -> None:
        """Before any chunk of these sources is written or deleted: their rows are pending."""
        with self._transaction() as db:
            for source in sources:
                db.execute("INSERT INTO files VALUES (?, '', 0, '', 0, 1, 0) "
                           "ON CONFLICT(source) DO UPDATE SET pending = 1, indexed = 0", (source,))

    def restore(self, source: str, row: FileRow | None) -> None:
        """Put a row back as it was before ``begin`` (None: there was none): nothing of the source
        was written after all (it failed to load)."""
        with self._transaction() as db:
            if row is None:
                db.execute("DELETE FROM files WHERE source = ?", (source,))
            else:
                db.execute("INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?, ?, ?, ?)",
                           (source, row.signature, len(row.ids), " ".join(row.ids), row.documents,
                            int(row.pending), int(row.indexed)))

    def finish(self, rows: Iterable[tuple[str, str, list[str], int]]) -> None:
        """After a file's new chunks are stored and its stale ones deleted: (source, signature, ids,
        documents). No ids: the file is removed from the store (its row stays until the lexical index
        drops it)."""
        with self._transaction() as db:
            db.executemany(
                "INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?, ?, 0, 0)",
                [(source, signature if ids else "", len(ids), " ".join(ids), documents)
                 for source, signature, ids, documents in rows])

    def mark_indexed(self, sources: Iterable[str]) -> None:
        """The lexical index committed these sources as the rows say: rows of removed files go."""
        with self._transaction() as db:
            for source in sources:
                db.execute("DELETE FROM files WHERE source = ? AND chunks = 0 AND pending = 0", (source,))
                db.execute("UPDATE files SET indexed = 1 WHERE source = ? AND pending = 0", (source,))

    def mark_all_indexed(self, link: str | None) -> None:
        """The lexical index was rebuilt from the store (``link`` names it): every row is in it."""
        with self._transaction() as db:
            db.execute("DELETE FROM files WHERE chunks = 0 AND pending = 0")
            db.execute("UPDATE files SET indexed = 1 WHERE pending = 0")
            if link is None:
                db.execute("DELETE FROM info WHERE key = 'link'")
            else:
                db.execute("INSERT OR REPLACE INTO info VALUES ('link', ?)", (link,))


_COLUMNS = "source, signature, ids, documents, pending, indexed"


def _row(row: tuple) -> FileRow:
    source, signature, ids, documents, pending, indexed = row
    return FileRow(source, signature, ids.split() if ids else [], int(documents), bool(pending), bool(indexed))


def _int(value: object) -> int:
    try:
        return int(value)  # type: ignore[call-overload]  # metadata values are any JSON scalar
    except (TypeError, ValueError):
        return -1
