"""Question -> ranked Hits: dense, lexical or hybrid, with filters, a score threshold, MMR and rerank.

Scores, higher is better always:
- ``dense``: the similarity of the query and chunk vectors in the collection's ``embedding.space``:
  the cosine similarity (-1..1), the inner product, or minus the Euclidean distance (l2).
- ``lexical``: the BM25 score (0..inf, only comparable within one query).
- ``hybrid``: with ``fusion: rrf``, the reciprocal-rank-fusion score ``sum 1 / (rrf_k + rank)`` over the
  retrievers that found the chunk; with ``fusion: weighted``, ``w * dense' + (1 - w) * lexical'`` where
  each retriever's scores are min-max normalized over the candidates. With ``fusion: auto`` (and
  ``dense_weight: auto``) the fusion is the one the collection recorded (``FusionChoice``: chosen on
  its own chunks by rag.tuning), else ``FALLBACK``.
- with a reranker: the cross-encoder's relevance logit.
Every hit also carries each retriever's own score and rank in ``Hit.scores`` / ``Hit.ranks``, and the
dense score of every hit is always filled in, so ``score_threshold`` (read in the dense score's unit)
means the same thing in every mode.

A filter (``where``) is answered from the metadata the lexical index keeps (``LexicalStore.select``)
whenever that index is in step with the store, and by the store otherwise: the lexical side is then
restricted to those chunks directly, and the dense side asks the store for the nearest among those
ids, which Chroma answers exactly as it answers the filter (same ids, order and scores) without
evaluating it, several times faster (docs/benchmarks.md, Queries).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence, Set
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from rag.errors import ConfigError, ModelError, StoreError
from rag.hub import MODEL_LOADING, locate, pick_device
from rag.types import MODES, Chunk, Hit, LexicalStore, VectorStore, counter_of


def rrf(rankings: dict[str, list[str]], k: int = 60) -> list[tuple[str, float]]:
    """Reciprocal rank fusion of several best-first id lists; ties go to the smaller id."""
    fused: dict[str, float] = {}
    for ranking in rankings.values():
        for rank, chunk_id in enumerate(ranking, start=1):
            fused[chunk_id] = fused.get(chunk_id, 0.0) + 1.0 / (k + rank)
    return sorted(fused.items(), key=lambda item: (-item[1], item[0]))


def weighted(scores: dict[str, dict[str, float]], weights: dict[str, float]) -> list[tuple[str, float]]:
    """Weighted sum of min-max normalized scores; an id a retriever did not score counts 0 there."""
    ids = sorted({i for per in scores.values() for i in per})
    fused = dict.fromkeys(ids, 0.0)
    for name, per in scores.items():
        if not per:
            continue
        low, high = min(per.values()), max(per.values())
        span = high - low
        for chunk_id, score in per.items():
            fused[chunk_id] += weights.get(name, 0.0) * ((score - low) / span if span > 0 else 1.0)
    return sorted(fused.items(), key=lambda item: (-item[1], item[0]))


FUSIONS = ("weighted", "rrf")


def fuse(candidates: dict[str, list[tuple[str, float]]], fusion: str, dense_weight: float,
         rrf_k: int = 60) -> list[tuple[str, float]]:
    """One best-first ranking of each retriever's best-first (id, score) candidates: what hybrid
    search ranks by, and what rag.tuning scores each setting with."""
    if fusion == "rrf":
        return rrf({name: [i for i, _ in pairs] for name, pairs in candidates.items()}, rrf_k)
    return weighted({name: dict(pairs) for name, pairs in candidates.items()},
                    {"dense": dense_weight, "lexical": 1 - dense_weight})


@dataclass(frozen=True)
class FusionChoice:
    """A collection's hybrid fusion and where it came from, as its record keeps it (``RECORD``
    keys). ``source``: ``pseudo-queries`` (chosen on questions made from its own chunks, at the end of
    an ingest or by `rag tune`), ``labels`` (`rag tune --queries --qrels`), ``config`` (the settings
    name it), or ``default`` (nothing chosen yet: ``FALLBACK``)."""

    fusion: str
    dense_weight: float
    source: str
    queries: int = 0  # how many questions it was chosen on
    chunks: int = 0  # how many chunks the collection held then

    RECORD: ClassVar[dict[str, str]] = {"fusion": "fusion", "dense_weight": "fusion_dense_weight",
                                        "source": "fusion_source", "queries": "fusion_queries",
                                        "chunks": "fusion_chunks"}

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> FusionChoice | None:
        """The choice a collection's record holds; None when it holds none (or one this version
        cannot read, which is then ignored rather than trusted)."""
        try:
            fusion, weight = str(record["fusion"]), float(record["fusion_dense_weight"])
            if fusion not in FUSIONS or not 0.0 <= weight <= 1.0:
                return None
            return cls(fusion, weight, str(record.get("fusion_source", "pseudo-queries")),
                       int(record.get("fusion_queries", 0)), int(record.get("fusion_chunks", 0)))
        except (KeyError, TypeError, ValueError):
            return None

    def to_record(self) -> dict[str, Any]:
        return {key: getattr(self, name) for name, key in self.RECORD.items()}


# What hybrid search fuses with when neither the settings nor the collection's record say.
FALLBACK = FusionChoice("weighted", 0.5, "default")


def resolve_fusion(fusion: str, dense_weight: float | str, recorded: FusionChoice | None) -> FusionChoice:
    """The fusion in use: each setting given explicitly wins; ``auto`` takes the collection's
    recorded choice, else ``FALLBACK``'s."""
    chosen = recorded or FALLBACK
    if fusion == "auto" and dense_weight == "auto":
        return chosen
    return FusionChoice(chosen.fusion if fusion == "auto" else fusion,
                        chosen.dense_weight if dense_weight == "auto" else float(dense_weight), "config")


