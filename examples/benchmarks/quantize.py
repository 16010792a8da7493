"""Speed and fidelity of the CPU speed-ups against float32: `embedding.quantize: int8` (dynamic int8)
and `embedding.dtype: bfloat16` (fast only on CPUs with AVX512-BF16 or AMX; emulated, and slower,
elsewhere).

Encodes the same texts with each, rotating the order from round to round, and reports texts/s, the
speed-up over float32, and the cosine between each text's vector and its float32 vector. The effect on
retrieval quality is measured with `rag eval retrieval --set embedding.quantize=int8` or
`--set embedding.dtype=bfloat16` (figures: docs/benchmarks.md).

    python examples/benchmarks/quantize.py ../shared/data/scifact/corpus.jsonl --texts 600 --rounds 2
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from rag import evaluation
from rag.embedding import DEFAULT_MODEL, Embedder

VARIANTS = {"float32": {}, "int8": {"quantize": "int8"}, "bfloat16": {"dtype": "bfloat16"}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("corpus", help="a BEIR corpus.jsonl whose texts are encoded")
    parser.add_argument("--texts", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--model", default=DEFAULT_MODEL)
    args = parser.parse_args()

    texts = []
    for _, title, text in evaluation.read_beir_corpus(args.corpus):
        texts.append(f"{title} {text}".strip())
        if len(texts) == args.texts:
            break
    embedders = {name: Embedder(args.model, device="cpu", **options) for name, options in VARIANTS.items()}
    for embedder in embedders.values():
        embedder.embed_documents(texts[:8])  # load and warm up outside the clock
    names = list(embedders)
    seconds: dict[str, list[float]] = {name: [] for name in names}
    vectors: dict[str, np.ndarray] = {}
    for round_ in range(args.rounds):
        for name in names[round_ % len(names):] + names[: round_ % len(names)]:
            started = time.perf_counter()
            vectors[name] = embedders[name].embed_documents(texts)
            seconds[name].append(time.perf_counter() - started)
    best = {name: min(values) for name, values in seconds.items()}
    report = {"texts": len(texts), "texts_per_s": {name: len(texts) / best[name] for name in names}}
    for name in names[1:]:
        cosine = (vectors["float32"] * vectors[name]).sum(axis=1)
        report[name] = {
            "speedup": best["float32"] / best[name],
            "cosine_to_float32": {"mean": float(cosine.mean()), "min": float(cosine.min()),
                                  "p5": float(np.percentile(cosine, 5))},
        }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
