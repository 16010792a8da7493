"""Whole jobs over a Pipeline: `rag run` (ingest, then answer a questions file) and `rag eval`
(retrieval on BEIR-format data, question answering on SQuAD-format data).

Evaluation goes through the same ingest and search path users run, so what it measures is what they
get. Each evaluation corpus lives in a collection of its own (``eval-`` + a hash of the corpus path)
inside the configured store, so it never mixes with the user's documents and a second run over the
same corpus embeds nothing. Metric definitions are in ``rag.evaluation``.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rag import evaluation
from rag.config import dump_settings
from rag.errors import ConfigError
from rag.pipeline import Pipeline
from rag.text import log
from rag.types import MODES, Chunk, Document, Hit


def _eval_pipeline(pipeline: Pipeline, dataset: str | Path) -> Pipeline:
    """The pipeline over the dataset's own collection: evaluations never touch the user's."""
    digest = hashlib.sha256(str(Path(dataset).resolve()).encode()).hexdigest()[:12]
    return pipeline.for_collection(f"eval-{digest}")


def _write_atomic(path: Path, content: str | bytes) -> None:
    """Readers never see a half-written file: write beside it, then rename over it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_bytes(content.encode("utf-8") if isinstance(content, str) else content)
    os.replace(partial, path)


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
    pipeline = _eval_pipeline(pipeline, corpus)
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
        _write_outputs(Path(out), pipeline, result, rows)
    return result


def _compare_modes(out: Path, runs: dict[str, dict[str, dict[str, float]]], judgements: dict[str, dict[str, int]],
                   depth: int) -> dict[str, Any]:
    """Every mode's metrics, on how many queries hybrid beats dense, and the pictures of both."""
    by_mode = {m: evaluation.retrieval_metrics(r, judgements) for m, r in runs.items()}
    outcomes = evaluation.paired_outcomes(by_mode["dense"][1], by_mode["hybrid"][1], COMPARED)
    curves = {m: evaluation.recall_curve(r, judgements, range(1, depth + 1)) for m, r in runs.items()}
    pictures = _draw_pictures(out, curves, {m: per_query for m, (_, per_query) in by_mode.items()}, outcomes)
    return {"modes": {m: means for m, (means, _) in by_mode.items()},
            "hybrid_vs_dense": {"metric": COMPARED, **outcomes}, "pictures": pictures}


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


COMPARED = "ndcg@10"  # the per-query metric on which hybrid is set against dense
# Picture file -> size in pixels (width, height): a figure of (width / DPI, height / DPI) inches.
PICTURES = {"recall_at_k.png": (800, 500), "hybrid_vs_dense.png": (1000, 450)}
DPI = 100


