"""Evaluation built in: retrieval metrics (nDCG, recall, MRR, MAP) and answer metrics (EM, F1) as pure
functions (``metrics``), readers for BEIR and SQuAD data (``datasets``), the `rag eval` jobs that run
them through a Pipeline (``jobs``) and what they write (``report``).

The metrics and readers are importable from here; the jobs load the pipeline, so they are imported
from ``rag.evaluation.jobs`` when wanted.
"""

from rag.evaluation.datasets import SquadQuestion, read_beir_corpus, read_beir_queries, read_qrels, read_squad
from rag.evaluation.metrics import (
    answer_in_text,
    average_precision_at_k,
    exact_match,
    mrr_at_k,
    ndcg_at_k,
    normalize_answer,
    outcome,
    paired_outcomes,
    percentile,
    rank_run,
    recall_at_k,
    recall_curve,
    retrieval_metrics,
    token_f1,
)

__all__ = [
    "SquadQuestion",
    "answer_in_text",
    "average_precision_at_k",
    "exact_match",
    "mrr_at_k",
    "ndcg_at_k",
    "normalize_answer",
    "outcome",
    "paired_outcomes",
    "percentile",
    "rank_run",
    "read_beir_corpus",
    "read_beir_queries",
    "read_qrels",
    "read_squad",
    "recall_at_k",
    "recall_curve",
    "retrieval_metrics",
    "token_f1",
]
