"""`rag eval` end to end on tiny BEIR- and SQuAD-format datasets made here, through the real CLI path."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rag.cli import main
from tiny_models import build_tiny_causal_lm

CORPUS = {
    "d1": ("Solar inverters", "An inverter converts direct current from solar panels into alternating current."),
    "d2": ("Sourdough", "Sourdough bread rises with wild yeast and lactic acid bacteria over a long fermentation."),
    "d3": ("Glaciers", "Glaciers form where snow accumulates faster than it melts and compacts into ice."),
    "d4": ("Vaccines", "Vaccines train the immune system to recognise a pathogen without causing the disease."),
    "d5": ("Tides", "Ocean tides are caused by the gravitational pull of the moon and the sun on the oceans."),
}
QUERIES = {
    "q1": "what converts solar panel current",
    "q2": "how does wild yeast make bread rise",
    "q3": "why are there tides in the ocean",
    "q4": "a question nobody judged",
}
QRELS = [("q1", "d1", 1), ("q2", "d2", 2), ("q3", "d5", 1), ("q3", "d3", 0)]


@pytest.fixture()
def beir(tmp_path) -> dict[str, Path]:
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"_id": i, "title": t, "text": x}) + "\n" for i, (t, x) in CORPUS.items()))
    queries = tmp_path / "queries.jsonl"
    queries.write_text("".join(json.dumps({"_id": i, "text": t}) + "\n" for i, t in QUERIES.items()))
    qrels = tmp_path / "qrels.tsv"
    qrels.write_text("query-id\tcorpus-id\tscore\n" + "".join(f"{q}\t{d}\t{s}\n" for q, d, s in QRELS))
    return {"corpus": corpus, "queries": queries, "qrels": qrels}


def run_json(capsys, *argv: str) -> dict:
    assert main(list(argv)) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("mode", ["dense", "lexical", "hybrid"])
def test_eval_retrieval(beir, tmp_path, minilm_path, capsys, mode):
    argv = ["eval", "retrieval", "--corpus", str(beir["corpus"]), "--queries", str(beir["queries"]),
            "--qrels", str(beir["qrels"]), "--mode", mode, "--store", str(tmp_path / "store"), "--json",
            "--set", f"embedding.model={minilm_path}", "--out", str(tmp_path / "out")]
    result = run_json(capsys, *argv)
    metrics = result["metrics"]
    assert set(metrics) == {"ndcg@10", "recall@1", "recall@5", "recall@10", "recall@100", "mrr@10", "map@100"}
    assert result["queries"] == 3  # q4 has no judgements
    assert metrics["recall@5"] == 1.0 and metrics["mrr@10"] == 1.0  # each query's document is found first
    assert metrics["ndcg@10"] == pytest.approx(1.0)
    assert {"p50", "p95"} == result["latency_ms"].keys()
    assert result["config"]["retrieval"]["mode"] == "hybrid"  # the effective config, the CLI mode beside it
    assert result["mode"] == mode
    per_query = [json.loads(line) for line in (tmp_path / "out" / "per_query.jsonl").read_text().splitlines()]
    assert [row["query_id"] for row in per_query] == ["q1", "q2", "q3"]
    assert (tmp_path / "out" / "report.md").read_text().startswith("# retrieval evaluation")
    assert (tmp_path / "out" / "config.yaml").exists()
    # The second evaluation of the same corpus embeds nothing.
    again = run_json(capsys, *argv)
    assert again["ingest"]["chunks_embedded"] == 0 and again["ingest"]["unchanged"] == len(CORPUS)
    assert again["metrics"] == metrics


def test_eval_store_is_kept_apart_from_user_documents(beir, tmp_path, minilm_path, capsys):
    store = str(tmp_path / "store")
    run_json(capsys, "eval", "retrieval", "--corpus", str(beir["corpus"]), "--queries", str(beir["queries"]),
             "--qrels", str(beir["qrels"]), "--store", store, "--json", "--set", f"embedding.model={minilm_path}")
    assert main(["info", "--json", "--store", store, "--set", f"embedding.model={minilm_path}"]) == 0
    assert json.loads(capsys.readouterr().out)["chunks"] == 0


SQUAD = {
    "version": "1.1",
    "data": [
        {"title": "Moon", "paragraphs": [
            {"context": "The Moon orbits the Earth once every 27.3 days. It is the fifth largest moon in the Solar System.",
             "qas": [{"id": "m1", "question": "How long does the Moon take to orbit the Earth?",
                      "answers": [{"text": "27.3 days", "answer_start": 37}]}]},
            {"context": "The first crewed landing on the Moon was Apollo 11 in 1969.",
             "qas": [{"id": "m2", "question": "Which mission first landed people on the Moon?",
                      "answers": [{"text": "Apollo 11", "answer_start": 41}, {"text": "Apollo 11 in 1969", "answer_start": 41}]}]},
        ]},
        {"title": "Coffee", "paragraphs": [
            {"context": "Coffee is brewed from roasted beans of the Coffea plant, first cultivated in Yemen.",
             "qas": [{"id": "c1", "question": "Where was coffee first cultivated?",
                      "answers": [{"text": "Yemen", "answer_start": 77}]}]},
        ]},
    ],
}


def test_eval_qa(tmp_path, minilm_path, capsys):
    squad = tmp_path / "squad.json"
    squad.write_text(json.dumps(SQUAD))
    common = ["--store", str(tmp_path / "store"), "--json", "--set", f"embedding.model={minilm_path}"]
    result = run_json(capsys, "eval", "qa", "--squad", str(squad), "-k", "5", *common)
    assert result["questions"] == 3
    metrics = result["metrics"]
    assert metrics["answer_recall@1"] == 1.0 and metrics["answer_recall@5"] == 1.0
    assert metrics["paragraph_coverage@1"] == pytest.approx(1.0)

    model = build_tiny_causal_lm(tmp_path / "tiny", chat_template=True)
    generated = run_json(capsys, "eval", "qa", "--squad", str(squad), "--generate", "--limit", "2", *common,
                         "--set", f"generation.model={model}", "--set", "generation.max_new_tokens=4",
                         "--set", "generation.context_window=2048")
    assert generated["questions"] == 2
    assert 0.0 <= generated["metrics"]["exact_match"] <= generated["metrics"]["f1"] <= 1.0
    assert generated["answer_latency_ms"]["p50"] > 0
    assert generated["ingest"]["chunks_embedded"] == 0

    # The same questions answered from the gold paragraph alone, and from nothing (closed book).
    for context in ("gold", "none"):
        out = tmp_path / f"out-{context}"
        run_json(capsys, "eval", "qa", "--squad", str(squad), "--generate", "--limit", "2", "--context", context,
                 "--out", str(out), *common, "--set", f"generation.model={model}",
                 "--set", "generation.max_new_tokens=4", "--set", "generation.context_window=2048",
                 "--set", "prompt.template=qa", "--set", "prompt.evidence=chunks")
        metrics = json.loads((out / "metrics.json").read_text())
        assert metrics["context"] == context and metrics["questions"] == 2
    rows = [json.loads(line) for line in (tmp_path / "out-gold" / "per_query.jsonl").read_text().splitlines()]
    assert all(r["prompt_has_gold"] for r in rows)
    rows = [json.loads(line) for line in (tmp_path / "out-none" / "per_query.jsonl").read_text().splitlines()]
    assert not any(r["prompt_has_gold"] for r in rows)


def test_eval_bad_dataset_is_one_line(tmp_path, minilm_path, capsys):
    bad = tmp_path / "qrels.tsv"
    bad.write_text("q1\td1\tlots\n")
    corpus = tmp_path / "c.jsonl"
    corpus.write_text('{"_id": "d1", "text": "x"}\n')
    queries = tmp_path / "q.jsonl"
    queries.write_text('{"_id": "q1", "text": "x"}\n')
    code = main(["eval", "retrieval", "--corpus", str(corpus), "--queries", str(queries), "--qrels", str(bad),
                 "--store", str(tmp_path / "s"), "--set", f"embedding.model={minilm_path}"])
    err = capsys.readouterr().err
    assert code == 2 and "qrels.tsv" in err and err.count("\n") == 1
