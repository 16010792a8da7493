"""Speed and fidelity of `embedding.quantize: int8` (dynamic int8 on the CPU) against float32.

Encodes the same texts with both, alternating rounds, and reports texts/s for each, the speed-up, and
the cosine between each text's int8 and float32 vectors. Its effect on retrieval quality is measured
with `rag eval retrieval --set embedding.quantize=int8` (see the README's Performance section).

    python examples/benchmarks/quantize.py ../shared/data/scifact/corpus.jsonl --texts 1000 --rounds 2
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
    embedders = {name: Embedder(args.model, device="cpu", quantize=name) for name in ("none", "int8")}
    for embedder in embedders.values():
        embedder.embed_documents(texts[:8])  # load and warm up outside the clock
    seconds: dict[str, list[float]] = {name: [] for name in embedders}
    vectors: dict[str, np.ndarray] = {}
    for round_ in range(args.rounds):
        for name in (("none", "int8") if round_ % 2 == 0 else ("int8", "none")):
            started = time.perf_counter()
            vectors[name] = embedders[name].embed_documents(texts)
            seconds[name].append(time.perf_counter() - started)
    cosine = (vectors["none"] * vectors["int8"]).sum(axis=1)
    best = {name: min(values) for name, values in seconds.items()}
    print(json.dumps({
        "texts": len(texts),
        "texts_per_s": {"float32": len(texts) / best["none"], "int8": len(texts) / best["int8"]},
        "speedup": best["none"] / best["int8"],
        "cosine_int8_vs_float32": {"mean": float(cosine.mean()), "min": float(cosine.min()),
                                   "p5": float(np.percentile(cosine, 5))},
    }, indent=2))


if __name__ == "__main__":
    main()
