"""A collection chooses its own hybrid fusion: each candidate setting is scored on questions, and the
chosen one is recorded in the collection (rag.retrieval.FusionChoice), which searches then use.

Without labels the questions come from the collection itself. A sampled chunk gives up one of its
sentences as the question, and the chunk WITHOUT that sentence is the answer; the chunk's context
(title, headings) stays, as it is indexed. The two retrievers then face what real questions are:
words about the chunk, not words cut out of it (a sentence still in its chunk matches every one of
its own terms, which flatters BM25). The questions are answered among a pool of chunks: the answers
and a sample of the others, ranked by the collection's own retrievers' methods: dense similarity of
the stored vectors (the answers embedded again without their sentence) and a scratch lexical index of
the same kind and settings over the pool's indexed texts. The other chunks of a question's own
document are left out of its candidates: their overlap could hold the sentence.

With labels (`rag tune --queries Q --qrels R`, BEIR formats) the questions are the user's, searched
over the whole collection as they are, and documents are judged as `rag eval retrieval` judges them.

Each candidate is scored by nDCG@10 (the answer's document ranked by its best chunk).

On labels the choice is the most dense-leaning candidate whose mean is within one standard error (of
the paired per-question difference) of the best candidate's: a difference the questions cannot tell
apart from noise is no reason to move away from dense, which rarely fails outright.

On questions made from the collection only the two retrievers alone are compared. Where one of them
falls far behind the other (lexical's score at most 1 / DENSE_ALONE of dense's, or dense's at most
1 / LEXICAL_ALONE of lexical's) fusing it in adds mostly noise and the better one is used alone;
otherwise the balanced BALANCED weight is. The best fused weight on such questions is not trusted:
it moves by a few tenths from one sample of questions to the next and, even with the sentence taken
out of its chunk, a question cut from the text still shares its words, so it leans lexical on some
collections and dense on others without following what real questions favour. The gap between the
two retrievers alone is the steadier signal; the dense side needs the smaller margin because those
questions flatter BM25.
"""

from __future__ import annotations

import re
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from rag import evaluation
from rag.errors import ConfigError, StoreError
from rag.retrieval import FusionChoice, fuse, similarity, unit
from rag.text import log
from rag.types import Chunk, indexed_text

if TYPE_CHECKING:
    from rag.indexing import IngestReport
    from rag.pipeline import Pipeline

# Candidate settings, from lexical alone (dense_weight 0) to dense alone (1).
CANDIDATES: tuple[tuple[str, float], ...] = tuple(("weighted", w / 10) for w in range(11))
QUESTIONS = 200  # questions made from the collection
POOL = 4000  # chunks they are answered among, at most (the answers included)
DEPTH = 100  # candidates each retriever gives a question, as retrieval.fetch_k does
MIN_CHUNKS = 100  # a smaller collection is not tuned: too few distractors
MIN_QUESTIONS = 50  # nor one whose chunks give fewer questions (one per document with two sentences)
DENSE_ALONE = 1.2  # dense alone when it scores this many times lexical's on questions made from the chunks
LEXICAL_ALONE = 1.5  # lexical alone when it scores this many times dense's (those questions flatter it)
BALANCED = ("weighted", 0.5)  # otherwise
RETUNE_GROWTH = 2.0  # an ingest re-tunes when the collection has grown or shrunk this much since
SEED = 0

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[\"'(\[]?[A-Z0-9])|\n\s*\n")
_WORD = re.compile(r"\w+")


@dataclass
class Question:
    """One question and each retriever's candidates for it (best first); ``relevant`` maps a
    document key to its grade, ``document`` maps each candidate chunk to its document key."""

    id: str
    text: str
    relevant: dict[str, int]
    dense: list[tuple[str, float]] = field(default_factory=list)
    lexical: list[tuple[str, float]] = field(default_factory=list)


