"""BM25 over the chunks' texts in a Tantivy index kept beside the store, under the same chunk ids.

Tantivy (Lucene's design, in Rust) keeps terms in immutable, memory-mapped segments: an update
writes a small segment and marks deleted documents, segments merge in the background, and a commit
replaces one small meta file atomically. So an update costs what it touches, and opening the index
maps files instead of reading them. Tantivy scores with Lucene's BM25 (k1 1.2, b 0.75, document
lengths kept to one byte); the analysis is today's: words of two characters or more, lowercased,
bm25s's stop words, then Snowball's stemmer.

Beside the terms the index keeps each chunk's metadata as the store holds it, in a column table
(``rag.stores.filters``) that answers a search's filter exactly as the store would (``select``).
Each document carries its ``row`` in that table (a fast field); rows are never reused, so a deleted
chunk leaves an empty row until the next rebuild. The table (the ids by row, the codes, the distinct
values) is saved under fresh names before each commit and named in that commit, so the table a
reader loads is always the one of the documents it searches.

A special document records what the commit matches: the collection's ``state`` token (stale when
it differs from the store's), the settings that built it, and a ``link`` naming this index's lineage
so that the per-file record (rag.stores.files) can tell whether it tracked this very index. A
rebuild writes a whole new index in a folder of its own and switches ``CURRENT`` to it atomically,
so a crash at any point leaves the previous index whole.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import shutil
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Set
from pathlib import Path
from typing import Any

import numpy as np
import tantivy
from bm25s.tokenization import _infer_stopwords

from rag.errors import ConfigError, StoreError
from rag.files import fsync_folder
from rag.stores.filters import MetadataTable, canonical_where
from rag.text import log
from rag.types import LexicalItem, VectorStore, counter_of, lexical_item

__all__ = ["CURRENT", "LexicalIndex", "Selection"]

FORMAT = 2
CURRENT = "CURRENT"  # names the index folder in use
TOKEN_PATTERN = r"(?u)\b\w\w+\b"  # bm25s's default word pattern (words of two characters or more)
K1, B = 1.2, 0.75  # Tantivy's BM25 (Lucene's defaults); the engine does not take others
STEMMERS = ("arabic", "danish", "dutch", "english", "finnish", "french", "german", "greek", "hungarian", "italian",
            "norwegian", "portuguese", "romanian", "russian", "spanish", "swedish", "tamil", "turkish")
STATE_ID = "\x00rag-state"  # the id of the document that records what a commit matches
WRITER_HEAP = 64_000_000  # bytes of documents Tantivy buffers before it writes a segment
SMALL = 4096  # a filter keeping at most this many chunks restricts the search inside Tantivy
BATCH = 50_000  # chunks whose metadata a rebuild holds at once
_SELECTIONS = 32  # filters whose answer is kept until the index changes
_DECLINED = object()
# Our files, and those of the bm25s index an earlier version kept here (removed by the first commit).
_OURS = re.compile(r"^(\.tmp-.*|index\.[0-9a-f]+|(rows|codes|meta)\.[0-9a-f]+\.(npy|json)"
                   r"|manifest\.json|(ids|tokens|offsets|bm25s)\.[0-9a-f]+(\.json|\.npy)?)$")
_LOAD_ERRORS = (OSError, ValueError)  # what a missing, damaged or foreign index raises; anything else is a bug


class Selection(Set):
    """The chunks a filter keeps (``LexicalIndex.select``): a set of chunk ids that also holds them
    as rows of the index it came from, so that index restricts its search by them directly."""

    __slots__ = ("_ids", "_names", "_set", "count", "rows", "table")

    def __init__(self, rows: np.ndarray, names: np.ndarray, table: object):
        self.rows = rows  # a bool per row of the index's table
        self.table = table  # the table it was answered from
        self._names = names  # chunk id per row (utf-8 bytes; empty for a deleted chunk)
        self.count = int(np.count_nonzero(rows))
        self._ids: list[str] | None = None
        self._set: set[str] | None = None

    def __contains__(self, chunk_id: object) -> bool:
        if self._set is None:
            self._set = set(self)
        return chunk_id in self._set

    def __len__(self) -> int:
        return self.count

    def __iter__(self) -> Iterator[str]:
        if self._ids is None:  # kept: a selection is kept for repeated filters, and read per search
            self._ids = [name.decode() for name in self._names[np.flatnonzero(self.rows)].tolist()]
        return iter(self._ids)


def _locked(method: Callable) -> Callable:
    @functools.wraps(method)
    def call(self, *args, **kwargs):
        with self._lock:
            return method(self, *args, **kwargs)

    return call


class LexicalIndex:
    """A persisted BM25 index over (chunk id, text[, metadata]) items (see the module docstring).

    Safe to share between threads: every public method holds one lock, and a search reads one
    consistent commit. One writing process per folder (the store's write lock).
    """

    def __init__(self, folder: str | Path, *, stemmer: str | None = "english", stopwords: str | None = "en",
                 k1: float = K1, b: float = B):
        self.folder = Path(folder)
        if (float(k1), float(b)) != (K1, B):  # a config written for the bm25s index, whose k1 was 1.5
            log(f"lexical: note: k1={k1}, b={b} are not used; the index (Tantivy) scores with BM25's k1={K1}, "
                f"b={B} (remove lexical.k1 and lexical.b to silence this)")
        self._settings = {"stemmer": stemmer, "stopwords": stopwords, "k1": K1, "b": B, "engine": "tantivy",
                          "token_pattern": TOKEN_PATTERN}
        self._analyzer = _analyzer(stemmer, stopwords)
        self._schema = _schema()
        self._index: tantivy.Index | None = None  # None: nothing built or loaded
        self._state: str | None = None
        self._link: str | None = None
        self._names = np.zeros(0, dtype="S1")  # chunk id per row (b"": a deleted chunk's row)
        self._table: MetadataTable | None = None  # loaded from _table_files on first need
        self._table_files: dict[str, str] | None = None  # the saved table's files; None: no metadata
        self._live: np.ndarray | None = None
        self._selections: dict[str, Any] = {}  # a filter's canonical repr -> Selection or _DECLINED
        self._previous_files: set[str] = set()  # the files of the commit before the last one written here
        self._lock = threading.RLock()

    # -- what it holds ------------------------------------------------------------------------------

    @property
    def state(self) -> str | None:
        """The collection-state token recorded at the last commit (None if never built)."""
        return self._state

    @property
    def link(self) -> str | None:
        """Names this index's lineage: a rebuild starts a new one (see rag.stores.files)."""
        return self._link

    @property
    @_locked
    def ids(self) -> set[str]:
        return {name.decode() for name in self._names.tolist() if name}

    @_locked
    def __len__(self) -> int:
        return int(np.count_nonzero(self._names != b""))

    @property
    def has_metadata(self) -> bool:
        """Whether the index keeps every chunk's metadata, so ``select`` can answer filters."""
        return self._table_files is not None or self._table is not None

    def terms(self, texts: list[str]) -> list[list[int]]:
        """Each text as BM25 terms of this index's analysis (stemmer, stop words), as term ids of a
        vocabulary of its own: for scoring texts that are not in the index, such as sentences."""
        vocabulary: dict[str, int] = {}
        return [[vocabulary.setdefault(term, len(vocabulary)) for term in self._analyzer.analyze(text)]
                for text in texts]

    # -- loading ------------------------------------------------------------------------------------------

    @_locked
    def load(self) -> bool:
        """Open the saved index; False if it is missing, damaged or was built with other settings,
        so the caller rebuilds it. Anything else that goes wrong is a bug, and raises."""
        try:
            index = self._open_saved()
            note = _note(index, self._schema)
            if note.get("format") != FORMAT or note.get("settings") != self._settings:
                return False
            state, link, files = note["state"], note.get("link"), note.get("table")
            names = np.load(self.folder / note["rows"], mmap_mode="r", allow_pickle=False)
            if not isinstance(state, str) or names.ndim != 1 or names.dtype.kind != "S" or len(names) != note["count"]:
                raise ValueError("inconsistent lexical index")
            if files is not None and not all((self.folder / name).is_file() for name in files.values()):
                raise ValueError("lexical index metadata files missing")
        except _LOAD_ERRORS:
            return False
        self._use(index, state, link, np.asarray(names), files, reload=False)
        self._previous_files = {self.folder.joinpath(_current_index(self.folder)).name, note["rows"],
                                *(files or {}).values()}
        return True

    def _open_saved(self) -> tantivy.Index:
        current = json.loads((self.folder / CURRENT).read_text(encoding="utf-8"))
        if not isinstance(current, dict) or not isinstance(current.get("index"), str):
            raise ValueError("bad CURRENT")
        path = self.folder / current["index"]
        if not path.is_dir():
            raise ValueError("index folder missing")
        index = tantivy.Index.open(str(path))
        index.config_reader(reload_policy="Manual")  # a reader moves to a new commit only through load()
        index.register_tokenizer("rag", self._analyzer)
        return index

    def _use(self, index: tantivy.Index, state: str, link: str | None, names: np.ndarray,
             table_files: dict[str, str] | None, table: MetadataTable | None = None, *, reload: bool = True) -> None:
        """Switch to a commit: searches from here on read it (its documents, rows and table). A loaded
        index is already at the commit its note was read from, and must stay there."""
        with self._lock:
            if reload:
                index.reload()
            self._index, self._state, self._link, self._names = index, state, link, names
            self._table_files, self._table, self._live = table_files, table, None
            self._selections = {}

    def _saved_state(self) -> str | None:
        """The state the saved index records (None when there is none), read without loading it."""
        try:
            return _note(self._open_saved(), self._schema).get("state")
        except _LOAD_ERRORS:
            return None

    def _metadata(self) -> MetadataTable | None:
        """The metadata table, read on first need (a search without a filter never needs it)."""
        if self._table is None and self._table_files is not None:
            files = self._table_files
            try:
                described = json.loads((self.folder / files["meta"]).read_text(encoding="utf-8"))
                codes = np.load(self.folder / files["codes"], allow_pickle=False)
                self._table = MetadataTable.restore(described, codes, len(self._names))
            except _LOAD_ERRORS as exc:
                log(f"lexical index at {self.folder}: its metadata table is unreadable ({exc}); filters go to the "
                    "store until the next ingest rebuilds the index")
                self._table_files = None
        return self._table

    # -- writing ------------------------------------------------------------------------------------------

    def rebuild(self, items: Iterable[LexicalItem], state: str, *, save: bool = True) -> None:
        """Replace everything with ``items`` (a repeated id keeps its last text), then commit unless
        ``save`` is False (a reader's private copy while a writer owns the files). The metadata is
        kept only when every item has it."""
        tag = uuid.uuid4().hex[:16]
        path = self.folder / f"index.{tag}"
        if save:
            self.folder.mkdir(parents=True, exist_ok=True)
            path.mkdir()
            index = tantivy.Index(self._schema, path=str(path), reuse=False)
        else:
            index = tantivy.Index(self._schema)
        index.register_tokenizer("rag", self._analyzer)
        with _writing(index) as writer:
            link, array, table, rows_file, table_files = self._fill(writer, items, state, tag, save)
            writer.commit()
        if save:
            self._replace_file(CURRENT, json.dumps({"index": path.name}))
        self._use(index, state, link, array, table_files, table)
        if save:
            self._forget_files(path.name, rows_file, table_files)

    def _fill(self, writer: tantivy.IndexWriter, items: Iterable[LexicalItem], state: str, tag: str,
              save: bool) -> tuple[str, np.ndarray, MetadataTable | None, str, dict[str, str] | None]:
        """A rebuild's documents and table, added to an empty index and saved (uncommitted)."""
        names: list[bytes] = []
        table: MetadataTable | None = MetadataTable.build([])
        rows: dict[str, int] = {}
        batch: list[Mapping[str, Any]] = []
        dropped: list[int] = []

        def flush() -> None:
            nonlocal table, batch, dropped
            if table is not None:
                source = np.concatenate([np.arange(table.rows), np.full(len(batch), -1)])
                table = table.updated(source, batch, np.asarray(dropped, dtype=np.int64))
            batch, dropped = [], []

        for item in items:
            chunk_id, text = item[0], item[1]
            if chunk_id in rows:  # a repeated id: its earlier document goes
                writer.delete_documents_by_term("id", chunk_id)
                names[rows[chunk_id]] = b""
                dropped.append(rows[chunk_id])
            rows[chunk_id] = len(names)
            names.append(chunk_id.encode())
            metadata = item[2] if len(item) > 2 else None
            writer.add_document(_document(chunk_id, text, metadata, rows[chunk_id]))
            if metadata is None:
                table = None
            elif table is not None:
                batch.append(metadata)
                if len(batch) >= BATCH:
                    flush()
        flush()
        link = uuid.uuid4().hex
        array = np.array(names, dtype=f"S{max([len(n) for n in names], default=1)}")
        rows_file, table_files = self._save_table(array, table, tag) if save else ("", None)
        writer.add_document(_state_document(self._note(state, link, len(array), rows_file, table_files)))
        return link, array, table, rows_file, table_files

    def update(self, upserts: Iterable[LexicalItem] = (), deletes: Iterable[str] = (), state: str = "", *,
               sources: Iterable[str] = ()) -> None:
        """Delete ``deletes`` (unknown ids ignored) and every chunk whose metadata names one of
        ``sources``, then upsert ``upserts`` by id, record ``state`` and commit. Deletes go first, so
        an id in both ends up present. An upsert without its metadata drops the metadata table
        (filters go to the store) until a rebuild."""
        items = {item[0]: item for item in upserts}
        gone, sources = set(deletes), list(dict.fromkeys(sources))
        if self._index is None:
            self.rebuild([], state)
        index = self._index
        assert index is not None
        searcher = index.searcher()
        # The rows that go: every id upserted or deleted, every chunk of the sources.
        doomed = _rows_of(searcher, self._schema, [*gone, *items], sources)
        table = self._metadata() if self.has_metadata else None
        with_metadata = all(len(item) > 2 for item in items.values())
        with _writing(index) as writer:
            names, table, rows_file, table_files = self._change(writer, items, gone, sources, doomed, table,
                                                                with_metadata, state)
            writer.commit()
        self._use(index, state, self._link, names, table_files, table)
        self._forget_files(_current_index(self.folder), rows_file, table_files)

    def _change(self, writer: tantivy.IndexWriter, items: dict[str, LexicalItem], gone: set[str], sources: list[str],
                doomed: np.ndarray, table: MetadataTable | None, with_metadata: bool,
                state: str) -> tuple[np.ndarray, MetadataTable | None, str, dict[str, str] | None]:
        """An update's deletes, documents and table, written (uncommitted)."""
        for chunk_id in [*gone, *items]:
            writer.delete_documents_by_term("id", chunk_id)
        for source in sources:
            writer.delete_documents_by_term("source", source)
        first = len(self._names)
        for offset, (chunk_id, item) in enumerate(items.items()):
            metadata = item[2] if len(item) > 2 else None
            writer.add_document(_document(chunk_id, item[1], metadata, first + offset))
        new_names = [chunk_id.encode() for chunk_id in items]
        width = max([self._names.dtype.itemsize, *[len(n) for n in new_names]])
        # A new array (searches keep reading the committed one until the switch), copied once.
        names = np.concatenate([self._names, np.array(new_names, dtype=f"S{width}")], dtype=f"S{width}")
        names[doomed] = b""
        if table is not None and with_metadata:
            origin = np.concatenate([np.arange(table.rows), np.full(len(items), -1)])
            table = table.updated(origin, [item[2] for item in items.values()], doomed)  # type: ignore[misc]  # with_metadata: every item has its metadata third
        else:
            table = None
        rows_file, table_files = self._save_table(names, table, uuid.uuid4().hex[:16])
        writer.delete_documents_by_term("id", STATE_ID)
        writer.add_document(_state_document(self._note(state, self._link, len(names), rows_file, table_files)))
        return names, table, rows_file, table_files

    @property
    def dead_rows(self) -> int:
        """Rows of deleted chunks, kept until the next rebuild."""
        return int(np.count_nonzero(self._names == b""))

    def _note(self, state: str, link: str | None, count: int, rows_file: str,
              table_files: dict[str, str] | None) -> dict[str, Any]:
        return {"format": FORMAT, "settings": self._settings, "state": state, "link": link, "count": count,
                "rows": rows_file, "table": table_files}

    def _save_table(self, names: np.ndarray, table: MetadataTable | None,
                    tag: str) -> tuple[str, dict[str, str] | None]:
        """The ids by row and the metadata table, under fresh names (see the module docstring)."""
        rows_file = f"rows.{tag}.npy"
        self._write(rows_file, lambda f: np.save(f, names, allow_pickle=False))
        if table is None:
            return rows_file, None
        table_files = {"meta": f"meta.{tag}.json", "codes": f"codes.{tag}.npy"}
        self._write(table_files["meta"], lambda f: f.write(json.dumps(table.describe()).encode()))
        self._write(table_files["codes"], lambda f: np.save(f, table.codes, allow_pickle=False))
        return rows_file, table_files

    def _forget_files(self, index: str, rows_file: str, table_files: dict[str, str] | None) -> None:
        """Delete the files of commits before the previous one: a reader in another process may be
        loading the previous one just now."""
        current = {index, rows_file, *(table_files or {}).values()}
        self._remove_unused(current | self._previous_files)
        self._previous_files = current

    def _write(self, name: str, write: Callable[[Any], Any]) -> None:
        """Write a temporary file, fsync it, then move it to ``name``."""
        tmp = self.folder / f".tmp-{name}"
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.folder / name)

    def _replace_file(self, name: str, text: str) -> None:
        self._write(name, lambda f: f.write(text.encode()))
        fsync_folder(self.folder)

    def _remove_unused(self, keep: set[str]) -> None:
        """Delete what earlier commits left behind (old generations, interrupted writes)."""
        for path in self.folder.iterdir():
            if path.name not in keep and _OURS.match(path.name):
                if path.is_dir():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink(missing_ok=True)

    # -- in step with the store -----------------------------------------------------------------------

    def in_step_with(self, store: VectorStore) -> LexicalIndex:
        """This index in step with ``store``: as it is; or read again, when a writer committed one that
        matches the store; or rebuilt from the store when missing or behind it (see ``state``).

        While an ingest holds the store, an index already loaded is used as it is: the last complete
        one, which the ingest brings up to date when it ends. Searches during an ingest (a server's)
        then keep their usual speed instead of rebuilding on every write. With none loaded it is
        rebuilt in memory only, since the files are the writer's.

        On every search this costs one read of the store's write counter (``VectorStore.counter``):
        the whole state token, whose count scans the collection, is read only when the counter moved."""
        if self._state is not None and counter_of(self._state) == store.counter():
            return self
        state = store.state
        with self._lock:
            if self._state is None or (self._state != state and self._saved_state() == state):
                self.load()
            if self._state != state:
                try:
                    with store.write_lock(wait=False):
                        self._log_rebuild(store)
                        self.rebuild((lexical_item(*item) for item in store.iter_texts(metadata=True)), store.state)
                except StoreError:
                    if self._state is None:
                        self._log_rebuild(store)
                        self.rebuild((lexical_item(*item) for item in store.iter_texts(metadata=True)), state,
                                     save=False)
        return self

    @staticmethod
    def _log_rebuild(store: VectorStore) -> None:
        log(f"lexical index is missing or stale; rebuilding it from the collection ({store.count()} chunks)")

    # -- answering ----------------------------------------------------------------------------------------

    @_locked
    def select(self, where: dict) -> Selection | None:
        """The chunks ``where`` keeps, answered from the metadata kept here exactly as the store
        answers it (rag.stores.filters); None when the index keeps no metadata or leaves this filter
        to the store. It describes the chunks as of ``state``: the caller checks that the store is
        still there. A malformed filter is a ConfigError, as from the store. Answers are kept until
        the index changes, so a repeated filter costs a dictionary lookup."""
        canonical = canonical_where(where)
        if not self.has_metadata or canonical is None:
            return None
        key = repr(canonical)
        found = self._selections.get(key)
        if found is None:
            table = self._metadata()
            if table is None:  # unreadable: left to the store
                return None
            rows = table.matching(canonical)
            if rows is not None:
                if self._live is None:
                    self._live = self._names != b""
                found = Selection(rows & self._live, self._names, table)
            else:
                found = _DECLINED
            if len(self._selections) >= _SELECTIONS:
                self._selections.pop(next(iter(self._selections)))
            self._selections[key] = found
        return found if isinstance(found, Selection) else None

    def search(self, query: str, k: int, allowed_ids: Set[str] | None = None) -> list[tuple[str, float]]:
        """Top ``k`` (chunk id, BM25 score) pairs, best first, scores > 0 only.

        Equal scores come in id order so results are reproducible. ``allowed_ids`` restricts
        the candidates before the cut, so up to ``k`` allowed hits come back; a ``Selection`` from
        this index as it is now restricts by its rows directly.
        """
        terms = self._analyzer.analyze(query) if k > 0 else []
        with self._lock:
            index, names, table = self._index, self._names, self._table
            searcher = index.searcher() if index is not None and terms else None
        if searcher is None:
            return []
        schema = self._schema
        text = tantivy.Query.boolean_query([(tantivy.Occur.Should, tantivy.Query.term_query(schema, "text", t))
                                            for t in terms])
        keep: Callable[[np.ndarray], np.ndarray] | None = None
        if allowed_ids is not None:
            if isinstance(allowed_ids, Selection) and allowed_ids.table is table and table is not None:
                if not allowed_ids.count:
                    return []
                mask = allowed_ids.rows
                if allowed_ids.count <= SMALL:
                    text = _restricted(text, tantivy.Query.term_set_query(
                        schema, "row", np.flatnonzero(mask).tolist()))
                else:
                    keep = lambda rows: mask[rows]  # noqa: E731 - a one-line filter, named for _top
            else:
                wanted = [i for i in allowed_ids if isinstance(i, str)]
                if not wanted:
                    return []
                if len(wanted) <= SMALL:
                    text = _restricted(text, tantivy.Query.term_set_query(schema, "id", wanted))
                else:
                    allowed = set(wanted)
                    keep = lambda rows: np.fromiter(  # noqa: E731 - a one-line filter, named for _top
                        (names[r].decode() in allowed for r in rows.tolist()), dtype=bool, count=len(rows))
        return _top(searcher, text, k, names, keep)


