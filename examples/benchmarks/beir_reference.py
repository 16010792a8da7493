"""Reference point for `rag eval retrieval`: the bare embedding model scored the way MTEB scores it.

Each document (title + " " + text) is encoded whole, truncated at the model's maximum sequence length,
with exact cosine search over all documents: no chunking, no store. Comparing its nDCG@10 with
`rag eval retrieval --mode dense` on the same split separates what the framework does (chunking,
best-chunk aggregation, approximate search) from what the split and the model do.

    python examples/benchmarks/beir_reference.py ../shared/data/scifact/corpus.jsonl \
        ../shared/data/scifact/queries.train.jsonl ../shared/data/scifact/qrels/train.tsv
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from rag import evaluation
from rag.embedding import DEFAULT_MODEL, Embedder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("corpus")
    parser.add_argument("queries")
    parser.add_argument("qrels")
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()

    started = time.perf_counter()
    ids, texts = [], []
    for doc_id, title, text in evaluation.read_beir_corpus(args.corpus):
        ids.append(doc_id)
        texts.append(f"{title} {text}".strip())
    queries = evaluation.read_beir_queries(args.queries)
    qrels = evaluation.read_qrels(args.qrels)
    judged = [q for q in queries if q in qrels]

    embedder = Embedder(args.model, device="cpu", batch_size=args.batch_size)  # truncates at max_length
    documents = embedder.embed_documents(texts)
    questions = embedder.embed_queries([queries[q] for q in judged])
    scores = questions @ documents.T
    run = {}
    for row, query_id in enumerate(judged):
        top = np.argsort(-scores[row])[:100]
        run[query_id] = {ids[i]: float(scores[row, i]) for i in top}
    means, _ = evaluation.retrieval_metrics(run, qrels)
    print(json.dumps({"model": args.model, "queries": len(judged), "documents": len(ids),
                      "metrics": means, "seconds": time.perf_counter() - started}, indent=2))


if __name__ == "__main__":
    main()
