"""Label-free fusion tuning (rag.tuning) against the truth, on a BEIR dataset (issue 27).

For one corpus whose collection `rag eval retrieval` built (run that first, with the same --store and
--set options), this prints side by side:

- what each candidate fusion scores on the real judged queries (nDCG@10, Recall@100), fused offline
  from each query's dense and lexical candidates, documents ranked by their best chunk, as
  `rag eval retrieval` ranks them; per-query weight variants too;
- what each candidate scores on questions made from the collection's own chunks (rag.tuning), and
  which one the tuner chooses from them.

    python examples/benchmarks/fusion_tuning.py ../shared/data/dbpedia-5k/corpus.jsonl \\
        ../shared/data/dbpedia-5k/queries.jsonl ../shared/data/dbpedia-5k/qrels/test.tsv --store /tmp/evals/store
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from tune_hybrid import documents_run, fetch_candidates  # the sibling benchmark, beside this script

from rag import evaluation, tuning
from rag.evaluation.jobs import eval_pipeline
from rag.pipeline import Pipeline
from rag.retrieval import fuse


def agreement_weight(dense, lexical, corpus_id, low: float, high: float, top: int = 10) -> float:
    """A per-query dense weight: ``low`` where the two retrievers' top documents agree, ``high`` where
    they are disjoint."""
    a = set(list(documents_run(dense, corpus_id))[:top])
    b = set(list(documents_run(lexical, corpus_id))[:top])
    return high - (high - low) * len(a & b) / max(1, len(a | b))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("corpus")
    parser.add_argument("queries")
    parser.add_argument("qrels")
    parser.add_argument("--store", default=".rag")
    parser.add_argument("--set", dest="sets", action="append", default=[])
    parser.add_argument("--depth", type=int, default=200, help="candidates from each retriever, as the evaluation")
    parser.add_argument("--questions", type=int, default=tuning.QUESTIONS)
    parser.add_argument("--pool", type=int, default=tuning.POOL)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--cache", metavar="FILE", help="keep the real queries' candidates in FILE and reuse them")
    args = parser.parse_args()

    pipeline = Pipeline.from_yaml(None, sets=args.sets, store={"path": args.store})
    if args.cache and Path(args.cache).exists():
        candidates, corpus_id, qrels = json.loads(Path(args.cache).read_text())
    else:
        candidates, corpus_id, qrels = fetch_candidates(pipeline, args.corpus, args.queries, args.qrels, args.depth)
        if args.cache:
            Path(args.cache).write_text(json.dumps([candidates, corpus_id, qrels]))

    def real(fused_per_query) -> dict[str, float]:
        run = {q: documents_run(fused_per_query(d, x), corpus_id) for q, (d, x) in candidates.items()}
        means = evaluation.retrieval_metrics(run, qrels)[0]
        return {"ndcg@10": round(means["ndcg@10"], 4), "recall@100": round(means["recall@100"], 4)}

    truth = {}
    for fusion, weight in (*tuning.CANDIDATES, ("rrf", 0.5)):
        name = f"{fusion} {weight:.1f}" if fusion == "weighted" else "rrf"
        truth[name] = real(lambda d, x, f=fusion, w=weight: fuse({"dense": d, "lexical": x}, f, w))
    for low, high in ((0.5, 0.9), (0.6, 1.0), (0.3, 0.9)):
        truth[f"agreement {low}..{high}"] = real(lambda d, x, lo=low, hi=high: fuse(
            {"dense": d, "lexical": x}, "weighted", agreement_weight(d, x, corpus_id, lo, hi)))

    made = []
    collection = eval_pipeline(pipeline, args.corpus)
    for seed in args.seeds:
        started = time.perf_counter()
        questions, document = tuning.pseudo_questions(collection, count=args.questions, pool=args.pool, seed=seed)
        per_question = tuning.score_candidates(questions, document)
        choice = tuning.choose_unlabelled(per_question)
        best = max(per_question, key=lambda c: float(per_question[c].mean()))
        errors = {}  # how many standard errors of the paired difference each candidate is below the best
        for candidate, scores in per_question.items():
            difference = per_question[best] - scores
            error = float(difference.std(ddof=1) / len(difference) ** 0.5) or 1e-9
            errors[f"{candidate[1]:.1f}"] = round(float(difference.mean()) / error, 2)
        made.append({"seed": seed, "questions": len(questions), "seconds": round(time.perf_counter() - started, 1),
                     "scores": {f"{w:.1f}": round(float(s.mean()), 4) for (_, w), s in per_question.items()},
                     "errors below the best": errors,
                     "choice": choice[1], "truth at choice": truth[f"weighted {choice[1]:.1f}"],
                     "example": [q.text for q in questions[:3]]})
    overlaps = [len(set(list(documents_run(d, corpus_id))[:10]) & set(list(documents_run(x, corpus_id))[:10]))
                / 10 for d, x in candidates.values()]
    print(json.dumps({"corpus": args.corpus, "queries": len(candidates), "truth": truth, "tuning": made,
                      "mean top-10 overlap": round(statistics.fmean(overlaps), 3)}, indent=1))


if __name__ == "__main__":
    main()