# -- Tantivy, as rag uses it --------------------------------------------------------------------------------


def _analyzer(stemmer: str | None, stopwords: str | None) -> tantivy.TextAnalyzer:
    """Words of two characters or more, lowercased, stop words out, stemmed: bm25s's analysis."""
    builder = tantivy.TextAnalyzerBuilder(tantivy.Tokenizer.regex(TOKEN_PATTERN)).filter(tantivy.Filter.lowercase())
    if stopwords is not None:
        try:
            words = _infer_stopwords(stopwords)
        except ValueError:
            words = None
        if not words:
            raise ConfigError(f"unknown BM25 stopwords {stopwords!r}: use a language bm25s knows (e.g. 'en') "
                              "or null for none")
        builder = builder.filter(tantivy.Filter.custom_stopword(list(words)))
    if stemmer is not None:
        if stemmer not in STEMMERS:
            raise ConfigError(f"unknown stemmer {stemmer!r}: use one of {', '.join(STEMMERS)}, or null for none")
        builder = builder.filter(tantivy.Filter.stemmer(stemmer))
    return builder.build()


def _schema() -> tantivy.Schema:
    builder = tantivy.SchemaBuilder()
    builder.add_text_field("id", stored=False, tokenizer_name="raw", index_option="basic")
    builder.add_text_field("source", stored=False, tokenizer_name="raw", index_option="basic")
    builder.add_text_field("text", stored=False, tokenizer_name="rag", index_option="freq")
    builder.add_unsigned_field("row", indexed=True, fast=True)
    builder.add_text_field("note", stored=True, tokenizer_name="raw", index_option="basic")
    return builder.build()


