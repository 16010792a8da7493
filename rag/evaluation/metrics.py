"""Retrieval metrics (nDCG, recall, MRR, MAP) and answer metrics (EM, F1): pure functions.

Pure functions only; nothing here imports another pipeline stage. The retrieval metrics follow
trec_eval (and so pytrec_eval) conventions exactly, and the answer metrics follow the official
SQuAD v1.1 evaluation script, so the numbers can be compared with published ones.

Ranking and ties
----------------
A run gives each query a mapping ``doc id -> score`` (higher is better). :func:`rank_run` turns it
into a ranked list the way trec_eval does: by score descending, and documents with equal scores by
doc id DESCENDING (plain string comparison, which for Python strings is the same order as trec_eval's
``strcmp`` on UTF-8 bytes). So with scores ``{"a": 1, "b": 1}`` the ranking is ``["b", "a"]``. The rank
given in the run file is ignored, as trec_eval ignores it. Every metric of :func:`retrieval_metrics`
uses this order; the ``*_at_k`` functions take a list that is already ranked.

Relevance
---------
Qrels map ``query id -> {doc id: graded relevance}``. A document is relevant when its relevance is
> 0; a relevance <= 0 (judged non-relevant) counts the same as an unjudged document. (trec_eval would
give a negative grade a negative gain in nDCG; here it is simply non-relevant.) ``R`` below is the
number of relevant documents of the query, whether retrieved or not. Ranks start at 1.

Retrieval metrics (per query; the reported value is the mean over the evaluated queries)
-----------------------------------------------------------------------------------------
- ``ndcg@k`` (trec_eval ``ndcg_cut_k``): DCG@k / IDCG@k with DCG@k = sum over ranks i <= k of
  rel_i / log2(i + 1). The gain is the graded relevance as given (rel, not 2^rel - 1) and 0 for
  non-relevant or unjudged documents. IDCG@k is the DCG@k of the ideal ranking: all of the query's
  relevant documents (retrieved or not) sorted by relevance, descending.
- ``recall@k`` (trec_eval ``recall_k``): (relevant documents in the top k) / R.
- ``mrr@k``: 1 / (rank of the first relevant document) if it is within the top k, else 0; averaged
  over queries it is the mean reciprocal rank. (trec_eval's ``recip_rank`` has no cut-off; it equals
  ``mrr@k`` for any k at least as long as the ranking.)
- ``map@k`` (trec_eval ``map_cut_k``): (sum over the relevant documents at ranks i <= k of
  precision@i) / R. Relevant documents not retrieved within k contribute 0, and the divisor is R,
  not min(R, k).
When k is larger than the ranking, the ranking is used as it is (nothing is padded).

Comparing runs
--------------
- :func:`recall_curve`: the mean recall@k for each k asked for, over the same queries as
  :func:`retrieval_metrics` (it is that function's ``recall@k``, at many k at once).
- :func:`paired_outcomes`: per-query comparison of two runs on one metric: on how many queries the
  second scores higher than the first, lower, or the same (:func:`outcome`: within 1e-12).

Which queries are averaged
--------------------------
- A query with no relevant document in the qrels (absent, or all grades <= 0) is skipped: it has no
  per-query entry and does not count in the means (every metric is undefined or trivially 0 for it).
- A query in the run but not in the qrels is ignored (nothing to judge it by), as in trec_eval.
- A query with relevant documents but no entry in the run: with ``missing="zero"`` (the default) it
  scores 0 on every metric and counts in the means, so a retriever that drops queries cannot look
  better than one that answers them all (trec_eval's ``-c``). With ``missing="skip"`` it is left out,
  which is trec_eval's default (it averages only over queries present in the run). A query present in
  the run with an empty mapping is present: it scores 0 in both modes (as in pytrec_eval).

Answer metrics (SQuAD v1.1)
---------------------------
- :func:`normalize_answer`: lower-case, drop ASCII punctuation (``string.punctuation``), drop the
  whole words "a", "an", "the", and collapse whitespace to single spaces.
- :func:`exact_match`: 1.0 when the normalized prediction equals a normalized gold answer, else 0.0;
  the maximum over the gold answers.
- :func:`token_f1`: the tokens are the whitespace-separated words of the normalized strings; with
  ``common`` the size of the multiset intersection, precision = common / len(prediction tokens),
  recall = common / len(gold tokens), F1 = 2PR / (P + R), and 0 when nothing is shared (so an empty
  prediction scores 0, as in v1.1). The maximum over the gold answers.
- With no gold answers at all, both return 0.0.
- :func:`answer_in_text`: True when some gold answer, normalized, occurs in the normalized text as a
  whole-token sequence (both padded with spaces, so "1990" does not match "19901"). A gold answer that
  normalizes to nothing (e.g. "the") never matches.

Latency
-------
- :func:`percentile`: the q-th percentile (q in [0, 100]) with linear interpolation between the
  closest ranks, numpy's default (so p50 of [1, 2, 3, 4] is 2.5).
"""

