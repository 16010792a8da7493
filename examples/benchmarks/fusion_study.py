"""Fusion variants side by side on a BEIR dataset, offline, for the adaptive-fusion work (issue 17).

Each query's dense and lexical candidates are fetched once through the real pipeline from the
collection `rag eval retrieval` built for the corpus (run that first, with the same --store), then
fused offline under each variant; documents are ranked by their best chunk, as `rag eval retrieval`
does. Variants: each retriever alone; min-max weighted sums at several dense weights (0.5 is the
default); RRF; z-score weighted sums; and two per-query weights that need no labels: from how
peaked each retriever's normalized scores are, and from how much their top-10 documents agree.

    python examples/benchmarks/fusion_study.py ../shared/data/dbpedia-5k/corpus.jsonl \
        ../shared/data/dbpedia-5k/queries.jsonl ../shared/data/dbpedia-5k/qrels/test.tsv --store /tmp/evals/store
"""

from __future__ import annotations

import argparse
import json
import statistics

from tune_hybrid import documents_run, fetch_candidates  # the sibling benchmark, beside this script

from rag import evaluation
from rag.pipeline import Pipeline
from rag.retrieval import rrf, weighted


def zscore(scores: dict[str, dict[str, float]], weights: dict[str, float]) -> list[tuple[str, float]]:
    """Weighted sum of z-scored scores; an id a retriever did not return gets that retriever's lowest."""
    ids = sorted({i for per in scores.values() for i in per})
    fused = dict.fromkeys(ids, 0.0)
    for name, per in scores.items():
        if len(per) < 2:
            continue
        mean, spread = statistics.fmean(per.values()), statistics.pstdev(per.values()) or 1.0
        low = min(per.values())
        for i in ids:
            fused[i] += weights[name] * (per.get(i, low) - mean) / spread
    return sorted(fused.items(), key=lambda item: (-item[1], item[0]))


def peakedness(ranked: list[tuple[str, float]], top: int = 10) -> float:
    """1 minus the mean min-max-normalized score of ranks 2..top: near 1 when the best stands out."""
    values = [s for _, s in ranked]
    if len(values) < 3:
        return 0.5
    low, high = min(values), max(values)
    if high <= low:
        return 0.0
    return 1.0 - statistics.fmean((v - low) / (high - low) for v in values[1:top])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("corpus")
    parser.add_argument("queries")
    parser.add_argument("qrels")
    parser.add_argument("--store", default=".rag")
    parser.add_argument("--depth", type=int, default=100, help="candidates from each retriever (fetch_k)")
    args = parser.parse_args()

    pipeline = Pipeline.from_yaml(None, store={"path": args.store})
    candidates, corpus_id, qrels = fetch_candidates(pipeline, args.corpus, args.queries, args.qrels, args.depth)

    def score(fuse) -> dict[str, float]:
        run = {q: documents_run(fuse(d, x), corpus_id) for q, (d, x) in candidates.items()}
        means = evaluation.retrieval_metrics(run, qrels)[0]
        return {"ndcg@10": round(means["ndcg@10"], 4), "recall@100": round(means["recall@100"], 4)}

    results = {"dense": score(lambda d, x: d), "lexical": score(lambda d, x: x)}
    for w in (0.5, 0.6, 0.7, 0.8):
        results[f"minmax w={w}"] = score(lambda d, x, w=w: weighted({"dense": dict(d), "lexical": dict(x)},
                                                                      {"dense": w, "lexical": 1 - w}))
        results[f"zscore w={w}"] = score(lambda d, x, w=w: zscore({"dense": dict(d), "lexical": dict(x)},
                                                                    {"dense": w, "lexical": 1 - w}))
    results["rrf k=60"] = score(lambda d, x: rrf({"dense": [i for i, _ in d], "lexical": [i for i, _ in x]}, 60))

    def peaked(d, x):
        pd, px = peakedness(d), peakedness(x)
        w = pd / (pd + px) if pd + px > 0 else 0.5
        return weighted({"dense": dict(d), "lexical": dict(x)}, {"dense": w, "lexical": 1 - w})

    results["minmax, per-query weight by peakedness"] = score(peaked)

    def agreeing(d, x, top=10, low=0.5, high=0.9):
        # Where the two retrievers' top documents differ, trust dense more; where they agree, fuse evenly.
        dense_top = set(list(documents_run(d, corpus_id))[:top])
        lexical_top = set(list(documents_run(x, corpus_id))[:top])
        overlap = len(dense_top & lexical_top) / max(1, len(dense_top | lexical_top))
        w = high - (high - low) * overlap
        return weighted({"dense": dict(d), "lexical": dict(x)}, {"dense": w, "lexical": 1 - w})

    results["minmax, per-query weight by agreement (0.5 agreeing .. 0.9 disjoint)"] = score(agreeing)
    overlaps = []
    for d, x in candidates.values():
        a, b = set(list(documents_run(d, corpus_id))[:10]), set(list(documents_run(x, corpus_id))[:10])
        overlaps.append(len(a & b) / max(1, len(a | b)))
    results["mean top-10 overlap (Jaccard)"] = round(statistics.fmean(overlaps), 3)
    print(json.dumps({"corpus": args.corpus, "queries": len(candidates), "depth": args.depth, "results": results},
                     indent=2))


if __name__ == "__main__":
    main()