def _document(chunk_id: str, text: str, metadata: Mapping[str, Any] | None, row: int) -> tantivy.Document:
    document = tantivy.Document()
    document.add_text("id", chunk_id)
    source = (metadata or {}).get("source")
    if isinstance(source, str):
        document.add_text("source", source)
    document.add_text("text", text)
    document.add_unsigned("row", row)
    return document


def _state_document(note: dict[str, Any]) -> tantivy.Document:
    document = tantivy.Document()
    document.add_text("id", STATE_ID)
    document.add_text("note", json.dumps(note))
    return document


def _note(index: tantivy.Index, schema: tantivy.Schema) -> dict[str, Any]:
    """What the commit a reader sees records (its state document)."""
    index.reload()
    searcher = index.searcher()
    found = searcher.search(tantivy.Query.term_query(schema, "id", STATE_ID), 1, count=False).hits
    if not found:
        raise ValueError("no state document")
    note = json.loads(searcher.doc(found[0][1])["note"][0])
    if not isinstance(note, dict):
        raise ValueError("bad state document")
    return note


@contextlib.contextmanager
def _writing(index: tantivy.Index) -> Iterator[tantivy.IndexWriter]:
    """A writer that leaves nothing behind on failure: what it did since the last commit is rolled
    back, and leaving lets it go (Tantivy's lock on the folder with it)."""
    writer = index.writer(WRITER_HEAP, 1)
    with writer:  # leaving commits what is pending (nothing, after a rollback) and consumes the writer
        try:
            yield writer
        except BaseException:
            writer.rollback()
            raise


