"""`rag eval`: retrieval on BEIR-format data and question answering on SQuAD-format data, run
through a Pipeline.

Evaluation goes through the same ingest and search path users run, so what it measures is what they
get. Each evaluation corpus lives in a collection of its own (``eval-`` + a hash of the corpus path)
inside the configured store, so it never mixes with the user's documents and a second run over the
same corpus embeds nothing. Metric definitions are in ``rag.evaluation.metrics``.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rag import evaluation
from rag.errors import ConfigError
from rag.evaluation import report
from rag.pipeline import Pipeline
from rag.text import log
from rag.types import MODES, Chunk, Document, Hit


def eval_pipeline(pipeline: Pipeline, dataset: str | Path) -> Pipeline:
    """The pipeline over the dataset's own collection: evaluations never touch the user's."""
    digest = hashlib.sha256(str(Path(dataset).resolve()).encode()).hexdigest()[:12]
    return pipeline.for_collection(f"eval-{digest}")


def _timed_search(pipeline: Pipeline, query: str, k: int, mode: str | None) -> tuple[list, float]:
    started = time.perf_counter()
    hits = pipeline.search(query, k, mode=mode)
    return hits, time.perf_counter() - started


def _latency(seconds: list[float]) -> dict[str, float]:
    if not seconds:
        return {"p50": 0.0, "p95": 0.0}
    return {"p50": 1000 * evaluation.percentile(seconds, 50), "p95": 1000 * evaluation.percentile(seconds, 95)}


# -- rag eval retrieval -----------------------------------------------------------------------------

def evaluate_retrieval(pipeline: Pipeline, corpus: str | Path, queries: str | Path, qrels: str | Path, *,
                       mode: str | None = None, out: str | Path | None = None, depth: int = 100) -> dict[str, Any]:
    """Ingest a BEIR corpus (document text = title + text), rank documents by their best chunk.

    With ``out``, the report also sets every mode side by side (``modes``) and draws ``PICTURES``:
    recall@k against k per mode, and hybrid's per-query nDCG@10 against dense's."""
    started = time.perf_counter()
    query_texts = evaluation.read_beir_queries(queries)
    judgements = evaluation.read_qrels(qrels)
    pipeline = eval_pipeline(pipeline, corpus)
    corpus_path = str(Path(corpus).resolve())

    def documents() -> Iterator[Document]:
        for doc_id, title, text in evaluation.read_beir_corpus(corpus):
            body = f"{title} {text}".strip() if title else text
            if body.strip():
                yield Document(id=f"{corpus_path}#{doc_id}", text=body, metadata={
                    "source": f"{corpus_path}#{doc_id}", "corpus_id": doc_id, "title": title, "format": "beir",
                    "content_hash": hashlib.sha256(body.encode()).hexdigest(),
                })

    judged = [q for q in query_texts if q in judgements]
    if not judged:
        raise ConfigError(f"{qrels}: no query id in it matches one in {queries}")
    ingest = pipeline.ingest_documents(documents())
    log(f"corpus: {ingest.summary()}")
    mode = mode or pipeline.settings.retrieval.mode
    questions = {q: query_texts[q] for q in judged}
    run, latencies = _document_run(pipeline, questions, mode, depth)
    means, per_query = evaluation.retrieval_metrics(run, judgements)
    result = {
        "task": "retrieval",
        "corpus": str(corpus),
        "mode": mode,
        "queries": len(judged),
        "metrics": means,
        "latency_ms": _latency(latencies),
        "ingest": ingest.as_dict(),
        "seconds": time.perf_counter() - started,
        "config": pipeline.settings.model_dump(mode="json", exclude={"store": {"token"}}),
    }
    if out:
        # A report compares the modes too: searching again is cheap next to the ingest it reuses.
        runs = {m: run if m == mode else _document_run(pipeline, questions, m, depth)[0] for m in MODES}
        result.update(_compare_modes(Path(out), runs, judgements, depth))
        result["seconds"] = time.perf_counter() - started
        rows = [{"query_id": q, **per_query.get(q, {}), "top": list(run[q])[:10]} for q in judged]
        report.write_outputs(Path(out), pipeline.settings, result, rows)
    return result


def _compare_modes(out: Path, runs: dict[str, dict[str, dict[str, float]]], judgements: dict[str, dict[str, int]],
                   depth: int) -> dict[str, Any]:
    """Every mode's metrics, on how many queries hybrid beats dense, and the pictures of both."""
    by_mode = {m: evaluation.retrieval_metrics(r, judgements) for m, r in runs.items()}
    outcomes = evaluation.paired_outcomes(by_mode["dense"][1], by_mode["hybrid"][1], report.COMPARED)
    curves = {m: evaluation.recall_curve(r, judgements, range(1, depth + 1)) for m, r in runs.items()}
    pictures = report.draw_pictures(out, curves, {m: per_query for m, (_, per_query) in by_mode.items()}, outcomes)
    return {"modes": {m: means for m, (means, _) in by_mode.items()},
            "hybrid_vs_dense": {"metric": report.COMPARED, **outcomes}, "pictures": pictures}


def _document_run(pipeline: Pipeline, questions: dict[str, str], mode: str,
                  depth: int) -> tuple[dict[str, dict[str, float]], list[float]]:
    """Each query's top ``depth`` documents, a document scored by its best chunk; and the latencies."""
    run: dict[str, dict[str, float]] = {}
    latencies: list[float] = []
    chunk_depth = 2 * depth  # a document may have several chunks among the top ones
    for query_id, text in questions.items():
        hits, seconds = _timed_search(pipeline, text, chunk_depth, mode)
        latencies.append(seconds)
        scores: dict[str, float] = {}
        for hit in hits:
            doc_id = str(hit.chunk.metadata.get("corpus_id"))
            scores[doc_id] = max(scores.get(doc_id, float("-inf")), hit.score)
        run[query_id] = dict(sorted(scores.items(), key=lambda item: -item[1])[:depth])
    return run, latencies