from __future__ import annotations

import math
import re
import string
from collections import Counter
from collections.abc import Mapping, Sequence

import numpy as np

from rag.errors import ConfigError, RagError

# ---------------------------------------------------------------------------------------------------
# Ranking and per-query retrieval metrics


def rank_run(scores: Mapping[str, float]) -> list[str]:
    """Doc ids by score descending; equal scores by doc id descending (trec_eval's order)."""
    for doc_id, score in scores.items():
        if isinstance(score, float) and math.isnan(score):
            raise RagError(f"score of document {doc_id!r} is NaN; a run needs comparable scores")
    by_id_desc = sorted(scores, reverse=True)
    # sorted() is stable, so the doc-id order survives among equal scores.
    return sorted(by_id_desc, key=lambda d: scores[d], reverse=True)


def _check_k(k: int, name: str = "k") -> int:
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ConfigError(f"{name} must be a positive integer, got {k!r}")
    return k


def _num_relevant(rels: Mapping[str, float]) -> int:
    return sum(1 for r in rels.values() if r > 0)


def ndcg_at_k(ranked: Sequence[str], rels: Mapping[str, float], k: int) -> float:
    """trec_eval ndcg_cut@k: linear gain (the grade), discount log2(rank + 1), ideal from all relevant."""
    _check_k(k)
    dcg = 0.0
    for i, doc_id in enumerate(ranked[:k]):
        gain = rels.get(doc_id, 0)
        if gain > 0:
            dcg += gain / math.log2(i + 2)
    ideal = sorted((r for r in rels.values() if r > 0), reverse=True)[:k]
    idcg = sum(gain / math.log2(i + 2) for i, gain in enumerate(ideal))
    return dcg / idcg if idcg > 0 else 0.0


def recall_at_k(ranked: Sequence[str], rels: Mapping[str, float], k: int) -> float:
    """Relevant documents in the top k / all relevant documents of the query (0 when there are none)."""
    _check_k(k)
    total = _num_relevant(rels)
    if total == 0:
        return 0.0
    found = sum(1 for doc_id in ranked[:k] if rels.get(doc_id, 0) > 0)
    return found / total


def mrr_at_k(ranked: Sequence[str], rels: Mapping[str, float], k: int) -> float:
    """1 / rank of the first relevant document within the top k, else 0."""
    _check_k(k)
    for i, doc_id in enumerate(ranked[:k]):
        if rels.get(doc_id, 0) > 0:
            return 1.0 / (i + 1)
    return 0.0


def average_precision_at_k(ranked: Sequence[str], rels: Mapping[str, float], k: int) -> float:
    """trec_eval map_cut@k: sum of precision@i at each relevant rank i <= k, divided by all relevant."""
    _check_k(k)
    total = _num_relevant(rels)
    if total == 0:
        return 0.0
    hits = 0
    precision_sum = 0.0
    for i, doc_id in enumerate(ranked[:k]):
        if rels.get(doc_id, 0) > 0:
            hits += 1
            precision_sum += hits / (i + 1)
    return precision_sum / total


# ---------------------------------------------------------------------------------------------------
# Whole-run retrieval metrics


def _unique_ks(ks: Sequence[int], name: str) -> list[int]:
    if isinstance(ks, int):
        ks = (ks,)
    out: list[int] = []
    for k in ks:
        _check_k(k, name)
        if k not in out:
            out.append(k)
    return out