def _current_index(folder: Path) -> str:
    try:
        return str(json.loads((folder / CURRENT).read_text(encoding="utf-8"))["index"])
    except (OSError, ValueError, KeyError, TypeError):
        return ""


def _restricted(query: tantivy.Query, among: tantivy.Query) -> tantivy.Query:
    """``query``'s matches that ``among`` also matches, scored by ``query`` alone."""
    return tantivy.Query.boolean_query([(tantivy.Occur.Must, query),
                                        (tantivy.Occur.Must, tantivy.Query.const_score_query(among, 0.0))])


def _rows_of(searcher: tantivy.Searcher, schema: tantivy.Schema, ids: list[str], sources: list[str]) -> np.ndarray:
    """The rows of the documents with these ids or sources (their chunks), found through the index."""
    clauses = []
    if ids:
        clauses.append((tantivy.Occur.Should, tantivy.Query.term_set_query(schema, "id", ids)))
    if sources:
        clauses.append((tantivy.Occur.Should, tantivy.Query.term_set_query(schema, "source", sources)))
    if not clauses:
        return np.zeros(0, dtype=np.int64)
    query = tantivy.Query.boolean_query(clauses)
    limit = 1024
    while len(hits := searcher.search(query, limit, count=False).hits) == limit:
        limit *= 4
    rows = searcher.fast_field_values("row", [address for _, address in hits])
    return np.asarray([r for r in rows if r is not None], dtype=np.int64)


