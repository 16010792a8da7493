"""`rag eval` end to end on tiny BEIR- and SQuAD-format datasets made here, through the real CLI path."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from tiny_models import build_tiny_causal_lm

from rag import evaluation
from rag.cli import main

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


def _retrieval_argv(beir, tmp_path, minilm_path, *extra: str) -> list[str]:
    return ["eval", "retrieval", "--corpus", str(beir["corpus"]), "--queries", str(beir["queries"]),
            "--qrels", str(beir["qrels"]), "--store", str(tmp_path / "store"), "--json",
            "--set", f"embedding.model={minilm_path}", *extra]


def test_eval_retrieval_report_compares_modes_in_pictures(beir, tmp_path, minilm_path, capsys):
    image = pytest.importorskip("matplotlib.image", reason="matplotlib (the map extra) is not installed")
    out = tmp_path / "out"
    result = run_json(capsys, *_retrieval_argv(beir, tmp_path, minilm_path, "--mode", "lexical", "--out", str(out)))
    assert set(result["modes"]) == {"dense", "lexical", "hybrid"}
    for metrics in result["modes"].values():
        assert metrics.keys() == result["metrics"].keys()
    assert result["modes"]["lexical"] == result["metrics"]
    # Each per-mode entry is what a run in that mode alone reports (the same ingest, no second embedding).
    for mode in ("dense", "hybrid"):
        alone = run_json(capsys, *_retrieval_argv(beir, tmp_path, minilm_path, "--mode", mode))
        assert "modes" not in alone and "pictures" not in alone  # without --out, one mode as before
        assert alone["metrics"] == result["modes"][mode]
    # Every mode finds each query's document first here, so fusion neither helps nor hurts.
    assert result["hybrid_vs_dense"] == {"metric": "ndcg@10", "better": 0, "worse": 0, "equal": 3}

    assert json.loads((out / "metrics.json").read_text())["modes"] == result["modes"]
    assert result["pictures"] == ["recall_at_k.png", "hybrid_vs_dense.png"]
    for name, (width, height) in {"recall_at_k.png": (800, 500), "hybrid_vs_dense.png": (1000, 450)}.items():
        pixels = image.imread(out / name)
        assert pixels.shape[:2] == (height, width)
        colours = {tuple(p) for p in pixels.reshape(-1, pixels.shape[-1])[::7].round(2).tolist()}
        assert len(colours) > 20, f"{name} looks blank"
    report = (out / "report.md").read_text()
    assert "](recall_at_k.png)" in report and "](hybrid_vs_dense.png)" in report
    assert "| ndcg@10 | 1.0000 | 1.0000 | 1.0000 |" in report
    assert "fusion helps 0 queries, hurts 0, leaves 3 equal" in report


def test_recall_curve_and_paired_outcomes_behind_the_pictures():
    qrels = {"q1": {"a": 1, "b": 1}, "q2": {"c": 2}}
    run = {"q1": {"a": 0.9, "x": 0.8, "b": 0.7}, "q2": {"y": 0.5, "c": 0.4}}
    assert evaluation.recall_curve(run, qrels, range(1, 5)) == [0.25, 0.75, 1.0, 1.0]
    means, dense = evaluation.retrieval_metrics(run, qrels, ks_recall=(1, 2, 3))
    assert evaluation.recall_curve(run, qrels, (1, 2, 3)) == [means[f"recall@{k}"] for k in (1, 2, 3)]
    _, hybrid = evaluation.retrieval_metrics({"q1": {"a": 0.9, "b": 0.8}, "q2": {"y": 0.5, "c": 0.4}}, qrels)
    assert evaluation.paired_outcomes(dense, hybrid, "ndcg@10") == {"better": 1, "worse": 0, "equal": 1}
    assert evaluation.paired_outcomes(hybrid, dense, "ndcg@10") == {"better": 0, "worse": 1, "equal": 1}


def test_eval_retrieval_report_without_matplotlib(beir, tmp_path, minilm_path, capsys, monkeypatch):
    # As if the map extra were not installed, even where another test imported matplotlib already.
    for name in ["matplotlib", *(n for n in list(sys.modules) if n.startswith("matplotlib."))]:
        monkeypatch.setitem(sys.modules, name, None)
    out = tmp_path / "out"
    assert main(_retrieval_argv(beir, tmp_path, minilm_path, "--out", str(out))) == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out)
    assert result["pictures"] == [] and set(result["modes"]) == {"dense", "lexical", "hybrid"}
    assert 'pip install -e ".[map]"' in captured.err
    assert not list(out.glob("*.png"))
    report = (out / "report.md").read_text()
    assert "## By mode" in report and 'pip install -e ".[map]"' in report and "![" not in report


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
            {"context": "The Moon orbits the Earth once every 27.3 days. "
                        "It is the fifth largest moon in the Solar System.",
             "qas": [{"id": "m1", "question": "How long does the Moon take to orbit the Earth?",
                      "answers": [{"text": "27.3 days", "answer_start": 37}]}]},
            {"context": "The first crewed landing on the Moon was Apollo 11 in 1969.",
             "qas": [{"id": "m2", "question": "Which mission first landed people on the Moon?",
                      "answers": [{"text": "Apollo 11", "answer_start": 41},
                                  {"text": "Apollo 11 in 1969", "answer_start": 41}]}]},
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