@dataclass
class Tuning:
    """What tuning found: each candidate's score, the choice, and what it was measured on."""

    source: str  # pseudo-queries | labels
    scores: dict[tuple[str, float], float]  # mean nDCG@10 of each candidate
    choice: FusionChoice
    dense: float  # the scores of dense alone and lexical alone, for reference
    lexical: float
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "questions": self.choice.queries,
            "chunks": self.choice.chunks,
            "candidates": [{"fusion": f, "dense_weight": w, "ndcg@10": round(s, 4)}
                           for (f, w), s in self.scores.items()],
            "dense_ndcg@10": round(self.dense, 4),
            "lexical_ndcg@10": round(self.lexical, 4),
            "choice": {"fusion": self.choice.fusion, "dense_weight": self.choice.dense_weight},
            "seconds": round(self.seconds, 2),
        }

    def summary(self) -> str:
        lines = [f"fusion candidates on {self.choice.queries} {self.source_words()} "
                 f"({self.choice.chunks:,} chunks), nDCG@10:"]
        for (fusion, weight), score in self.scores.items():
            name = {0.0: "lexical alone", 1.0: "dense alone"}.get(weight, f"dense_weight {weight:.1f}")
            mark = "  <- chosen" if (fusion, weight) == (self.choice.fusion, self.choice.dense_weight) else ""
            lines.append(f"  {fusion} {name:<17} {score:.4f}{mark}")
        lines.append(f"choice: {self.choice.fusion}, dense_weight {self.choice.dense_weight:.1f} "
                     f"({self.seconds:.1f} s)")
        return "\n".join(lines)

    def source_words(self) -> str:
        return "questions made from its chunks" if self.source == "pseudo-queries" else "labelled questions"


Candidate = tuple[str, float]  # (fusion, dense_weight)


def choose_unlabelled(per_question: dict[Candidate, np.ndarray]) -> Candidate:
    """On questions made from the collection: a retriever alone where the other falls far behind it
    (DENSE_ALONE, LEXICAL_ALONE), else BALANCED (see the module docstring)."""
    dense, lexical = (float(per_question[("weighted", w)].mean()) for w in (1.0, 0.0))
    if dense >= DENSE_ALONE * lexical:
        return ("weighted", 1.0)
    if lexical >= LEXICAL_ALONE * dense:
        return ("weighted", 0.0)
    return BALANCED


def choose(per_question: dict[Candidate, np.ndarray]) -> Candidate:
    """On labelled questions: the most dense-leaning candidate whose mean score is within one
    standard error of the best one's (the standard error of their paired per-question differences)."""
    best = max(per_question, key=lambda c: (float(per_question[c].mean()), c[1]))
    for candidate in sorted(per_question, key=lambda c: -c[1]):
        difference = per_question[best] - per_question[candidate]
        error = difference.std(ddof=1) / np.sqrt(len(difference)) if len(difference) > 1 else 0.0
        if difference.mean() <= error:
            return candidate
    return best


def score_candidates(questions: list[Question], document: dict[str, str], rrf_k: int = 60,
                     candidates: tuple[Candidate, ...] = CANDIDATES) -> dict[Candidate, np.ndarray]:
    """Each candidate fusion's nDCG@10 on every question (in order), documents ranked by their best chunk."""
    qrels = {q.id: q.relevant for q in questions}
    scores = {}
    for fusion, weight in candidates:
        run = {q.id: _documents(fuse({"dense": q.dense, "lexical": q.lexical}, fusion, weight, rrf_k), document)
               for q in questions}
        per_query = evaluation.retrieval_metrics(run, qrels)[1]
        scores[(fusion, weight)] = np.array([per_query[q.id]["ndcg@10"] for q in questions])
    return scores


def _documents(ranked: list[tuple[str, float]], document: dict[str, str]) -> dict[str, float]:
    scores: dict[str, float] = {}
    for chunk_id, score in ranked:
        key = document.get(chunk_id, chunk_id)
        if key not in scores:  # best first: the first chunk seen is the document's best
            scores[key] = score
    return scores


# -- questions made from the collection ------------------------------------------------------------


def sentences(text: str) -> list[tuple[int, int]]:
    """(start, end) of each sentence of ``text``: cut after . ! ? before a capital or digit, and at
    blank lines."""
    spans, start = [], 0
    for match in _SENTENCE_END.finditer(text):
        spans.append((start, match.start()))
        start = match.end()
    spans.append((start, len(text)))
    return [(a, b) for a, b in spans if text[a:b].strip()]


def _question_from(chunk: Chunk, rng: np.random.Generator, *, min_words: int = 4,
                   max_words: int = 40) -> tuple[str, str] | None:
    """(question, the chunk's text without it): a sentence of a usable length, leaving text behind."""
    spans = sentences(chunk.text)
    usable = [(a, b) for a, b in spans
              if min_words <= len(_WORD.findall(chunk.text[a:b])) <= max_words]
    if len(spans) < 2 or not usable:
        return None
    a, b = usable[int(rng.integers(len(usable)))]
    rest = f"{chunk.text[:a].rstrip()} {chunk.text[b:].lstrip()}".strip()
    if len(_WORD.findall(rest)) < min_words:
        return None
    return " ".join(chunk.text[a:b].split()), rest