def describe_fusion(settings: Any, record: dict[str, Any]) -> dict[str, Any]:
    """What `rag info` shows of hybrid fusion: the one in use with these retrieval settings and where it
    came from, and the collection's recorded choice (shown even when a setting overrides it)."""
    recorded = FusionChoice.from_record(record)
    in_use = resolve_fusion(settings.fusion, settings.dense_weight, recorded)
    info: dict[str, Any] = {"fusion": in_use.fusion, "dense_weight": in_use.dense_weight, "source": in_use.source}
    if recorded is not None:
        info["recorded"] = {"fusion": recorded.fusion, "dense_weight": recorded.dense_weight,
                            "source": recorded.source, "questions": recorded.queries, "chunks": recorded.chunks}
    return info


def unit(vectors: np.ndarray) -> np.ndarray:
    """Vectors scaled to length 1 (a zero vector stays zero), so that dot products are cosines even
    when ``embedding.normalize`` is off."""
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return vectors / np.where(norms > 0, norms, 1.0)


def similarity(vectors: np.ndarray, query: np.ndarray, space: str = "cosine") -> np.ndarray:
    """Each vector's dense score against ``query`` in ``space`` (rag.types.SPACES), as the store ranks."""
    if space == "cosine":
        return unit(vectors) @ unit(query)
    if space == "ip":
        return vectors @ query
    return -np.linalg.norm(vectors - query, axis=-1)


def pairwise(vectors: np.ndarray, space: str = "cosine") -> np.ndarray:
    """The dense score of every pair of ``vectors`` in ``space``."""
    if space == "cosine":
        vectors = unit(vectors)
        return vectors @ vectors.T
    if space == "ip":
        return vectors @ vectors.T
    squares = (vectors * vectors).sum(axis=1)
    return -np.sqrt(np.maximum(squares[:, None] + squares[None, :] - 2 * vectors @ vectors.T, 0.0))


def mmr(query: np.ndarray, vectors: np.ndarray, k: int, lambda_: float = 0.5, space: str = "cosine") -> list[int]:
    """Maximal marginal relevance in ``space``: indices picked greedily for relevance minus redundancy."""
    if len(vectors) == 0:
        return []
    relevance = similarity(vectors, query, space)
    between = pairwise(vectors, space)
    chosen: list[int] = []
    left = list(range(len(vectors)))
    while left and len(chosen) < k:
        redundancy = between[np.ix_(left, chosen)].max(axis=1) if chosen else np.zeros(len(left))
        values = lambda_ * relevance[left] - (1 - lambda_) * redundancy
        best = left[int(np.argmax(values))]
        chosen.append(best)
        left.remove(best)
    return chosen