def _top(searcher: tantivy.Searcher, query: tantivy.Query, k: int, names: np.ndarray,
         keep: Callable[[np.ndarray], np.ndarray] | None) -> list[tuple[str, float]]:
    """The best ``k`` kept hits, ties (equal scores) in id order. Tantivy gives the best n hits in its
    own order; n grows until k kept hits are in and no hit left out could tie the k-th."""
    limit = max(4 * k, 64) if keep is not None else k + 16
    while True:
        hits = searcher.search(query, limit, count=False).hits
        scores = np.fromiter((score for score, _ in hits), dtype=np.float64, count=len(hits))
        rows = np.asarray(searcher.fast_field_values("row", [address for _, address in hits]), dtype=np.int64)
        kept = keep(rows) if keep is not None and len(rows) else np.ones(len(rows), dtype=bool)
        kept &= scores > 0
        exhausted = len(hits) < limit
        kept_scores = scores[kept]
        if exhausted or (len(kept_scores) >= k and scores[-1] < kept_scores[k - 1]):
            break
        limit *= 4
    found = [(names[row].decode(), float(score)) for row, score in zip(rows[kept].tolist(), kept_scores.tolist(),
                                                                        strict=True)]
    found.sort(key=lambda hit: (-hit[1], hit[0]))
    return found[:k]
