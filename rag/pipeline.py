"""Wires the stages: ingest(), search(), ask(), stream(). Only this module knows the whole chain.

The stages themselves are built by rag.stages, once, on first use; here they are handed to one
another: the Indexer (rag.indexing) gets the loader, chunker, embedder, store and lexical index; the
Retriever the store, query encoder and lexical index; an answer is evidence -> prompt -> generator ->
citations.
"""

from __future__ import annotations

import time
from collections import abc
from collections.abc import Callable, Iterable, Iterator, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from rag.errors import RagError, StoreError
from rag.evidence import best_sentences
from rag.indexing import Engine, Indexer, IngestReport, LocalEngine
from rag.loaders import iter_files
from rag.prompting import citations
from rag.retrieval import describe_fusion, near_duplicates
from rag.stages import Stages, ingest_stages
from rag.tuning import tuned
from rag.types import Answer, Chunk, Document, Hit, TextGenerator, VectorStore


class Pipeline(Stages):
    """One object configured by one Settings (rag.stages builds each stage from it, once, lazily);
    what flows through the stages: ingest, search, ask and stream.

    Build it with ``Pipeline.from_yaml``, ``Pipeline.from_config`` or ``Pipeline(settings)``;
    ``progress`` shows progress bars (by default when stderr is a terminal). One Pipeline may serve
    many threads: each stage is built once, on first use, under a lock."""

    # -- ingestion ------------------------------------------------------------------------------

    def ingest(self, paths: Iterable[str | Path], *, sync: bool = False, wait: bool = True,
               on_file: Callable[[str], None] | None = None) -> IngestReport:
        """Load, chunk, embed and store every supported file under ``paths`` (see rag.indexing).
        With ``sync``, files ingested before from under ``paths`` that are gone now are removed.
        ``on_file`` is told each file's path as the ingest reaches it (a server's progress). Returns
        the IngestReport: files added, updated, unchanged, removed and failed (with their reasons),
        chunks embedded and deleted. ``wait=False`` fails at once if another ingest holds the store."""
        roots = [Path(p) for p in paths]
        loading = self.settings.loading

        def items() -> Iterator[Any]:
            for item in iter_files(roots, loading.include, loading.exclude):
                yield item
                if on_file is not None:
                    on_file(str(getattr(item, "path", item)))
        # rag.tuning: the collection's fusion is chosen again at the end when worth it
        return tuned(self, self._indexer().run(items, sync_roots=roots if sync else None, wait=wait))

    def ingest_documents(self, documents: Iterable[Document], *, wait: bool = True) -> IngestReport:
        """Ingest documents made in memory (e.g. an evaluation corpus); ``metadata["source"]`` is each
        one's identity, as a file's path is for files."""
        return tuned(self, self._indexer("local").run(lambda: iter(documents), wait=wait))  # in this process

    def remove(self, sources: Iterable[str | Path], *, wait: bool = True) -> IngestReport:
        """Delete these documents (a file's path, or a document's ``source``) from the store and the
        lexical index; ``removed`` counts the sources that were there."""
        stored = [str(Path(s).resolve()) if Path(s).exists() else str(s) for s in sources]
        return self._indexer("local").remove(stored, wait=wait)  # nothing to spread: no engine needed

    def _indexer(self, engine: str | None = None) -> Indexer:
        s = self.settings
        engine = engine or s.ingest.engine
        runner: Engine
        if engine == "ray":  # checked before anything is loaded: the one line says what to set
            from rag.engines.ray import RayEngine

            runner = RayEngine(partial(ingest_stages, self._worker_settings()), url=s.store.url,
                               **s.ingest.ray.model_dump())
        stages = self._ingest_stages()
        if engine != "ray":
            runner = LocalEngine(stages, write_batch=s.ingest.write_batch, prepare_ahead=self._prepare_ahead())
        return Indexer(store=stages.open_store(), lexical=self.lexical, record=self.record, read=stages.read,
                       salt=stages.salt, engine=runner, progress=self.progress, lock_timeout=s.store.lock_timeout,
                       embedding_dtype=self.embedder.dtype_name)

    def _prepare_ahead(self) -> bool:
        """Loading and chunking in a thread overlap with encoding only when the encoder leaves the
        CPU idle (a GPU). On the CPU torch already keeps every core busy: a second thread only
        competes with it, and peak memory grew with the corpus (docs/benchmarks.md)."""
        setting = self.settings.ingest.prepare_ahead
        return self.embedder.device != "cpu" if setting == "auto" else bool(setting)

    # -- questions ------------------------------------------------------------------------------

    def search(self, query: str, k: int | None = None, *, mode: str | None = None,
               where: dict | None = None) -> list[Hit]:
        """The ``k`` best chunks for ``query`` (default ``retrieval.k``), best first. ``mode`` and
        ``where`` (a metadata filter) replace ``retrieval.mode`` and ``retrieval.where`` for this
        search. An empty query is a RagError, an empty store a StoreError."""
        if not query or not query.strip():
            raise RagError("the query is empty; ask something")
        store = self._open_store(create=False)
        empty = f"store at {store.location} is empty; run `rag ingest PATH` first"
        # A count is not free on a big collection: counted on the first search, then only when one finds
        # nothing.
        if not self._had_chunks and store.count() == 0:
            raise StoreError(empty)
        self._had_chunks = True
        hits = self.retriever(mode).search(query, k, mode=mode, where=where)
        if not hits and store.count() == 0:
            raise StoreError(empty)
        return hits

    def ask(self, question: str, k: int | None = None, *, mode: str | None = None,
            hits: list[Hit] | None = None, **options: Any) -> Answer:
        """The whole Answer at once: ``stream`` without the pieces. ``options``: ``where``,
        ``history`` and ``generation``, as for ``stream``."""
        answer = None
        for piece in self.stream(question, k, mode=mode, hits=hits, **options):
            if isinstance(piece, Answer):
                answer = piece
        assert answer is not None
        return answer

    def stream(self, question: str, k: int | None = None, *, mode: str | None = None,
               hits: list[Hit] | None = None, where: dict | None = None,
               history: Sequence[dict[str, str]] = (), generation: dict[str, Any] | None = None,
               ) -> Iterator[str | Answer]:
        """Yields the answer's text pieces as they are generated, then the finished Answer.

        ``k``, ``mode`` and ``where`` retrieve as ``search`` does; ``hits`` given: answer from those
        instead of retrieving (an evaluation's gold passage, or none). ``history``: earlier messages
        of a conversation (``{"role", "content"}`` dicts), for templates that show them;
        ``generation``: this answer's own ``max_new_tokens``, ``temperature``, ``top_p``, ``stop``
        or ``seed`` (rag.generation.REQUEST_OPTIONS), e.g. a server request's ``max_tokens``.
        Closing the iterator early stops the model."""
        timings: dict[str, float] = {}
        clock = time.perf_counter()
        hits = self.search(question, k, mode=mode, where=where) if hits is None else list(hits)
        timings["retrieval"] = time.perf_counter() - clock

        clock = time.perf_counter()
        generator = self.generator.with_options(**generation) if generation else self.generator
        evidence = self._evidence(question, hits)
        prompt, kept, dropped = self.prompt.pack(
            question, evidence, generator.count_tokens, generator.prompt_budget(),
            escape=generator.neutralize, finish=generator.format_prompt, history=history,
        )
        warnings = []
        if not hits:
            warnings.append("nothing was retrieved for this question, so the answer rests on no source")
        elif not kept:
            warnings.append(f"none of the {len(evidence)} retrieved sources fit the context window, so the "
                            "answer rests on no source; lower generation.max_new_tokens or chunking.chunk_size")
        timings["prompt"] = time.perf_counter() - clock

        text, usage, interrupted = yield from self._generate(generator, prompt, timings)
        if interrupted:
            warnings.append(interrupted)
        cited, unknown, cited_by = citations(text, [hit.chunk.text for hit in kept])
        yield Answer(text=text, hits=kept, citations=cited, prompt=prompt, timings=timings, usage=usage,
                     dropped_hits=dropped, unknown_citations=unknown, cited_by=cited_by, warnings=warnings,
                     interrupted=interrupted)

    @staticmethod
    def _generate(generator: TextGenerator, prompt: str,
                  timings: dict[str, float]) -> abc.Generator[str, None, tuple[str, dict[str, int], str | None]]:
        """Yields the generated pieces; returns the whole text, the usage and why the text was cut short
        (None when it was not), with their timings."""
        clock = time.perf_counter()
        completion = generator.stream(prompt)
        text = yield from completion.timed(timings, clock)
        return text, dict(completion.usage), completion.interrupted

    def _evidence(self, question: str, hits: list[Hit]) -> list[Hit]:
        """What the prompt shows: the hits themselves, or their best sentences."""
        s = self.settings.prompt
        sentences = s.evidence == "sentences" or (s.evidence == "auto" and self.small_generator)
        if not sentences or not hits:
            return hits
        return best_sentences(
            question, hits, count=s.evidence_sentences,
            embed_query=lambda text: self.embedder.embed_queries([text])[0],
            embed_texts=self.embedder.embed_documents, tokenize=self.lexical.terms,
        )

    def similar(self, *, chunk_id: str | None = None, text: str | None = None, k: int | None = None) -> list[Hit]:
        """The chunks nearest a stored chunk (itself left out) or a text (embedded as a document is)."""
        if (chunk_id is None) == (text is None):
            raise RagError("similar: give a chunk id or a text (one of them)")
        store = self._open_store(create=False)
        if chunk_id is not None:
            found = store.get([chunk_id], embeddings=True)
            if not found:
                raise StoreError(
                    f"no chunk {chunk_id!r} in {store.location}; `rag search QUERY --json` shows chunk ids")
            vector = found[0][1]
        else:
            if text is None or not text.strip():
                raise RagError("similar: the text is empty")
            vector = self.embedder.embed_documents([text])[0]
        assert vector is not None  # asked for with embeddings=True
        return self.retriever("dense").similar_to(vector, k, exclude=chunk_id)

    def duplicates(self, threshold: float = 0.98) -> list[list[Chunk]]:
        """Groups of chunks whose vectors are near copies (cosine >= ``threshold``) of one another,
        in this file or across files: copied pages that would crowd the top-k with one text."""
        if not -1.0 <= threshold <= 1.0:
            raise RagError(f"--threshold {threshold}: a cosine similarity, between -1 and 1 (e.g. 0.98)")
        store = self._open_store(create=False)
        stored = store.get(sorted(store.ids()), embeddings=True)
        if not stored:
            return []
        groups = near_duplicates(np.stack([vector for _, vector in stored if vector is not None]), threshold)
        return [[stored[i][0] for i in group] for group in groups]

    # -- what the store holds -------------------------------------------------------------------

    def info(self) -> dict[str, Any]:
        """What the store holds and what built it, as `rag info --json` prints it: files, documents
        and chunks, the embedding model, its dimension, space and dtype, and the chunking settings."""
        store = self.store
        record = store.record()
        exists = bool(record) or store.exists()
        files = documents = 0
        if exists:
            store.open(record or self._record(), create=False)
            files, documents = self._count_files(store)
        return {
            "store": store.location,
            "collection": self.settings.store.collection,
            "exists": exists,
            "files": files,
            "documents": documents,
            "chunks": store.count() if exists else 0,
            "embedding_model": record.get("embedding_model"),
            "embedding_dimension": record.get("embedding_dimension"),
            "embedding_space": record.get("embedding_space", "cosine" if record else None),
            "embedding_dtype": record.get("embedding_dtype"),
            "chunking": {k.removeprefix("chunking_"): v for k, v in record.items() if k.startswith("chunking_")},
            "fusion": describe_fusion(self.settings.retrieval, record) if exists else None,
        }

    def _count_files(self, store: VectorStore) -> tuple[int, int]:
        """Files and documents in the store: from the per-file record when it has seen every write,
        else from every chunk's metadata."""
        if self.record.in_step_with(store):
            files, documents, _ = self.record.totals()
            return files, documents
        sources, ids = set(), set()
        for _, metadata in store.iter_metadata():
            sources.add(str(metadata.get("source", "")))
            ids.add(str(metadata.get("document_id", "")))
        return len(sources), len(ids)

    def map(self, out: str | Path = "rag-map", *, color_by: str = "source", query: str | None = None,
            method: str = "pca", limit: int = 5000, k: int | None = None) -> dict[str, Any]:
        """The stored vectors drawn in two dimensions (rag.mapping): ``out/map.png`` and ``out/map.html``.

        At most ``limit`` chunks, a seeded sample of the sorted ids (the same store gives the same
        map); a ``query``'s top-k hits are always among them. The vectors are the store's own, so
        nothing is embedded but the query. ``seconds`` is the whole call; ``timings`` splits it into
        opening the store (which loads the embedding model to check the collection's record), reading
        the sample (and the query's search) and drawing.
        """
        from rag import mapping  # a view over the store, loaded only when a map is asked for

        clock = time.perf_counter()
        mapping.check_options(color_by=color_by, method=method, limit=limit, k=k)
        store = self._open_store(create=False)
        opened = time.perf_counter()
        ids = store.ids()
        if not ids:
            raise StoreError(f"store at {store.location} is empty; run `rag ingest PATH` first")
        hits = self.search(query, k) if query is not None else []
        sample = mapping.sample_ids(ids, limit, keep=[hit.chunk.id for hit in hits])
        points = mapping.MapPoints.from_chunks(store.get(sample, embeddings=True))
        read = time.perf_counter()
        result = mapping.draw_map(
            points, out, color_by=color_by, method=method, query=query,
            query_vector=self.embedder.embed_queries([query])[0] if query is not None else None,
            hit_ids=[hit.chunk.id for hit in hits], total=len(ids),
            title=f"collection {self.settings.store.collection}",
        )
        done = time.perf_counter()
        result["timings"] = {"open_s": opened - clock, "read_s": read - opened, "draw_s": done - read}
        result["seconds"] = done - clock
        return result