def _answers(store: Any, ids: list[str], rng: np.random.Generator,
             count: int) -> dict[str, tuple[str, str, Chunk]]:
    """Up to ``count`` sampled chunks, each with its question and its text without it, by chunk id."""
    answers: dict[str, tuple[str, str, Chunk]] = {}
    for begin in range(0, len(ids), 256):  # read in pages until enough questions are made
        if len(answers) >= count:
            break
        for chunk, _ in store.get(ids[begin : begin + 256]):
            made = _question_from(chunk, rng)
            if made is not None and len(answers) < count:
                answers[chunk.id] = (*made, chunk)
    return answers


def pseudo_questions(pipeline: Pipeline, *, count: int = QUESTIONS, pool: int = POOL, depth: int = DEPTH,
                     seed: int = SEED) -> tuple[list[Question], dict[str, str]]:
    """Questions made from the collection's chunks, with each retriever's candidates among the pool
    (see the module docstring); and the chunk -> document map of the pool. A question's candidates
    leave out the other chunks of its answer's document, whose overlap could hold its sentence."""
    store = pipeline._open_store(create=False)
    rng = np.random.default_rng(seed)
    ids = [str(i) for i in rng.permutation(sorted(store.ids()))]
    answers = _answers(store, ids, rng, count)
    # The pool: the answers, without their sentence (embedded again), and other chunks as stored.
    texts = {i: indexed_text(rest, chunk.metadata) for i, (_, rest, chunk) in answers.items()}
    document = {i: chunk.document_id for i, (_, _, chunk) in answers.items()}
    fresh = pipeline.embedder.embed_documents(list(texts.values())) if texts else np.zeros((0, 1))
    vectors = dict(zip(texts, fresh, strict=True))
    others = [i for i in ids if i not in answers][: max(pool - len(answers), 0)]
    for begin in range(0, len(others), 1024):
        for chunk, vector in store.get(others[begin : begin + 1024], embeddings=True):
            if vector is not None:
                texts[chunk.id], vectors[chunk.id], document[chunk.id] = chunk.indexed, vector, chunk.document_id
    if not answers:
        return [], document
    pool_ids = list(texts)
    matrix = np.stack([vectors[i] for i in pool_ids])
    query_vectors = pipeline.embedder.embed_queries([question for question, _, _ in answers.values()])
    space = store.space
    if space == "cosine":  # normalized once: each question's scores are then one product
        matrix, query_vectors, space = unit(matrix), unit(query_vectors), "ip"
    siblings: dict[str, set[str]] = {}
    for i in pool_ids:
        siblings.setdefault(document[i], set()).add(i)
    questions = []
    with tempfile.TemporaryDirectory(prefix="rag-tune-") as folder:
        # A scratch index of the collection's own kind and settings, never saved.
        scratch = type(pipeline.lexical)(Path(folder), **pipeline.settings.lexical.model_dump())
        scratch.rebuild(((i, texts[i]) for i in pool_ids), "tuning", save=False)
        for (answer, (text, _, chunk)), query in zip(answers.items(), query_vectors, strict=True):
            left_out = siblings[chunk.document_id] - {answer}
            dense = similarity(matrix, query, space)
            top = [i for i in np.argsort(-dense, kind="stable")[: depth + len(left_out)].tolist()
                   if pool_ids[i] not in left_out]
            lexical = scratch.search(text, depth + len(left_out))
            questions.append(Question(answer, text, {chunk.document_id: 1},
                                      [(pool_ids[i], float(dense[i])) for i in top[:depth]],
                                      [(i, score) for i, score in lexical if i not in left_out][:depth]))
    return questions, document


# -- labelled questions ---------------------------------------------------------------------------


def labelled_questions(pipeline: Pipeline, queries: str | Path, qrels: str | Path, *,
                       depth: int = DEPTH) -> tuple[list[Question], dict[str, str]]:
    """The judged queries with each retriever's candidates over the whole collection, and the chunk
    -> document map: a qrels document id names a chunk's ``corpus_id`` (BEIR corpora), its ``source``
    (a file's path, as given or from the working directory) or its ``document_id``."""
    texts = evaluation.read_beir_queries(queries)
    judgements = evaluation.read_qrels(qrels)
    store = pipeline._open_store(create=False)
    judged_ids = {doc for rels in judgements.values() for doc in rels}
    resolved = {str(Path(doc).resolve()): doc for doc in judged_ids if not doc.startswith(("/", "http"))}
    document: dict[str, str] = {}
    for chunk_id, metadata in store.iter_metadata():
        keys = [str(metadata.get("corpus_id", "")), str(metadata.get("source", "")),
                str(metadata.get("document_id", ""))]
        keys.append(resolved.get(keys[1], ""))
        document[chunk_id] = next((k for k in keys if k and k in judged_ids), keys[2] or chunk_id)
    if not judged_ids & set(document.values()):
        raise ConfigError(f"{qrels}: none of its document ids names a chunk of this collection (by its "
                          "corpus_id, its source path or its document id)")
    retriever = pipeline.retriever("hybrid")
    lexical = retriever.lexical
    assert lexical is not None  # a hybrid retriever has it
    questions = []
    for query_id, text in texts.items():
        if query_id not in judgements:
            continue
        vector = pipeline.embedder.embed_queries([text])[0]
        questions.append(Question(query_id, text, judgements[query_id], store.nearest(vector, depth),
                                  lexical.search(text, depth)))
    if not questions:
        raise ConfigError(f"{qrels}: no query id in it matches one in {queries}")
    return questions, document


