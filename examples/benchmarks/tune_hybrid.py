"""Tune hybrid fusion on a BEIR dataset's training split (never on its test split).

Each query's dense and lexical candidates are fetched once through the real pipeline, then fused
offline under every setting of the grid (RRF k, weighted-sum weight, candidate depth), so the grid
costs seconds. Documents are ranked by their best chunk, as `rag eval retrieval` does.

    python examples/benchmarks/tune_hybrid.py ../shared/data/scifact/corpus.jsonl \
        ../shared/data/scifact/queries.train.jsonl ../shared/data/scifact/qrels/train.tsv --store /tmp/evals/store
"""

from __future__ import annotations

import argparse
import json

from rag import evaluation
from rag.evaluation.jobs import eval_pipeline
from rag.pipeline import Pipeline
from rag.retrieval import rrf, weighted


def documents_run(ranked: list[tuple[str, float]], corpus_id: dict[str, str], depth: int = 100) -> dict[str, float]:
    scores: dict[str, float] = {}
    for chunk_id, score in ranked:
        doc = corpus_id[chunk_id]
        scores[doc] = max(scores.get(doc, float("-inf")), score)
    return dict(sorted(scores.items(), key=lambda item: -item[1])[:depth])


def fetch_candidates(pipeline: Pipeline, corpus: str, queries_file: str, qrels_file: str, depth: int):
    """Each judged query's (dense, lexical) candidates, best first, from the collection `rag eval
    retrieval` built for ``corpus``; the chunk -> document map; the qrels."""
    pipeline = eval_pipeline(pipeline, corpus)
    queries = evaluation.read_beir_queries(queries_file)
    qrels = evaluation.read_qrels(qrels_file)
    lexical = pipeline.retriever("hybrid").lexical
    corpus_id = {i: str(m.get("corpus_id")) for i, m in pipeline.store.iter_metadata()}
    candidates = {}
    for query_id in (q for q in queries if q in qrels):
        text = queries[query_id]
        vector = pipeline.embedder.embed_queries([text])[0]
        dense = [(c.id, s) for c, s, _ in pipeline.store.query(vector, depth)]
        candidates[query_id] = (dense, lexical.search(text, depth))
    return candidates, corpus_id, qrels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("corpus")
    parser.add_argument("queries")
    parser.add_argument("qrels")
    parser.add_argument("--store", default=".rag")
    parser.add_argument("--set", dest="sets", action="append", default=[])
    parser.add_argument("--depth", type=int, default=200, help="candidates fetched from each retriever")
    args = parser.parse_args()

    pipeline = Pipeline.from_yaml(None, sets=args.sets, store={"path": args.store})
    candidates, corpus_id, qrels = fetch_candidates(pipeline, args.corpus, args.queries, args.qrels, args.depth)

    results = []
    for depth in (50, 100, 200):
        if depth > args.depth:
            continue
        for rrf_k in (5, 10, 20, 40, 60, 100):
            run = {q: documents_run(rrf({"dense": [i for i, _ in d[:depth]], "lexical": [i for i, _ in x[:depth]]},
                                        rrf_k), corpus_id)
                   for q, (d, x) in candidates.items()}
            results.append(({"fusion": "rrf", "rrf_k": rrf_k, "fetch_k": depth},
                            evaluation.retrieval_metrics(run, qrels)[0]))
        for weight in (0.3, 0.4, 0.5, 0.6, 0.7):
            run = {q: documents_run(weighted({"dense": dict(d[:depth]), "lexical": dict(x[:depth])},
                                             {"dense": weight, "lexical": 1 - weight}), corpus_id)
                   for q, (d, x) in candidates.items()}
            results.append(({"fusion": "weighted", "dense_weight": weight, "fetch_k": depth},
                            evaluation.retrieval_metrics(run, qrels)[0]))
    for name, index in (("dense", 0), ("lexical", 1)):
        run = {q: documents_run(c[index], corpus_id) for q, c in candidates.items()}
        results.append(({"mode": name}, evaluation.retrieval_metrics(run, qrels)[0]))
    results.sort(key=lambda item: -item[1]["ndcg@10"])
    for setting, metrics in results:
        print(f"{metrics['ndcg@10']:.4f}  recall@100 {metrics['recall@100']:.4f}  {json.dumps(setting)}")


if __name__ == "__main__":
    main()
