"""Each stage built from its settings section, once, on first use: what rag.pipeline runs the
chain over. A stage's parameters are named as its settings fields, so a section is handed over
whole; a stage's own defaults equal the settings' (tests/test_settings.py).
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rag.chunking import Chunker
from rag.config import Settings, dotted_overrides, load_settings
from rag.embedding import build_embedder
from rag.generation import build_generator
from rag.indexing import IngestStages
from rag.loaders import load_file, ocr_salt, read_file
from rag.prompting import PromptBuilder
from rag.retrieval import FusionChoice, Reranker, Retriever
from rag.stores.bm25 import LexicalIndex
from rag.stores.chroma import Store
from rag.stores.files import FileRecord
from rag.types import TextEmbedder, TextGenerator

if TYPE_CHECKING:
    from typing_extensions import Self


class Stages:
    """The stages of one Settings, built lazily, once, even when threads of a server ask together."""

    def __init__(self, settings: Settings | None = None, *, progress: bool | None = None):
        self.settings = settings or Settings()
        self.progress = sys.stderr.isatty() if progress is None else progress
        self._stages: dict[str, Any] = {}
        self._building = threading.RLock()
        self._had_chunks = False  # a search has seen the store hold chunks

    @classmethod
    def from_yaml(cls, path: str | Path | None, *, sets: list[str] | None = None, **overrides: Any) -> Self:
        """Settings from the YAML file at ``path`` (the defaults when None), then ``overrides`` (a
        section as a dict, ``generation={"max_new_tokens": 64}``, or one key, ``retrieval__k=5``), then
        ``sets`` (``"key=value"`` items as ``--set`` takes them, the value read as YAML). Relative paths
        in the file are read from its folder; an unknown key or a wrong type is a ConfigError naming
        it and the file."""
        return cls(load_settings(path, dotted_overrides(overrides), sets))

    @classmethod
    def from_config(cls, config: dict[str, Any] | Settings | None = None, **overrides: Any) -> Self:
        """Settings from a dict shaped like the YAML file (``{"retrieval": {"k": 3}}``) or from a
        Settings, with ``overrides`` as for ``from_yaml``."""
        if isinstance(config, Settings):
            return cls(config)
        flat = dotted_overrides({**(config or {}), **overrides})
        return cls(load_settings(None, flat))

    def for_collection(self, collection: str) -> Self:
        """The same settings over another collection (an evaluation corpus's own), sharing the models
        already loaded; the store, lexical index and retriever are the new collection's."""
        settings = self.settings.model_copy(deep=True)
        settings.store.collection = collection
        other = type(self)(settings, progress=self.progress)
        shared = ("embedder", "generator", "small_generator", "prompt")  # the chunker follows the collection
        other._stages.update({name: stage for name, stage in self._stages.items() if name in shared})
        return other

    def _stage(self, name: str, build: Callable[[], Any]) -> Any:
        """A stage built on first use, once, even when threads of a server ask for it together."""
        if name not in self._stages:
            with self._building:
                if name not in self._stages:
                    self._stages[name] = build()
        return self._stages[name]

    @property
    def embedder(self) -> TextEmbedder:
        return self._stage("embedder", lambda: build_embedder(self.settings.embedding.model_dump()))

    @property
    def chunker(self) -> Chunker:
        return self._stage("chunker", lambda: Chunker(
            self.embedder.tokenizer, **self.settings.chunking.model_dump(exclude={"context"}),
            max_tokens=self.embedder.max_content_tokens, context=self._chunk_context()))

    def _worker_settings(self) -> Settings:
        """The settings a Ray worker builds its stages from: chunking.context resolved here, by the
        driver, so that every worker chunks as the collection does."""
        resolved = self.settings.model_copy(deep=True)
        resolved.chunking.context = self.chunker.context
        return resolved

    def _chunk_context(self) -> bool:
        """chunking.context as set; auto: as the collection recorded it (off for one made before the
        record knew it, so an upgrade embeds nothing again), on for a new collection."""
        setting = self.settings.chunking.context
        if setting != "auto":
            return setting
        record = self.store.record()
        return bool(record.get("chunking_context", False)) if record else True

    @property
    def store(self) -> Store:
        return self._stage("store", lambda: Store(**self.settings.store.model_dump(exclude={"lock_timeout"}),
                                                  space=self.settings.embedding.space))

    def _record(self) -> dict[str, Any]:
        """What the collection records about how it was built."""
        chunking = self.settings.chunking
        return {
            **self.embedder.describe(),
            "embedding_space": self.settings.embedding.space,
            "chunking_strategy": chunking.strategy,
            "chunking_chunk_size": self.chunker.limit,
            "chunking_chunk_overlap": chunking.chunk_overlap,
            "chunking_context": self.chunker.context,
        }

    def _open_store(self, *, create: bool) -> Store:
        self.store.open(self._record(), create=create)
        return self.store

    @property
    def lexical(self) -> LexicalIndex:
        folder = Path(self.settings.store.path) / "lexical" / self.settings.store.collection
        return self._stage("lexical", lambda: LexicalIndex(folder, **self.settings.lexical.model_dump()))

    @property
    def record(self) -> FileRecord:
        """The per-file record of the collection, beside its lexical index (rag.stores.files)."""
        path = Path(self.settings.store.path) / "files" / f"{self.settings.store.collection}.sqlite3"
        return self._stage("record", lambda: FileRecord(path))

    @property
    def generator(self) -> TextGenerator:
        return self._stage("generator", lambda: build_generator(self.settings.generation.model_dump()))

    @property
    def small_generator(self) -> bool:
        """Whether the generator gets the small-model answer settings (loads it)."""
        return self._stage("small_generator", lambda: self.generator.load().small)

    @property
    def prompt(self) -> PromptBuilder:
        def build() -> PromptBuilder:
            s = self.settings.prompt
            template = s.template
            if template == "auto":
                template = "qa_short" if self.small_generator else "qa_cited"
            return PromptBuilder(template, variables=s.variables)

        return self._stage("prompt", build)

    def _ingest_stages(self) -> IngestStages:
        s = self.settings
        # Settings that change what chunks a file yields: a change re-ingests the file.
        ocr = s.loading.ocr_options(progress=self.progress)
        salt = (f"{s.chunking.strategy}:{self.chunker.limit}:{s.chunking.chunk_overlap}:"
                f"{s.loading.json_text_field}:{self.embedder.model_name}"
                f"{':context' if self.chunker.context else ''}")  # absent when off: as before it existed
        return IngestStages(
            read=lambda path: read_file(path, max_bytes=s.loading.max_file_bytes),
            load=lambda path, data: load_file(path, json_text_field=s.loading.json_text_field, data=data,
                                              ocr=ocr),
            split=self.chunker.split, embed=self.embedder.embed_documents, salt=lambda path: salt + ocr_salt(path, ocr),
            open_store=lambda: self._open_store(create=True),
        )

    def retriever(self, mode: str | None = None) -> Retriever:
        """The retriever for ``mode``, built once; the lexical index is checked against the store
        on every call, so an ingest by another process is seen at once."""
        s = self.settings.retrieval
        mode = mode or s.mode
        store = self._open_store(create=False)
        lexical = self.lexical.in_step_with(store) if mode in ("lexical", "hybrid") else None

        def build() -> Retriever:
            r = self.settings.rerank
            reranker = Reranker(**r.model_dump(exclude={"top_n"})) if r.model else None
            return Retriever(store=store, embed_query=lambda text: self.embedder.embed_queries([text])[0],
                             reranker=reranker, rerank_top_n=r.top_n, **s.model_dump(exclude={"tune_on_ingest"}))

        retriever = self._stage("retriever", build)
        if lexical is not None:
            retriever.lexical = lexical
        if mode == "hybrid":  # read each time: another process may have tuned the collection since
            retriever.recorded = FusionChoice.from_record(store.record())
        return retriever


def ingest_stages(settings: Settings) -> IngestStages:
    """The ingest stages built from settings alone: what a Ray worker calls to build its own (with
    chunking.context resolved by the driver, so that every worker chunks as the collection does)."""
    return Stages(settings, progress=False)._ingest_stages()