def _draw_pictures(out: Path, curves: dict[str, list[float]], per_query: dict[str, dict[str, dict[str, float]]],
                   outcomes: dict[str, int]) -> list[str]:
    """Recall@k against k for each mode, and hybrid's per-query score against dense's; the file names
    written (none when matplotlib, an optional extra, is missing)."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.ticker import MaxNLocator
    except ImportError:
        log('report without pictures: matplotlib is not installed (pip install -e ".[map]" adds them)')
        return []

    def figure(name: str) -> Figure:
        width, height = PICTURES[name]
        fig = Figure(figsize=(width / DPI, height / DPI), dpi=DPI, layout="constrained")
        FigureCanvasAgg(fig)  # drawn off screen, without pyplot's global state
        return fig

    def save(fig: Figure, name: str) -> None:
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=DPI)
        _write_atomic(out / name, buffer.getvalue())

    fig = figure("recall_at_k.png")
    ax = fig.subplots()
    for mode, curve in curves.items():
        ax.plot(range(1, len(curve) + 1), curve, label=f"{mode} (recall@{len(curve)} {curve[-1]:.3f})")
    ax.set(xscale="log", xlabel="k (documents retrieved)", ylabel="mean recall@k", ylim=(0, 1.02),
           title="Recall at depth k, by retrieval mode")
    ax.xaxis.set_major_formatter("{x:g}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right")
    save(fig, "recall_at_k.png")

    dense, hybrid = per_query["dense"], per_query["hybrid"]
    pairs = sorted((dense[q][COMPARED], hybrid[q][COMPARED]) for q in dense.keys() & hybrid.keys())
    colours = {"better": "tab:green", "worse": "tab:red", "equal": "tab:gray"}
    fig = figure("hybrid_vs_dense.png")
    scatter, spread = fig.subplots(1, 2)
    scatter.scatter([a for a, _ in pairs], [b for _, b in pairs], s=14, alpha=0.6,
                    c=[colours[evaluation.outcome(a, b)] for a, b in pairs])
    scatter.plot([0, 1], [0, 1], color="black", linewidth=0.8)
    scatter.set(xlabel=f"dense {COMPARED}", ylabel=f"hybrid {COMPARED}", xlim=(-0.02, 1.02), ylim=(-0.02, 1.02),
                aspect="equal", title="one point per query")
    pairs.sort(key=lambda pair: pair[1] - pair[0])
    spread.bar(range(len(pairs)), [b - a for a, b in pairs], width=1.0,
               color=[colours[evaluation.outcome(a, b)] for a, b in pairs])
    spread.axhline(0, color="black", linewidth=0.8)
    spread.set(xlabel="queries, sorted by the difference", ylabel=f"hybrid - dense {COMPARED}",
               xlim=(-0.5, len(pairs) - 0.5), ylim=(-1.05, 1.05), title="per-query difference")
    spread.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.suptitle(f"Hybrid against dense: fusion helps {outcomes['better']} queries, hurts {outcomes['worse']}, "
                 f"leaves {outcomes['equal']} equal")
    save(fig, "hybrid_vs_dense.png")
    return list(PICTURES)


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
    pipeline = _eval_pipeline(pipeline, squad)
    squad_path = str(Path(squad).resolve())
    article_text = {title: text for title, text in articles}
    documents = [
        Document(id=f"{squad_path}#{title}", text=text, metadata={
            "source": f"{squad_path}#{title}", "title": title, "format": "squad",
            "content_hash": hashlib.sha256(text.encode()).hexdigest(),
        })
        for title, text in articles
    ]
    ingest = pipeline.ingest_documents(documents)
    log(f"corpus: {ingest.summary()}")
    mode = mode or pipeline.settings.retrieval.mode
    ks = sorted({x for x in (1, 5, 10, k) if x <= k})
    found = {x: 0 for x in ks}
    coverage = {x: 0.0 for x in ks}
    latencies: list[float] = []
    em = f1 = 0.0
    answer_seconds: list[float] = []
    rows = []
    for question in questions:
        hits, seconds = _timed_search(pipeline, question.question, k, mode)
        latencies.append(seconds)
        first = next((h.rank for h in hits if evaluation.answer_in_text(question.answers, h.chunk.text)), None)
        text = article_text.get(question.title, "")
        offset = text.find(question.context)
        paragraph = (offset, offset + len(question.context)) if offset >= 0 else (0, 0)
        row: dict[str, Any] = {"id": question.id, "question": question.question, "answer_rank": first}
        for x in ks:
            found[x] += int(first is not None and first <= x)
            spans = [(h.chunk.start, h.chunk.end) for h in hits[:x]
                     if h.chunk.metadata.get("title") == question.title]
            covered = _coverage(paragraph, spans) if offset >= 0 else 0.0
            coverage[x] += covered
            row[f"coverage@{x}"] = covered
        if generate:
            clock = time.perf_counter()
            given = None
            if context == "none":
                given = []
            elif context == "gold":
                gold = Chunk(id=question.id, document_id=f"{squad_path}#{question.title}", text=question.context,
                             start=paragraph[0], end=paragraph[1],
                             metadata={"source": f"{squad_path}#{question.title}", "title": question.title})
                given = [Hit(chunk=gold, score=1.0, rank=1)]
            answer = pipeline.ask(question.question, k, hits=given)
            answer_seconds.append(time.perf_counter() - clock)
            row.update(prediction=answer.text, prompt_has_gold=question.context in answer.prompt,
                       em=evaluation.exact_match(answer.text, question.answers),
                       f1=evaluation.token_f1(answer.text, question.answers))
            em += row["em"]
            f1 += row["f1"]
        rows.append(row)
    n = max(1, len(questions))
    metrics = {f"answer_recall@{x}": found[x] / n for x in ks}
    metrics.update({f"paragraph_coverage@{x}": coverage[x] / n for x in ks})
    if generate:
        metrics.update(exact_match=em / n, f1=f1 / n)
    result = {
        "task": "qa",
        "squad": str(squad),
        "mode": mode,
        "questions": len(questions),
        "metrics": metrics,
        "latency_ms": _latency(latencies),
        "answer_latency_ms": _latency(answer_seconds) if generate else None,
        "context": context if generate else None,
        "ingest": ingest.as_dict(),
        "seconds": time.perf_counter() - started,
        "config": pipeline.settings.model_dump(mode="json", exclude={"store": {"token"}}),
    }
    if out:
        _write_outputs(Path(out), pipeline, result, rows)
    return result


def _write_outputs(out: Path, pipeline: Pipeline, result: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    _write_atomic(out / "per_query.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    _write_atomic(out / "config.yaml", dump_settings(pipeline.settings))
    _write_atomic(out / "report.md", format_result(result, markdown=True))
    _write_atomic(out / "metrics.json", json.dumps({k: v for k, v in result.items() if k != "config"}, indent=2))


def format_result(result: dict[str, Any], *, markdown: bool = False) -> str:
    """Metrics as an aligned table (plain text for the terminal, Markdown for reports)."""
    title = f"{result['task']} evaluation, mode {result['mode']}"
    count = result.get("queries", result.get("questions"))
    lines = [f"# {title}", "", f"{count} queries; {result['seconds']:.1f} s in all", ""] if markdown else [
        f"{title}: {count} queries, {result['seconds']:.1f} s"]
    rows = [(name, f"{value:.4f}") for name, value in result["metrics"].items()]
    for key in ("latency_ms", "answer_latency_ms"):
        if result.get(key):
            rows += [(f"{key.removesuffix('_ms')} {p} (ms)", f"{v:.1f}") for p, v in result[key].items()]
    if markdown:
        lines += ["| metric | value |", "| --- | --- |"] + [f"| {n} | {v} |" for n, v in rows]
    else:
        width = max(len(n) for n, _ in rows)
        lines += [f"  {n:<{width}}  {v}" for n, v in rows]
    if result.get("modes"):
        lines += _format_modes(result, markdown)
    return "\n".join(lines) + "\n"


def _format_modes(result: dict[str, Any], markdown: bool) -> list[str]:
    """The same metrics for every mode side by side, how hybrid fares against dense, the pictures."""
    modes = result["modes"]
    names = list(next(iter(modes.values())))
    outcomes = result["hybrid_vs_dense"]
    verdict = (f"hybrid against dense on {COMPARED}: fusion helps {outcomes['better']} queries, "
               f"hurts {outcomes['worse']}, leaves {outcomes['equal']} equal")
    if not markdown:
        width = max(len(n) for n in names)
        return (["by mode:", f"  {'':<{width}}" + "".join(f"  {m:>8}" for m in modes)]
                + [f"  {n:<{width}}" + "".join(f"  {modes[m][n]:>8.4f}" for m in modes) for n in names]
                + [verdict])
    lines = ["", "## By mode", "", "| metric | " + " | ".join(modes) + " |", "| --- |" + " --- |" * len(modes)]
    lines += [f"| {n} | " + " | ".join(f"{modes[m][n]:.4f}" for m in modes) + " |" for n in names]
    lines += ["", verdict[0].upper() + verdict[1:] + ".", ""]
    if result.get("pictures"):
        lines += [f"![{name.removesuffix('.png').replace('_', ' ')}]({name})" for name in result["pictures"]]
    else:
        lines += ['No pictures: matplotlib is not installed (`pip install -e ".[map]"` adds them).']
    return lines


# -- rag run -----------------------------------------------------------------------------------------

def read_questions(path: str | Path) -> list[dict[str, str]]:
    """One question per line, or JSONL objects with ``question`` and an optional ``id``."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ConfigError(f"run.questions: cannot read {path} ({exc.strerror or exc})") from None
    questions = []
    for number, raw in enumerate(lines, start=1):
        line = raw.strip()
        if not line:
            continue
        if line.startswith("{"):
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ConfigError(f"{path}:{number}: not valid JSON ({exc.msg})") from None
            if not isinstance(record, dict) or not str(record.get("question", "")).strip():
                raise ConfigError(f"{path}:{number}: a JSON line needs a non-empty \"question\"")
            questions.append({"id": str(record.get("id", len(questions) + 1)), "question": str(record["question"])})
        else:
            questions.append({"id": str(len(questions) + 1), "question": line})
    if not questions:
        raise ConfigError(f"run.questions: {path} holds no questions")
    return questions


def run_job(pipeline: Pipeline) -> dict[str, Any]:
    """Ingest ``run.inputs``, answer every question in ``run.questions``, write the answers as JSONL
    next to a copy of the effective config. Files appear only once complete."""
    settings = pipeline.settings.run
    if not settings.questions:
        raise ConfigError("run.questions: not set; name a questions file (one per line, or JSONL)")
    questions = read_questions(settings.questions)
    report = pipeline.ingest(settings.inputs) if settings.inputs else None
    if report:
        log(report.summary())
    out = Path(settings.output)
    rows = []
    for item in questions:
        answer = pipeline.ask(item["question"])
        rows.append({"id": item["id"], "question": item["question"], **answer.to_dict()})
        log(f"answered {len(rows)}/{len(questions)}")
    answers_path, config_path = out / "answers.jsonl", out / "config.yaml"
    _write_atomic(config_path, dump_settings(pipeline.settings))
    _write_atomic(answers_path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return {"questions": len(rows), "answers": str(answers_path), "config": str(config_path),
            "ingest": report.as_dict() if report else None}