def near_duplicates(vectors: np.ndarray, threshold: float = 0.98) -> list[list[int]]:
    """Groups (row indices, each group sorted, groups in order of their first row) of vectors whose
    cosine to another member is at least ``threshold``, linked transitively. Compares every pair, a
    block of rows at a time, so the scores in memory stay under 2**25 (128 MB)."""
    vectors = unit(np.asarray(vectors, dtype=np.float32))
    parent = list(range(len(vectors)))
    block = max(64, min(4096, 2**25 // max(len(vectors), 1)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for begin in range(0, len(vectors), block):
        scores = vectors[begin : begin + block] @ vectors[begin:].T
        rows, columns = np.nonzero(scores >= threshold)
        for row, column in zip(rows.tolist(), columns.tolist(), strict=True):
            i, j = begin + row, begin + column
            if j > i:
                parent[root(j)] = root(i)
    groups: dict[int, list[int]] = {}
    for i in range(len(vectors)):
        groups.setdefault(root(i), []).append(i)
    return sorted((g for g in groups.values() if len(g) > 1), key=lambda g: g[0])


class Reranker:
    """A cross-encoder (AutoModelForSequenceClassification) that rescores (question, chunk) pairs."""

    def __init__(self, model: str, *, device: str = "auto", batch_size: int = 16, trust_remote_code: bool = False):
        self.model_name = model
        self.device = device
        self.batch_size = batch_size
        self.trust_remote_code = trust_remote_code
        self._loaded: tuple[Any, Any] | None = None

    def _load(self):
        if self._loaded is None:
            from transformers import AutoModelForSequenceClassification, AutoTokenizer

            device = pick_device(self.device)
            source = locate(self.model_name, "rerank.model")
            try:
                with MODEL_LOADING:
                    tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=self.trust_remote_code)
                    model = AutoModelForSequenceClassification.from_pretrained(
                        source, trust_remote_code=self.trust_remote_code
                    )
            except Exception as exc:
                raise ModelError(
                    f"rerank.model: cannot load {self.model_name!r} ({type(exc).__name__}); point it at a local "
                    "folder or run once online"
                ) from None
            self._loaded = (tokenizer, model.eval().to(device))
        return self._loaded

    def score(self, question: str, texts: Sequence[str]) -> list[float]:
        import torch

        tokenizer, model = self._load()
        scores: list[float] = []
        with torch.inference_mode():
            for begin in range(0, len(texts), self.batch_size):
                batch = list(texts[begin : begin + self.batch_size])
                features = tokenizer([question] * len(batch), batch, padding=True, truncation=True,
                                     return_tensors="pt").to(model.device)
                logits = model(**features).logits
                # One logit: a relevance score; two or more: the last class is "relevant".
                column = logits[:, 0] if logits.shape[-1] == 1 else logits[:, -1] - logits[:, 0]
                scores.extend(column.float().cpu().tolist())
        return scores


@dataclass
class Candidates:
    """What the retrievers found for one question: each retriever's (score, rank) per chunk id, and
    what is known of each chunk so far (filled in lazily, only for the chunks that are shown)."""

    per: dict[str, dict[str, tuple[float, int]]] = field(default_factory=dict)
    chunks: dict[str, Chunk] = field(default_factory=dict)
    vectors: dict[str, np.ndarray] = field(default_factory=dict)
    dense: dict[str, float] = field(default_factory=dict)  # the dense score of every candidate seen

    def add(self, name: str, pairs: Sequence[tuple[str, float]]) -> None:
        """A retriever's best-first (id, score) list."""
        self.per[name] = {i: (score, rank) for rank, (i, score) in enumerate(pairs, start=1)}

    def scores(self, name: str) -> dict[str, float]:
        return {i: score for i, (score, _) in self.per[name].items()}

    def ranking(self, name: str) -> list[str]:
        """A retriever's ids in its own order."""
        return sorted(self.per[name], key=lambda i: self.per[name][i][1])

    def hit(self, chunk_id: str, score: float, rank: int) -> Hit:
        scores = {name: found[chunk_id][0] for name, found in self.per.items() if chunk_id in found}
        scores["dense"] = self.dense[chunk_id]
        ranks = {name: found[chunk_id][1] for name, found in self.per.items() if chunk_id in found}
        return Hit(chunk=self.chunks[chunk_id], score=float(score), rank=rank, scores=scores, ranks=ranks)


def best_first(scores: dict[str, float]) -> list[tuple[str, float]]:
    """(id, score) by score, ties to the smaller id."""
    return sorted(scores.items(), key=lambda item: (-item[1], item[0]))


@dataclass
class Retriever:
    """Ranks chunks for a question. It is handed the store, the query encoder and the lexical index;
    it builds none of them, so it imports no other stage. Its defaults are RetrievalSettings' (a test
    holds them equal)."""

    store: VectorStore
    embed_query: Callable[[str], np.ndarray]
    lexical: LexicalStore | None = None
    reranker: Reranker | None = None
    mode: str = "hybrid"
    k: int = 5
    fetch_k: int = 100
    fusion: str = "auto"
    rrf_k: int = 60
    dense_weight: float | str = "auto"
    score_threshold: float | None = None
    where: dict | None = None
    mmr: bool = False
    mmr_lambda: float = 0.5
    rerank_top_n: int = 20
    recorded: FusionChoice | None = None  # the collection's own choice, read by the pipeline

    @property
    def fusion_in_use(self) -> FusionChoice:
        """The hybrid fusion searches use now (see resolve_fusion)."""
        return resolve_fusion(self.fusion, self.dense_weight, self.recorded)

    def search(self, question: str, k: int | None = None, *, mode: str | None = None,
               where: dict | None = None) -> list[Hit]:
        """The top ``k`` chunks: each retriever gathers candidates, fusion ranks them, then the
        threshold, MMR and the reranker narrow the ranking down."""
        mode = mode or self.mode
        if mode not in MODES:
            raise ConfigError(f"retrieval.mode: {mode!r} is not one of {', '.join(MODES)}")
        if mode in ("lexical", "hybrid") and self.lexical is None:
            raise ConfigError(f"retrieval.mode: {mode} needs the lexical index, which this store does not have")
        k = k or self.k
        where = where if where is not None else self.where
        query = self.embed_query(question)
        found = self._gather(question, query, k, mode, where)
        ranked = self._fuse(found, mode)
        ranked = self._narrow(question, query, k, found, ranked)
        return [found.hit(chunk_id, score, rank) for rank, (chunk_id, score) in enumerate(ranked[:k], start=1)]

    def _gather(self, question: str, query: np.ndarray, k: int, mode: str, where: dict | None) -> Candidates:
        """Each retriever's candidates, as deep as fusion, MMR or the reranker need."""
        depth = max(k, self.fetch_k) if (mode == "hybrid" or self.mmr or self.reranker) else k
        allowed = self._selection(where) if where else None
        found = Candidates()
        if mode in ("dense", "hybrid"):
            # When far fewer candidates are shown than gathered, the dense side asks only for ids and
            # scores, and the shown ones are fetched afterwards.
            head = self._head_depth(k)
            ids_only = head is not None and head < depth
            among = list(allowed) if allowed is not None else None
            try:
                pairs = self._dense(query, depth, where if among is None else None, among, ids_only, found)
            except StoreError:
                if among is None:
                    raise
                pairs = self._dense(query, depth, where, None, ids_only, found)  # one deleted since the check
            found.add("dense", pairs)
            found.dense.update(pairs)
        if mode in ("lexical", "hybrid"):
            assert self.lexical is not None  # checked by search()
            restrict = allowed if (allowed is not None or not where) else self.store.ids(where)
            found.add("lexical", self.lexical.search(question, depth, restrict))
        return found

    def _fuse(self, found: Candidates, mode: str) -> list[tuple[str, float]]:
        """One best-first ranking of the candidates: the mode's own, or the hybrid fusion of both."""
        if mode != "hybrid":
            return best_first(found.scores(mode))
        chosen = self.fusion_in_use
        candidates = {name: [(i, found.per[name][i][0]) for i in found.ranking(name)] for name in found.per}
        return fuse(candidates, chosen.fusion, chosen.dense_weight, self.rrf_k)

    def _narrow(self, question: str, query: np.ndarray, k: int, found: Candidates,
                ranked: list[tuple[str, float]]) -> list[tuple[str, float]]:
        """The ranking after the score threshold, MMR and the reranker; the chunks it shows fetched."""
        # The threshold and MMR look at every candidate; otherwise only the hits shown are completed.
        head = self._head_depth(k)
        shown = ranked if head is None else ranked[:head]
        self._complete(found, [i for i, _ in shown], query, with_vectors=self.mmr)
        ranked = [(i, s) for i, s in shown if i in found.chunks]  # a stale lexical id is never shown
        if self.score_threshold is not None:
            ranked = [(i, s) for i, s in ranked if found.dense[i] >= self.score_threshold]
        if self.mmr and ranked:
            vectors = np.stack([found.vectors[i] for i, _ in ranked])
            ranked = [ranked[p] for p in mmr(query, vectors, len(ranked), self.mmr_lambda, self.store.space)]
        if self.reranker is not None and ranked:
            top = ranked[: self._rerank_depth(k)]
            relevance = self.reranker.score(question, [found.chunks[i].text for i, _ in top])
            ranked = best_first({i: s for (i, _), s in zip(top, relevance, strict=True)})
            found.add("rerank", ranked)
        return ranked

    def _complete(self, found: Candidates, ids: list[str], query: np.ndarray, *, with_vectors: bool) -> None:
        """Fetch what the retrievers did not give: the chunk, its vector, and the dense score of a
        chunk only the lexical side found."""
        wanted = [i for i in ids if i not in found.chunks or (with_vectors and i not in found.vectors)]
        need_vectors = with_vectors or any(i not in found.dense for i in wanted)
        for chunk, vector in self.store.get(wanted, embeddings=need_vectors):
            found.chunks[chunk.id] = chunk
            if vector is not None:
                found.vectors[chunk.id] = vector
                if chunk.id not in found.dense:
                    # In the store's space, so a lexical-only hit's dense score means what the store's do.
                    found.dense[chunk.id] = float(similarity(vector[None, :], query, self.store.space)[0])

    def similar_to(self, vector: np.ndarray, k: int | None = None, *, exclude: str | None = None) -> list[Hit]:
        """The chunks nearest ``vector`` by the dense score, leaving out the chunk ``exclude`` (the one
        the vector came from), best first."""
        k = k or self.k
        found = [(c, s) for c, s, _ in self.store.query(vector, k + (exclude is not None)) if c.id != exclude]
        return [Hit(chunk=chunk, score=score, rank=rank, scores={"dense": score}, ranks={"dense": rank})
                for rank, (chunk, score) in enumerate(found[:k], start=1)]

    def _selection(self, where: dict) -> Set[str] | None:
        """The chunks ``where`` keeps, as the lexical index's metadata says, when that index keeps it
        and is in step with the store as it is now (during an ingest it is not); else None, and the
        store filters. A malformed filter is a ConfigError either way."""
        lexical = self.lexical
        if lexical is None or not lexical.has_metadata:
            return None
        counter = self.store.counter()  # read first: an index that moves on after it only fails the check
        selection = lexical.select(where)
        return selection if selection is not None and counter_of(lexical.state) == counter else None

    def _dense(self, query: np.ndarray, depth: int, where: dict | None, among: list[str] | None,
               ids_only: bool, found: Candidates) -> list[tuple[str, float]]:
        """The store's nearest ``depth`` as (id, score) pairs; unless ``ids_only``, their chunks (and
        vectors, for MMR) are kept in ``found`` too."""
        if ids_only:
            return self.store.nearest(query, depth, where, ids=among)
        pairs = []
        for chunk, score, vector in self.store.query(query, depth, where, embeddings=self.mmr, ids=among):
            pairs.append((chunk.id, score))
            found.chunks[chunk.id] = chunk
            if vector is not None:
                found.vectors[chunk.id] = vector
        return pairs

    def _head_depth(self, k: int) -> int | None:
        """How many of the ranking get their chunk fetched; None: all (the threshold and MMR look at
        every candidate)."""
        return None if (self.score_threshold is not None or self.mmr) else self._rerank_depth(k)

    def _rerank_depth(self, k: int) -> int:
        return max(k, self.rerank_top_n) if self.reranker is not None else k
