"""Question -> ranked Hits: dense, lexical or hybrid, with filters, a score threshold, MMR and rerank.

Scores, higher is better always:
- ``dense``: the similarity of the query and chunk vectors in the collection's ``embedding.space``:
  the cosine similarity (-1..1), the inner product, or minus the Euclidean distance (l2).
- ``lexical``: the BM25 score (0..inf, only comparable within one query).
- ``hybrid``: with ``fusion: rrf``, the reciprocal-rank-fusion score ``sum 1 / (rrf_k + rank)`` over the
  retrievers that found the chunk; with ``fusion: weighted``, ``w * dense' + (1 - w) * lexical'`` where
  each retriever's scores are min-max normalized over the candidates.
- with a reranker: the cross-encoder's relevance logit.
Every hit also carries each retriever's own score and rank in ``Hit.scores`` / ``Hit.ranks``, and the
dense score of every hit is always filled in, so ``score_threshold`` (read in the dense score's unit)
means the same thing in every mode.

A filter (``where``) is answered from the metadata the lexical index keeps (``LexicalStore.select``)
whenever that index is in step with the store, and by the store otherwise: the lexical side is then
restricted to those chunks directly, and the dense side asks the store for the nearest among those
ids, which Chroma answers exactly as it answers the filter (same ids, order and scores) without
evaluating it: at 100k chunks, 17 ms instead of 65 for a filter keeping 10%.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence, Set
from dataclasses import dataclass
from typing import Any

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
        for row, column in zip(rows.tolist(), columns.tolist()):
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
class Retriever:
    """Ranks chunks for a question. It is handed the store, the query encoder and the lexical index;
    it builds none of them, so it imports no other stage."""

    store: VectorStore
    embed_query: Callable[[str], np.ndarray]
    lexical: LexicalStore | None = None
    reranker: Reranker | None = None
    mode: str = "dense"
    k: int = 5
    fetch_k: int = 100
    fusion: str = "rrf"
    rrf_k: int = 60
    dense_weight: float = 0.5
    score_threshold: float | None = None
    where: dict | None = None
    mmr: bool = False
    mmr_lambda: float = 0.5
    rerank_top_n: int = 20

    def search(self, question: str, k: int | None = None, *, mode: str | None = None,
               where: dict | None = None) -> list[Hit]:
        mode = mode or self.mode
        if mode not in MODES:
            raise ConfigError(f"retrieval.mode: {mode!r} is not one of {', '.join(MODES)}")
        if mode in ("lexical", "hybrid") and self.lexical is None:
            raise ConfigError(f"retrieval.mode: {mode} needs the lexical index, which this store does not have")
        k = k or self.k
        where = where if where is not None else self.where
        depth = max(k, self.fetch_k) if (mode == "hybrid" or self.mmr or self.reranker) else k
        query = self.embed_query(question)
        allowed = self._selection(where) if where else None
        # How many candidates get their chunk fetched: when far fewer than the depth, the dense side
        # asks only for ids and scores (at 100k chunks, 4 ms instead of 11 for 100).
        head_depth = None if (self.score_threshold is not None or self.mmr) else self._rerank_depth(k)

        # Each retriever's own view: id -> (score, rank), and what we know of each chunk.
        chunks: dict[str, Chunk] = {}
        vectors: dict[str, np.ndarray] = {}
        dense: dict[str, float] = {}  # the dense score of every candidate seen
        per: dict[str, dict[str, tuple[float, int]]] = {}
        if mode in ("dense", "hybrid"):
            ids_only = head_depth is not None and head_depth < depth
            among = list(allowed) if allowed is not None else None
            try:
                found = self._dense(query, depth, where if among is None else None, among, ids_only)
            except StoreError:
                if among is None:
                    raise
                found = self._dense(query, depth, where, None, ids_only)  # one deleted since the check
            if ids_only:
                pairs = found
            else:
                pairs = [(chunk.id, score) for chunk, score, _ in found]
                for chunk, _, vector in found:
                    chunks[chunk.id] = chunk
                    if vector is not None:
                        vectors[chunk.id] = vector
            per["dense"] = {i: (score, rank) for rank, (i, score) in enumerate(pairs, start=1)}
            dense.update(pairs)
        if mode in ("lexical", "hybrid"):
            restrict = allowed if (allowed is not None or not where) else self.store.ids(where)
            found_lex = self.lexical.search(question, depth, restrict)
            per["lexical"] = {i: (score, rank) for rank, (i, score) in enumerate(found_lex, start=1)}

        if mode == "hybrid":
            if self.fusion == "rrf":
                rankings = {name: sorted(ids, key=lambda i, ids=ids: ids[i][1]) for name, ids in per.items()}
                ranked = rrf(rankings, self.rrf_k)
            else:
                scores = {name: {i: s for i, (s, _) in ids.items()} for name, ids in per.items()}
                ranked = weighted(scores, {"dense": self.dense_weight, "lexical": 1 - self.dense_weight})
        else:
            ranked = sorted(((i, s) for i, (s, _) in per[mode].items()), key=lambda item: (-item[1], item[0]))

        def complete(ids: list[str], with_vectors: bool) -> None:
            """Fetch what the retrievers did not give: the chunk, its vector, and the dense score of a
            chunk only the lexical side found."""
            wanted = [i for i in ids if i not in chunks or (with_vectors and i not in vectors)]
            need_vectors = with_vectors or any(i not in dense for i in wanted)
            for chunk, vector in self.store.get(wanted, embeddings=need_vectors):
                chunks[chunk.id] = chunk
                if vector is not None:
                    vectors[chunk.id] = vector
                if chunk.id not in dense:
                    # In the store's space, so a lexical-only hit's dense score means what the store's do.
                    dense[chunk.id] = float(similarity(vector[None, :], query, self.store.space)[0])

        # The threshold and MMR look at every candidate; otherwise only the hits shown are completed.
        head = len(ranked) if head_depth is None else head_depth
        complete([i for i, _ in ranked[:head]], with_vectors=self.mmr)
        ranked = [(i, s) for i, s in ranked[:head] if i in chunks]  # a stale lexical id is never shown
        if self.score_threshold is not None:
            ranked = [(i, s) for i, s in ranked if dense[i] >= self.score_threshold]
        if self.mmr and ranked:
            picked = mmr(query, np.stack([vectors[i] for i, _ in ranked]), len(ranked), self.mmr_lambda, self.store.space)
            ranked = [ranked[p] for p in picked]
        if self.reranker is not None and ranked:
            top = ranked[: self._rerank_depth(k)]
            rerank_scores = self.reranker.score(question, [chunks[i].text for i, _ in top])
            ranked = sorted(((i, s) for (i, _), s in zip(top, rerank_scores)), key=lambda item: (-item[1], item[0]))
            per["rerank"] = {i: (s, rank) for rank, (i, s) in enumerate(ranked, start=1)}

        hits = []
        for rank, (chunk_id, score) in enumerate(ranked[:k], start=1):
            scores = {name: ids[chunk_id][0] for name, ids in per.items() if chunk_id in ids}
            scores["dense"] = dense[chunk_id]
            ranks = {name: ids[chunk_id][1] for name, ids in per.items() if chunk_id in ids}
            hits.append(Hit(chunk=chunks[chunk_id], score=float(score), rank=rank, scores=scores, ranks=ranks))
        return hits

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
               ids_only: bool) -> list:
        """The store's nearest ``depth``: (id, score) pairs, or (chunk, score, vector) with the chunks."""
        if ids_only:
            return self.store.nearest(query, depth, where, ids=among)
        return self.store.query(query, depth, where, embeddings=self.mmr, ids=among)

    def _rerank_depth(self, k: int) -> int:
        return max(k, self.rerank_top_n) if self.reranker is not None else k