def retrieval_metrics(
    run: Mapping[str, Mapping[str, float]],
    qrels: Mapping[str, Mapping[str, int]],
    *,
    ks_ndcg: Sequence[int] = (10,),
    ks_recall: Sequence[int] = (1, 5, 10, 100),
    k_mrr: int = 10,
    k_map: int = 100,
    missing: str = "zero",
) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """Mean and per-query nDCG@k, Recall@k, MRR@k and MAP@k of a run against qrels.

    ``run`` maps query id -> {doc id: score}; ``qrels`` maps query id -> {doc id: grade}. Returns
    ``(means, per_query)``, both keyed by metric names such as ``"ndcg@10"``, ``"recall@5"``,
    ``"mrr@10"``, ``"map@100"``. See the module docstring for the definitions, the tie order and which
    queries are averaged (``missing="zero"`` or ``"skip"``).
    """
    if missing not in ("zero", "skip"):
        raise ConfigError(f'missing must be "zero" or "skip", got {missing!r}')
    ndcg_ks = _unique_ks(ks_ndcg, "ks_ndcg")
    recall_ks = _unique_ks(ks_recall, "ks_recall")
    _check_k(k_mrr, "k_mrr")
    _check_k(k_map, "k_map")

    names = (
        [f"ndcg@{k}" for k in ndcg_ks]
        + [f"recall@{k}" for k in recall_ks]
        + [f"mrr@{k_mrr}", f"map@{k_map}"]
    )

    per_query: dict[str, dict[str, float]] = {}
    for qid, rels in qrels.items():
        if _num_relevant(rels) == 0:
            continue
        if qid not in run:
            if missing == "skip":
                continue
            ranked: list[str] = []
        else:
            ranked = rank_run(run[qid])
        values: dict[str, float] = {}
        for k in ndcg_ks:
            values[f"ndcg@{k}"] = ndcg_at_k(ranked, rels, k)
        for k in recall_ks:
            values[f"recall@{k}"] = recall_at_k(ranked, rels, k)
        values[f"mrr@{k_mrr}"] = mrr_at_k(ranked, rels, k_mrr)
        values[f"map@{k_map}"] = average_precision_at_k(ranked, rels, k_map)
        per_query[qid] = values

    if not per_query:
        if any(_num_relevant(r) > 0 for r in qrels.values()):
            raise RagError(
                "no query of the qrels is in the run (missing='skip'); check that the run and the "
                "qrels use the same query ids"
            )
        raise RagError("the qrels have no query with a relevant document (grade > 0); nothing to evaluate")

    n = len(per_query)
    means = {name: sum(v[name] for v in per_query.values()) / n for name in names}
    return means, per_query


def recall_curve(
    run: Mapping[str, Mapping[str, float]],
    qrels: Mapping[str, Mapping[str, int]],
    ks: Sequence[int],
    *,
    missing: str = "zero",
) -> list[float]:
    """Mean recall@k for each k of ``ks``: the points of a recall-against-depth picture."""
    ks = _unique_ks(ks, "ks")
    means, _ = retrieval_metrics(run, qrels, ks_recall=ks, missing=missing)
    return [means[f"recall@{k}"] for k in ks]


def outcome(baseline: float, other: float) -> str:
    """``"better"``, ``"worse"`` or ``"equal"``: ``other`` against ``baseline``, float noise a tie."""
    difference = other - baseline
    return "equal" if abs(difference) <= 1e-12 else "better" if difference > 0 else "worse"


def paired_outcomes(
    baseline: Mapping[str, Mapping[str, float]], other: Mapping[str, Mapping[str, float]], metric: str
) -> dict[str, int]:
    """On how many queries ``other`` beats, loses to or ties ``baseline`` on ``metric``.

    Both are per-query tables as :func:`retrieval_metrics` returns them; only queries in both count.
    A mean hides whether a change helps a few queries a lot or many a little; these counts do not."""
    counts = {"better": 0, "worse": 0, "equal": 0}
    for qid in baseline.keys() & other.keys():
        counts[outcome(baseline[qid][metric], other[qid][metric])] += 1
    return counts


# ---------------------------------------------------------------------------------------------------
# Answer metrics (SQuAD v1.1)

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = str.maketrans("", "", string.punctuation)


def normalize_answer(s: str) -> str:
    """SQuAD v1.1 normalization: lower case, no punctuation, no articles, single spaces."""
    text = s.lower().translate(_PUNCTUATION)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def exact_match(prediction: str, golds: Sequence[str]) -> float:
    """1.0 when the normalized prediction equals some normalized gold answer, else 0.0."""
    pred = normalize_answer(prediction)
    return max((1.0 if pred == normalize_answer(g) else 0.0 for g in golds), default=0.0)


def _f1_tokens(pred_tokens: list[str], gold_tokens: list[str]) -> float:
    common = sum((Counter(pred_tokens) & Counter(gold_tokens)).values())
    if common == 0:
        return 0.0
    precision = common / len(pred_tokens)
    recall = common / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def token_f1(prediction: str, golds: Sequence[str]) -> float:
    """SQuAD v1.1 token F1 between the prediction and the best-matching gold answer."""
    pred_tokens = normalize_answer(prediction).split()
    return max((_f1_tokens(pred_tokens, normalize_answer(g).split()) for g in golds), default=0.0)


def answer_in_text(golds: Sequence[str], text: str) -> bool:
    """True when a normalized gold answer occurs in the normalized text as whole tokens."""
    padded = f" {normalize_answer(text)} "
    for gold in golds:
        g = normalize_answer(gold)
        if g and f" {g} " in padded:
            return True
    return False


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0 <= q <= 100), linear interpolation (numpy's default method)."""
    if len(values) == 0:
        raise RagError("percentile of no values is undefined")
    if not 0 <= q <= 100:
        raise RagError(f"percentile q must be within [0, 100], got {q!r}")
    return float(np.percentile(np.asarray(values, dtype=float), q))