# -- the whole job ---------------------------------------------------------------------------------


def tune(pipeline: Pipeline, *, queries: str | Path | None = None, qrels: str | Path | None = None,
         apply: bool = False) -> Tuning:
    """Score every candidate fusion on the collection (labelled questions when given, else questions
    made from its chunks) and choose; with ``apply``, record the choice in the collection."""
    if (queries is None) != (qrels is None):
        raise ConfigError("rag tune: give --queries and --qrels together (or neither, to tune on "
                          "questions made from the collection's own chunks)")
    started = time.perf_counter()
    store = pipeline._open_store(create=False)
    chunks = store.count()
    if queries is not None and qrels is not None:
        source = "labels"
        questions, document = labelled_questions(pipeline, queries, qrels)
    else:
        source = "pseudo-queries"
        if chunks < MIN_CHUNKS:
            raise StoreError(f"rag tune: the collection holds {chunks} chunks; questions made from its own "
                             f"chunks need at least {MIN_CHUNKS} (give --queries and --qrels instead)")
        questions, document = pseudo_questions(pipeline)
        if len(questions) < MIN_QUESTIONS:
            raise StoreError(f"rag tune: only {len(questions)} questions could be made from this collection's "
                             f"chunks (one per document that has two sentences), {MIN_QUESTIONS} are needed; "
                             "give --queries and --qrels instead")
    per_question = score_candidates(questions, document, pipeline.settings.retrieval.rrf_k)
    fusion, weight = choose(per_question) if source == "labels" else choose_unlabelled(per_question)
    choice = FusionChoice(fusion, weight, source, len(questions), chunks)
    if apply:
        record(pipeline, choice)
    means = {candidate: float(scores.mean()) for candidate, scores in per_question.items()}
    return Tuning(source, means, choice, means[("weighted", 1.0)], means[("weighted", 0.0)],
                  time.perf_counter() - started)


def record(pipeline: Pipeline, choice: FusionChoice) -> None:
    """Record the choice in the collection, for every later search (any process's) to use."""
    store = pipeline.store
    with store.write_lock(timeout=pipeline.settings.store.lock_timeout):  # not between an ingest's writes
        store.update_record(choice.to_record())


def tuned(pipeline: Pipeline, report: IngestReport) -> IngestReport:
    """The ingest's report, once the collection's fusion has been chosen again if worth it."""
    tune_after_ingest(pipeline, report)
    return report


def tune_after_ingest(pipeline: Pipeline, report: IngestReport) -> Tuning | None:
    """Choose and record the collection's fusion at the end of an ingest, when it is worth it: the
    settings leave the fusion to the collection, it holds enough chunks, and it has no choice yet or
    one made on pseudo-questions when it held far fewer or far more chunks. A choice made on labels
    is kept. Returns what tuning found, or None when it did not run."""
    settings = pipeline.settings.retrieval
    if not settings.tune_on_ingest or (settings.fusion != "auto" and settings.dense_weight != "auto"):
        return None
    if settings.mode != "hybrid" or report.chunks_total < MIN_CHUNKS:
        return None
    recorded = FusionChoice.from_record(pipeline.store.record())
    if recorded is not None:
        changed = report.chunks_embedded or report.chunks_deleted
        grown = not recorded.chunks / RETUNE_GROWTH < report.chunks_total < recorded.chunks * RETUNE_GROWTH
        if recorded.source == "labels" or not (changed and grown):
            return None
    try:
        tuning = tune(pipeline, apply=True)
    except StoreError as exc:
        log(f"fusion not tuned: {exc}")
        return None
    log(f"fusion tuned on {tuning.choice.queries} questions made from the collection's chunks: "
        f"{tuning.choice.fusion}, dense_weight {tuning.choice.dense_weight:.1f} ({tuning.seconds:.1f} s)")
    return tuning
