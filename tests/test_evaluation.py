"""Tests of rag.evaluation: hand-worked metrics, agreement with pytrec_eval, SQuAD metrics, readers."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest

from rag.errors import ConfigError, RagError
from rag.evaluation import (
    SquadQuestion,
    answer_in_text,
    average_precision_at_k,
    exact_match,
    mrr_at_k,
    ndcg_at_k,
    normalize_answer,
    percentile,
    rank_run,
    read_beir_corpus,
    read_beir_queries,
    read_qrels,
    read_squad,
    recall_at_k,
    retrieval_metrics,
    token_f1,
)


def log2(x: float) -> float:
    return math.log2(x)


# ------------------------------------------------------------------------------------------------
# Ranking


def test_rank_run_ties_by_doc_id_descending():
    # d has the top score; a, b, c tie at 1.0 and go by id descending: c, b, a; e last.
    assert rank_run({"a": 1.0, "b": 1.0, "c": 1.0, "d": 2.0, "e": 0.5}) == ["d", "c", "b", "a", "e"]
    # String order, not numeric: "9" > "10" > "1".
    assert rank_run({"1": 0.0, "10": 0.0, "9": 0.0}) == ["9", "10", "1"]
    assert rank_run({}) == []


def test_rank_run_rejects_nan():
    with pytest.raises(RagError, match="NaN"):
        rank_run({"a": float("nan")})


# ------------------------------------------------------------------------------------------------
# Hand-worked per-query metrics


def test_binary_relevance_by_hand():
    ranked = ["d1", "d2", "d3", "d4", "d5"]
    rels = {"d2": 1, "d4": 1, "d9": 1, "d1": 0}  # d9 relevant but not retrieved; d1 judged non-relevant
    # DCG@5 = 1/log2(3) + 1/log2(5); IDCG@5 = 1 + 1/log2(3) + 1/log2(4) (three relevant docs)
    dcg = 1 / log2(3) + 1 / log2(5)
    idcg = 1 + 1 / log2(3) + 1 / 2
    assert ndcg_at_k(ranked, rels, 5) == pytest.approx(dcg / idcg)
    # @1: d1 not relevant -> DCG 0
    assert ndcg_at_k(ranked, rels, 1) == 0.0
    # Recall: 2 of 3 relevant within 5; 1 of 3 within 2; 0 within 1
    assert recall_at_k(ranked, rels, 5) == pytest.approx(2 / 3)
    assert recall_at_k(ranked, rels, 2) == pytest.approx(1 / 3)
    assert recall_at_k(ranked, rels, 1) == 0.0
    # MRR: first relevant at rank 2
    assert mrr_at_k(ranked, rels, 10) == 0.5
    assert mrr_at_k(ranked, rels, 1) == 0.0
    # AP@5: precision at rank 2 = 1/2, at rank 4 = 2/4; divided by R = 3 (d9 counts)
    assert average_precision_at_k(ranked, rels, 5) == pytest.approx((0.5 + 0.5) / 3)
    # AP@3: only d2 within 3 -> (1/2) / 3
    assert average_precision_at_k(ranked, rels, 3) == pytest.approx(0.5 / 3)


def test_graded_relevance_by_hand():
    ranked = ["a", "b", "c"]
    rels = {"a": 1, "b": 2, "c": 0, "x": 2}
    # Linear gain: DCG@3 = 1/log2(2) + 2/log2(3) = 1 + 1.26186
    # Ideal order of grades: 2, 2, 1 -> IDCG@3 = 2 + 2/log2(3) + 1/log2(4) = 2 + 1.26186 + 0.5
    dcg = 1 + 2 / log2(3)
    idcg = 2 + 2 / log2(3) + 0.5
    assert ndcg_at_k(ranked, rels, 3) == pytest.approx(dcg / idcg)
    # @1: DCG = 1, IDCG = 2
    assert ndcg_at_k(ranked, rels, 1) == pytest.approx(0.5)
    # Grades above 1 count once for recall / MRR / AP
    assert recall_at_k(ranked, rels, 3) == pytest.approx(2 / 3)
    assert mrr_at_k(ranked, rels, 3) == 1.0
    assert average_precision_at_k(ranked, rels, 3) == pytest.approx((1 + 1) / 3)


def test_k_larger_than_list_and_perfect_ranking():
    ranked = ["a", "b"]
    rels = {"a": 2, "b": 1}
    assert ndcg_at_k(ranked, rels, 100) == pytest.approx(1.0)
    assert recall_at_k(ranked, rels, 100) == 1.0
    assert average_precision_at_k(ranked, rels, 100) == 1.0
    assert mrr_at_k(ranked, rels, 100) == 1.0
    assert ndcg_at_k([], rels, 10) == 0.0


def test_negative_grades_are_non_relevant():
    ranked = ["a", "b"]
    rels = {"a": -1, "b": 1}
    # a contributes nothing (not a negative gain): DCG = 1/log2(3), IDCG = 1
    assert ndcg_at_k(ranked, rels, 2) == pytest.approx(1 / log2(3))
    assert mrr_at_k(ranked, rels, 2) == 0.5
    assert recall_at_k(ranked, rels, 1) == 0.0


@pytest.mark.parametrize("fn", [ndcg_at_k, recall_at_k, mrr_at_k, average_precision_at_k])
def test_bad_k(fn):
    with pytest.raises(ConfigError):
        fn(["a"], {"a": 1}, 0)


# ------------------------------------------------------------------------------------------------
# Whole-run metrics by hand


def _hand_run():
    run = {
        # Ties: b and a both 0.9 -> order b, a; c last. Relevant: a (rank 2).
        "q1": {"a": 0.9, "b": 0.9, "c": 0.1},
        # Relevant doc z never retrieved.
        "q2": {"x": 3.0, "y": 2.0},
        # In the run but not in qrels: ignored.
        "q9": {"a": 1.0},
    }
    qrels = {
        "q1": {"a": 1, "c": 0},
        "q2": {"z": 1},
        "q3": {"a": 1},  # no run -> 0 with missing="zero", skipped with "skip"
        "q4": {"a": 0, "b": 0},  # no relevant doc -> always skipped
    }
    return run, qrels


def test_retrieval_metrics_hand_worked_missing_zero():
    run, qrels = _hand_run()
    means, per_query = retrieval_metrics(run, qrels, ks_ndcg=(1, 10), ks_recall=(1, 2), k_mrr=10, k_map=10)
    assert set(per_query) == {"q1", "q2", "q3"}
    assert list(means) == ["ndcg@1", "ndcg@10", "recall@1", "recall@2", "mrr@10", "map@10"]
    q1 = per_query["q1"]
    # q1 ranking b, a, c; a at rank 2: nDCG@10 = (1/log2 3) / 1; nDCG@1 = 0
    assert q1["ndcg@10"] == pytest.approx(1 / log2(3))
    assert q1["ndcg@1"] == 0.0
    assert q1["recall@1"] == 0.0 and q1["recall@2"] == 1.0
    assert q1["mrr@10"] == 0.5
    assert q1["map@10"] == 0.5
    assert all(v == 0.0 for v in per_query["q2"].values())
    assert all(v == 0.0 for v in per_query["q3"].values())
    # means over q1, q2, q3
    assert means["mrr@10"] == pytest.approx(0.5 / 3)
    assert means["ndcg@10"] == pytest.approx((1 / log2(3)) / 3)
    assert means["recall@2"] == pytest.approx(1 / 3)


def test_retrieval_metrics_missing_skip():
    run, qrels = _hand_run()
    means, per_query = retrieval_metrics(run, qrels, missing="skip")
    assert set(per_query) == {"q1", "q2"}
    assert means["mrr@10"] == pytest.approx(0.5 / 2)


def test_retrieval_metrics_default_keys_and_empty_run_entry():
    means, per_query = retrieval_metrics({"q1": {}}, {"q1": {"a": 1}}, missing="skip")
    assert list(means) == ["ndcg@10", "recall@1", "recall@5", "recall@10", "recall@100", "mrr@10", "map@100"]
    # An empty ranking is present in the run: it scores 0 even with missing="skip".
    assert per_query == {"q1": dict.fromkeys(means, 0.0)}


def test_retrieval_metrics_errors():
    run, qrels = _hand_run()
    with pytest.raises(ConfigError, match="missing"):
        retrieval_metrics(run, qrels, missing="ignore")
    with pytest.raises(ConfigError):
        retrieval_metrics(run, qrels, ks_recall=(0,))
    with pytest.raises(RagError, match="relevant"):
        retrieval_metrics(run, {"q4": {"a": 0}})
    with pytest.raises(RagError, match="same query ids"):
        retrieval_metrics({"other": {"a": 1.0}}, {"q1": {"a": 1}}, missing="skip")


# ------------------------------------------------------------------------------------------------
# Agreement with pytrec_eval on random runs


def _random_run_and_qrels(seed: int, n_queries: int = 200):
    rng = np.random.default_rng(seed)
    run: dict[str, dict[str, float]] = {}
    qrels: dict[str, dict[str, int]] = {}
    for q in range(n_queries):
        qid = f"q{q}"
        pool = [f"d{i}" for i in range(int(rng.integers(5, 150)))]
        n_judged = int(rng.integers(1, min(len(pool), 30) + 1))
        judged = rng.choice(len(pool), size=n_judged, replace=False)
        grades = rng.integers(0, 3, size=n_judged)
        if grades.max() == 0:  # queries without relevant docs are skipped here and by design
            grades[0] = int(rng.integers(1, 3))
        qrels[qid] = {pool[i]: int(g) for i, g in zip(judged, grades, strict=True)}
        # also judge some docs that are never retrieved
        for extra in range(int(rng.integers(0, 4))):
            qrels[qid][f"unret{extra}"] = int(rng.integers(0, 3))
        n_ret = int(rng.integers(0, len(pool) + 1))
        retrieved = rng.choice(len(pool), size=n_ret, replace=False)
        # coarse scores so ties are frequent
        scores = rng.integers(0, 8, size=n_ret) / 4.0
        run[qid] = {pool[i]: float(s) for i, s in zip(retrieved, scores, strict=True)}
    return run, qrels


def _trec(qrels, run, measures):
    pytrec_eval = pytest.importorskip("pytrec_eval")
    return pytrec_eval.RelevanceEvaluator(qrels, measures).evaluate(run)


@pytest.mark.parametrize("seed", [0, 1])
def test_agrees_with_pytrec_eval(seed):
    pytest.importorskip("pytrec_eval")
    run, qrels = _random_run_and_qrels(seed)
    means, per_query = retrieval_metrics(run, qrels, ks_ndcg=(10,), ks_recall=(5, 10, 100), k_mrr=10, k_map=100)
    # recip_rank has no cut-off, so give trec_eval each ranking truncated to our top 10
    # (it re-sorts them the same way). Everything else uses the full run.
    truncated = {qid: {d: docs[d] for d in rank_run(docs)[:10]} for qid, docs in run.items()}
    ref = _trec(qrels, run, {"ndcg_cut_10", "recall_5", "recall_10", "recall_100", "map_cut_100"})
    ref_rr = _trec(qrels, truncated, {"recip_rank"})
    pairs = {
        "ndcg@10": "ndcg_cut_10",
        "recall@5": "recall_5",
        "recall@10": "recall_10",
        "recall@100": "recall_100",
        "map@100": "map_cut_100",
    }
    assert set(per_query) == set(ref) == set(qrels)
    for qid in qrels:
        for ours, theirs in pairs.items():
            assert per_query[qid][ours] == pytest.approx(ref[qid][theirs], abs=1e-6), (qid, ours)
        assert per_query[qid]["mrr@10"] == pytest.approx(ref_rr[qid]["recip_rank"], abs=1e-6), qid
    for ours, theirs in pairs.items():
        assert means[ours] == pytest.approx(np.mean([ref[q][theirs] for q in ref]), abs=1e-6)
    assert means["mrr@10"] == pytest.approx(np.mean([ref_rr[q]["recip_rank"] for q in ref_rr]), abs=1e-6)

    # With k at least as long as every ranking, mrr@k is trec_eval's recip_rank on the full run.
    longest = max(len(d) for d in run.values())
    _, per_query_full = retrieval_metrics(run, qrels, k_mrr=max(longest, 1))
    ref_full = _trec(qrels, run, {"recip_rank"})
    for qid in qrels:
        assert per_query_full[qid][f"mrr@{max(longest, 1)}"] == pytest.approx(ref_full[qid]["recip_rank"], abs=1e-6)


def test_missing_skip_matches_trec_eval_average():
    pytest.importorskip("pytrec_eval")
    run, qrels = _random_run_and_qrels(2, n_queries=50)
    for qid in list(run)[::3]:
        del run[qid]
    means, per_query = retrieval_metrics(run, qrels, missing="skip")
    ref = _trec(qrels, run, {"ndcg_cut_10"})
    assert set(per_query) == set(ref)
    assert means["ndcg@10"] == pytest.approx(np.mean([v["ndcg_cut_10"] for v in ref.values()]), abs=1e-6)
    # missing="zero" averages over all qrels queries, the absent ones scoring 0.
    means_zero, _ = retrieval_metrics(run, qrels)
    assert means_zero["ndcg@10"] == pytest.approx(sum(v["ndcg_cut_10"] for v in ref.values()) / len(qrels))


# ------------------------------------------------------------------------------------------------
# SQuAD answer metrics


def test_normalize_answer():
    assert normalize_answer("The  Quick, Brown fox!") == "quick brown fox"
    assert normalize_answer("  An apple a day ") == "apple day"
    assert normalize_answer("theory") == "theory"  # articles only as whole words
    assert normalize_answer("U.S.A.") == "usa"
    assert normalize_answer("\tA\n") == ""


def test_exact_match():
    assert exact_match("the Eiffel Tower.", ["Eiffel tower"]) == 1.0
    assert exact_match("Eiffel", ["Eiffel Tower"]) == 0.0
    assert exact_match("Paris", ["London", "paris!"]) == 1.0  # max over golds
    assert exact_match("", ["Paris"]) == 0.0
    assert exact_match("Paris", []) == 0.0


def test_token_f1():
    # pred tokens: [eiffel, tower, in, paris] ; gold: [eiffel, tower] -> P = 2/4, R = 1 -> F1 = 2/3
    assert token_f1("The Eiffel Tower in Paris", ["Eiffel Tower"]) == pytest.approx(2 / 3)
    # max over golds: second gold matches exactly
    assert token_f1("The Eiffel Tower in Paris", ["Eiffel Tower", "eiffel tower, in paris"]) == 1.0
    assert token_f1("London", ["Paris"]) == 0.0  # no overlap
    assert token_f1("", ["Paris"]) == 0.0  # empty prediction
    assert token_f1("the", ["a"]) == 0.0  # both normalize to nothing: 0 in v1.1
    # repeated tokens count by multiplicity: pred [a? no] -> [paris, paris] vs [paris]: common 1,
    # P = 1/2, R = 1 -> 2/3
    assert token_f1("Paris Paris", ["Paris"]) == pytest.approx(2 / 3)
    assert token_f1("Paris", []) == 0.0


def test_answer_in_text_whole_tokens():
    assert answer_in_text(["1990"], "It happened in 1990, in spring.")
    assert not answer_in_text(["1990"], "It happened in 19901.")
    assert not answer_in_text(["1990"], "In 11990 nothing happened.")
    assert answer_in_text(["Eiffel Tower"], "the EIFFEL  tower stands")
    assert answer_in_text(["nope", "The Tower"], "a tower.")  # any gold; articles dropped
    assert not answer_in_text(["the"], "the cat")  # a gold that normalizes to nothing never matches
    assert not answer_in_text([], "text")


def test_percentile():
    assert percentile([1, 2, 3, 4], 50) == 2.5
    assert percentile([5.0], 95) == 5.0
    values = [0.3, 0.1, 0.9, 0.5, 0.7]
    assert percentile(values, 95) == pytest.approx(float(np.percentile(values, 95)))
    assert percentile(values, 0) == 0.1 and percentile(values, 100) == 0.9
    with pytest.raises(RagError):
        percentile([], 50)
    with pytest.raises(RagError):
        percentile([1.0], 101)


# ------------------------------------------------------------------------------------------------
# Readers


def test_read_beir_corpus_streams(tmp_path):
    path = tmp_path / "corpus.jsonl"
    path.write_text(
        '{"_id": "d1", "title": "T1", "text": "one"}\n'
        "\n"
        '{"_id": 2, "text": "two"}\n',
        encoding="utf-8",
    )
    it = read_beir_corpus(path)
    assert next(it) == ("d1", "T1", "one")
    assert list(it) == [("2", "", "two")]


def test_read_beir_corpus_errors(tmp_path):
    with pytest.raises(ConfigError, match=re.escape("missing.jsonl")):
        read_beir_corpus(tmp_path / "missing.jsonl")  # raised at the call, not at next()
    path = tmp_path / "corpus.jsonl"
    path.write_text('{"_id": "d1", "text": "one"}\n{"_id": "d2", "text": \n', encoding="utf-8")
    with pytest.raises(ConfigError, match=r"corpus\.jsonl:2"):
        list(read_beir_corpus(path))
    path.write_text('{"_id": "d1", "text": "one"}\n\n{"_id": "d1", "text": "again"}\n', encoding="utf-8")
    with pytest.raises(ConfigError, match=r"corpus\.jsonl:3.*twice"):
        list(read_beir_corpus(path))
    path.write_text('{"_id": "d1"}\n', encoding="utf-8")
    with pytest.raises(ConfigError, match=r"corpus\.jsonl:1.*text"):
        list(read_beir_corpus(path))


def test_read_beir_queries(tmp_path):
    path = tmp_path / "queries.jsonl"
    path.write_text('{"_id": "q1", "text": "what?", "metadata": {}}\n{"_id": "q2", "text": "why?"}\n', encoding="utf-8")
    assert read_beir_queries(path) == {"q1": "what?", "q2": "why?"}
    path.write_text('{"_id": "q1", "text": "what?"}\n["not", "an", "object"]\n', encoding="utf-8")
    with pytest.raises(ConfigError, match=r"queries\.jsonl:2"):
        read_beir_queries(path)


@pytest.mark.parametrize("header", [True, False])
def test_read_qrels_with_and_without_header(tmp_path, header):
    path = tmp_path / "qrels.tsv"
    body = "q1\td1\t1\r\nq1\td2\t0  \nq2\td1\t2\t\n\n"
    path.write_text(("query-id\tcorpus-id\tscore\n" if header else "") + body, encoding="utf-8", newline="")
    assert read_qrels(path) == {"q1": {"d1": 1, "d2": 0}, "q2": {"d1": 2}}


def test_read_qrels_trec_form_and_spaces(tmp_path):
    path = tmp_path / "qrels.txt"
    path.write_text("q1 0 d1 1\nq1 0 d2 2\n", encoding="utf-8")
    assert read_qrels(path) == {"q1": {"d1": 1, "d2": 2}}


def test_read_qrels_bad_lines(tmp_path):
    path = tmp_path / "qrels.tsv"
    path.write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\nq1\td2\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"qrels\.tsv:3"):
        read_qrels(path)
    path.write_text("q1\td1\t1\nq1\td2\thigh\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"qrels\.tsv:2.*high"):
        read_qrels(path)
    path.write_text("q1\td1\t1\nq1\td1\t2\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"qrels\.tsv:2.*twice"):
        read_qrels(path)
    with pytest.raises(ConfigError, match=re.escape("nothere.tsv")):
        read_qrels(tmp_path / "nothere.tsv")


def _squad_doc():
    return {
        "version": "1.1",
        "data": [
            {
                "title": "Super_Bowl_50",
                "paragraphs": [
                    {
                        "context": "Denver won.",
                        "qas": [
                            {
                                "id": "a1",
                                "question": "Who won?",
                                "answers": [
                                    {"text": "Denver", "answer_start": 0},
                                    {"text": "Denver", "answer_start": 0},
                                ],
                            }
                        ],
                    },
                    {
                        "context": "It was in 2016.",
                        "qas": [{"id": "a2", "question": "When?", "answers": [{"text": "2016", "answer_start": 10}]}],
                    },
                ],
            },
            {"title": "Warsaw", "paragraphs": [{"context": "Warsaw is a city.", "qas": []}]},
        ],
    }


def test_read_squad(tmp_path):
    path = tmp_path / "squad.json"
    path.write_text(json.dumps(_squad_doc()), encoding="utf-8")
    articles, questions = read_squad(path)
    assert articles == [
        ("Super_Bowl_50", "Super Bowl 50\n\nDenver won.\n\nIt was in 2016."),
        ("Warsaw", "Warsaw\n\nWarsaw is a city."),
    ]
    assert questions == [
        SquadQuestion("a1", "Who won?", ["Denver", "Denver"], "Denver won.", "Super_Bowl_50"),
        SquadQuestion("a2", "When?", ["2016"], "It was in 2016.", "Super_Bowl_50"),
    ]


def test_read_squad_errors(tmp_path):
    path = tmp_path / "squad.json"
    path.write_text('{"data": [\n  {"title": "x",\n  }', encoding="utf-8")
    with pytest.raises(ConfigError, match=r"squad\.json:3"):
        read_squad(path)
    doc = _squad_doc()
    del doc["data"][0]["paragraphs"][1]["qas"][0]["question"]
    path.write_text(json.dumps(doc), encoding="utf-8")
    with pytest.raises(ConfigError, match=r"squad\.json.*data\[0\]\.paragraphs\[1\]\.qas\[0\].*question"):
        read_squad(path)
    with pytest.raises(ConfigError, match=re.escape("nothere.json")):
        read_squad(tmp_path / "nothere.json")


# ------------------------------------------------------------------------------------------------
# The shared data, where present


def test_shared_data_readers():
    from conftest import shared_data

    scifact = shared_data("scifact")
    qrels = read_qrels(scifact / "qrels" / "train.tsv")
    assert sum(len(v) for v in qrels.values()) == 919
    assert len(read_beir_queries(scifact / "queries.train.jsonl")) == 809
    assert sum(1 for _ in read_beir_corpus(scifact / "corpus.jsonl")) == 5183
    articles, questions = read_squad(shared_data("xquad-en", "xquad.en.json"))
    assert len(articles) == 48 and len(questions) == 1190
    assert all(q.answers for q in questions)