# -- rag eval qa -------------------------------------------------------------------------------------

def _coverage(paragraph: tuple[int, int], spans: list[tuple[int, int]]) -> float:
    """Share of the paragraph's characters that lie inside some retrieved chunk."""
    start, end = paragraph
    covered = 0
    cursor = start
    for first, last in sorted(spans):
        span_start, span_end = max(first, cursor), min(last, end)
        if span_end > span_start:
            covered += span_end - span_start
            cursor = span_end
    return covered / max(1, end - start)


QA_CONTEXTS = ("retrieved", "gold", "none")


def evaluate_qa(pipeline: Pipeline, squad: str | Path, *, k: int = 10, mode: str | None = None,
                generate: bool = False, limit: int | None = None, out: str | Path | None = None,
                context: str = "retrieved") -> dict[str, Any]:
    """Answer recall@1/5/10 and gold-paragraph coverage; with ``generate``, EM and F1 as well.

    ``context`` says what the generator answers from: the retrieved chunks (what users get), the gold
    paragraph as the only source (the upper bound retrieval could reach), or nothing (closed book: what
    the model knows by itself)."""
    if context not in QA_CONTEXTS:
        raise ConfigError(f"--context {context!r}: use one of {', '.join(QA_CONTEXTS)}")
    started = time.perf_counter()
    articles, questions = evaluation.read_squad(squad)
    if limit:
        questions = questions[:limit]
    pipeline = eval_pipeline(pipeline, squad)
    source = str(Path(squad).resolve())
    ingest = pipeline.ingest_documents(_squad_documents(source, articles))
    log(f"corpus: {ingest.summary()}")
    mode = mode or pipeline.settings.retrieval.mode
    ks = sorted({x for x in (1, 5, 10, k) if x <= k})
    article_text = dict(articles)
    rows = [_qa_row(pipeline, question, article_text.get(question.title, ""), f"{source}#{question.title}",
                    k=k, ks=ks, mode=mode, context=context if generate else None)
            for question in questions]
    result = {
        "task": "qa",
        "squad": str(squad),
        "mode": mode,
        "questions": len(questions),
        "metrics": _qa_metrics(rows, ks, generate),
        "latency_ms": _latency([row["search_ms"] / 1000 for row in rows]),
        "answer_latency_ms": _latency([row["answer_ms"] / 1000 for row in rows]) if generate else None,
        "context": context if generate else None,
        "ingest": ingest.as_dict(),
        "seconds": time.perf_counter() - started,
        "config": pipeline.settings.model_dump(mode="json", exclude={"store": {"token"}}),
    }
    if out:
        report.write_outputs(Path(out), pipeline.settings, result, rows)
    return result


def _squad_documents(source: str, articles: list[tuple[str, str]]) -> list[Document]:
    """One document per article, named by the file and the article's title."""
    return [Document(id=f"{source}#{title}", text=text, metadata={
                "source": f"{source}#{title}", "title": title, "format": "squad",
                "content_hash": hashlib.sha256(text.encode()).hexdigest()})
            for title, text in articles]


def _qa_row(pipeline: Pipeline, question: evaluation.SquadQuestion, article: str, document: str, *, k: int,
            ks: list[int], mode: str, context: str | None) -> dict[str, Any]:
    """One question: where the answer first occurs in the retrieved chunks, how much of the gold
    paragraph they cover, and (with a ``context`` to answer from) the generated answer's scores."""
    hits, seconds = _timed_search(pipeline, question.question, k, mode)
    first = next((h.rank for h in hits if evaluation.answer_in_text(question.answers, h.chunk.text)), None)
    offset = article.find(question.context)
    paragraph = (offset, offset + len(question.context)) if offset >= 0 else (0, 0)
    row: dict[str, Any] = {"id": question.id, "question": question.question, "answer_rank": first,
                           "search_ms": 1000 * seconds}
    for x in ks:
        spans = [(h.chunk.start, h.chunk.end) for h in hits[:x] if h.chunk.metadata.get("title") == question.title]
        row[f"coverage@{x}"] = _coverage(paragraph, spans) if offset >= 0 else 0.0
    if context is None:
        return row
    given: list[Hit] | None = None  # retrieved
    if context == "none":
        given = []
    elif context == "gold":
        gold = Chunk(id=question.id, document_id=document, text=question.context, start=paragraph[0],
                     end=paragraph[1], metadata={"source": document, "title": question.title})
        given = [Hit(chunk=gold, score=1.0, rank=1)]
    clock = time.perf_counter()
    answer = pipeline.ask(question.question, k, hits=given)
    row.update(prediction=answer.text, prompt_has_gold=question.context in answer.prompt,
               em=evaluation.exact_match(answer.text, question.answers),
               f1=evaluation.token_f1(answer.text, question.answers),
               answer_ms=1000 * (time.perf_counter() - clock))
    return row


def _qa_metrics(rows: list[dict[str, Any]], ks: list[int], generate: bool) -> dict[str, float]:
    n = max(1, len(rows))
    metrics = {f"answer_recall@{x}": sum(r["answer_rank"] is not None and r["answer_rank"] <= x for r in rows) / n
               for x in ks}
    metrics.update({f"paragraph_coverage@{x}": sum(r[f"coverage@{x}"] for r in rows) / n for x in ks})
    if generate:
        metrics.update(exact_match=sum(r["em"] for r in rows) / n, f1=sum(r["f1"] for r in rows) / n)
    return metrics


