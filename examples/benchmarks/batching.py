"""What padding and batch shape cost when encoding a corpus's chunks: the figures behind
``embedding.batch_tokens``.

    python examples/benchmarks/batching.py ../shared/data/docs-haystack --dtype bfloat16 --rounds 4

rag's own chunks of the folder's .md/.mdx/.txt files (every ``--step``-th of them by length, so the
length mix stays the corpus's) are tokenized once; then each variant encodes them with the packaged
MiniLM under ``torch.inference_mode``, mean-pooled and normalized, the variants interleaved in
alternating order round after round. Reported per variant: padded tokens over real tokens, the
fastest and the median round, the speed against ``count32``, the lowest cosine to its vectors, and
how many cores the process kept busy (its CPU seconds over wall seconds; torch's idle threads spin,
so this says how much CPU a writer beside the encoder could take without taking it from torch).

- ``count32``: the bare model of ``ingest.py``: globally length-sorted batches of 32 texts.
- ``write1024``: batches of 32, sorted only within runs of 1,024 chunks (how an ingest's write
  batches reach the embedder).
- ``tokensN``: globally sorted, each batch as many texts as fit N padded tokens (at most 32 texts
  of 256 tokens, so ``tokens8192`` is ``count32`` for the longest chunks).
- ``packedN``: no padding at all: each batch's tokens run through MiniLM's (BERT's) layers as one
  sequence of N tokens at most, attention computed per group of equal-length texts without a mask;
  written for this measurement only (it reaches into BERT's modules).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import resource
import statistics
import sys
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")

VARIANTS = ("count32", "write1024", "tokens2048", "tokens3072", "tokens4096", "packed3072")


def corpus_chunks(folder: str) -> list[str]:
    from rag.config import load_settings
    from rag.loaders import iter_files, load_file
    from rag.pipeline import Pipeline

    settings = load_settings(None, {"store.path": "/nonexistent-unused"})
    pipeline = Pipeline(settings, progress=False)
    texts = []
    for item in iter_files([folder], settings.loading.include, settings.loading.exclude):
        if isinstance(item, Path) and item.suffix.lower() in (".md", ".mdx", ".txt"):
            for document in load_file(item, json_text_field=settings.loading.json_text_field):
                texts.extend(pipeline.embedder.document_prefix + c.text for c in pipeline.chunker.split(document))
    return texts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder")
    parser.add_argument("--dtype", default="bfloat16", choices=("float32", "bfloat16"))
    parser.add_argument("--step", type=int, default=3, help="use every N-th chunk by length (3)")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    import torch
    import torch.nn.functional as F
    from transformers import AutoModel, AutoTokenizer

    from rag.embedding import DEFAULT_MODEL, resolve_model_path

    path = resolve_model_path(DEFAULT_MODEL)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path, dtype=getattr(torch, args.dtype)).eval()
    texts = corpus_chunks(args.folder)
    encoded_all = tokenizer(texts, truncation=True, max_length=256)["input_ids"]
    by_length = sorted(range(len(texts)), key=lambda i: -len(encoded_all[i]))
    picked = sorted(by_length[:: args.step])  # back in corpus order: write1024 sorts runs of it
    encoded = [encoded_all[i] for i in picked]
    lengths = [len(ids) for ids in encoded]
    longest_first = sorted(range(len(encoded)), key=lambda i: -lengths[i])
    hidden_size = model.config.hidden_size

    def counted(order: list[int], size: int) -> list[list[int]]:
        return [order[b : b + size] for b in range(0, len(order), size)]

    def by_tokens(budget: int) -> list[list[int]]:
        batches, begin = [], 0
        while begin < len(longest_first):
            count = max(1, min(32, budget // lengths[longest_first[begin]]))
            batches.append(longest_first[begin : begin + count])
            begin += count
        return batches

    def padded(batches: list[list[int]]) -> np.ndarray:
        out = np.empty((len(encoded), hidden_size), np.float32)
        with torch.inference_mode():
            for batch in batches:
                width = max(lengths[i] for i in batch)
                ids = np.zeros((len(batch), width), np.int64)
                mask = np.zeros((len(batch), width), np.int64)
                for row, i in enumerate(batch):
                    ids[row, : lengths[i]], mask[row, : lengths[i]] = encoded[i], 1
                mask_t = torch.from_numpy(mask)
                hidden = model(input_ids=torch.from_numpy(ids), attention_mask=mask_t).last_hidden_state
                weights = mask_t.unsqueeze(-1).to(hidden.dtype)
                pooled = ((hidden * weights).sum(1) / weights.sum(1)).float()
                out[batch] = F.normalize(pooled, dim=1).numpy()
        return out

    embeddings, layers = model.embeddings, model.encoder.layer
    heads = model.config.num_attention_heads
    head_size = hidden_size // heads

    def packed_batch(seqs: list[list[int]]) -> torch.Tensor:
        sizes = [len(s) for s in seqs]
        ids = torch.tensor([t for s in seqs for t in s])
        positions = torch.cat([torch.arange(n) for n in sizes])
        x = embeddings.LayerNorm(embeddings.word_embeddings(ids) + embeddings.position_embeddings(positions)
                                 + embeddings.token_type_embeddings.weight[0])
        groups, start = [], 0
        for size, run in itertools.groupby(sizes):
            count = len(list(run))
            groups.append((start, count, size))
            start += count * size
        for layer in layers:
            attention = layer.attention
            qkv = [linear(x) for linear in (attention.self.query, attention.self.key, attention.self.value)]
            context = torch.empty_like(qkv[0])
            for start, count, size in groups:
                end = start + count * size
                q, k, v = (t[start:end].view(count, size, heads, head_size).transpose(1, 2) for t in qkv)
                out = F.scaled_dot_product_attention(q, k, v)
                context[start:end] = out.transpose(1, 2).reshape(count * size, hidden_size)
            x = attention.output.LayerNorm(attention.output.dense(context) + x)
            inner = layer.intermediate.intermediate_act_fn(layer.intermediate.dense(x))
            x = layer.output.LayerNorm(layer.output.dense(inner) + x)
        segments = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
        sums = torch.zeros(len(sizes), hidden_size).index_add_(0, segments, x.float())
        return F.normalize(sums / torch.tensor(sizes, dtype=torch.float32)[:, None], dim=1)

    def packed(budget: int) -> np.ndarray:
        out = np.empty((len(encoded), hidden_size), np.float32)
        with torch.inference_mode():
            begin = 0
            while begin < len(longest_first):
                end, tokens = begin, 0
                while end < len(longest_first) and (tokens + lengths[longest_first[end]] <= budget or end == begin):
                    tokens += lengths[longest_first[end]]
                    end += 1
                batch = longest_first[begin:end]
                out[batch] = packed_batch([encoded[i] for i in batch]).numpy()
                begin = end
        return out

    def write_runs() -> list[list[int]]:
        batches = []
        for run in counted(list(range(len(encoded))), 1024):
            batches += counted(sorted(run, key=lambda i: -lengths[i]), 32)
        return batches

    plans = {"count32": counted(longest_first, 32), "write1024": write_runs()}
    for name in args.variants.split(","):
        if name.startswith("tokens"):
            plans[name] = by_tokens(int(name.removeprefix("tokens")))
    variants = args.variants.split(",")
    unknown = [v for v in variants if v not in plans and not v.startswith("packed")]
    if unknown:
        raise SystemExit(f"--variants: unknown {', '.join(unknown)}")

    def run(name: str) -> np.ndarray:
        return packed(int(name.removeprefix("packed"))) if name.startswith("packed") else padded(plans[name])

    real = sum(lengths)
    padding = {name: sum(len(b) * max(lengths[i] for i in b) for b in plans[name]) / real - 1 for name in plans}
    for name in variants:
        if name.startswith("packed"):
            padding[name] = 0.0
    padded(plans["count32"][:3])  # warm-up
    seconds: dict[str, list[float]] = {name: [] for name in variants}
    cores: dict[str, list[float]] = {name: [] for name in variants}

    def cpu_seconds() -> float:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime
    vectors: dict[str, np.ndarray] = {}
    for round_ in range(args.rounds):
        for name in variants if round_ % 2 == 0 else variants[::-1]:
            started, cpu = time.perf_counter(), cpu_seconds()
            vectors[name] = run(name)
            seconds[name].append(time.perf_counter() - started)
            cores[name].append((cpu_seconds() - cpu) / seconds[name][-1])
        print(f"round {round_ + 1}: " + ", ".join(f"{n} {s[-1]:.2f} s" for n, s in seconds.items()),
              file=sys.stderr, flush=True)
    reference = "count32" if "count32" in variants else variants[0]
    rows = {}
    for name in variants:
        rows[name] = {
            "padding_pct": 100 * padding[name],
            "best_s": min(seconds[name]),
            "median_s": statistics.median(seconds[name]),
            "speed_vs_count32_best": min(seconds[reference]) / min(seconds[name]),
            "speed_vs_count32_median": statistics.median(seconds[reference]) / statistics.median(seconds[name]),
            "min_cosine_to_count32": float((vectors[name] * vectors[reference]).sum(axis=1).min()),
            "cores_busy": statistics.median(cores[name]),
        }
    result = {"chunks": len(encoded), "tokens": real, "dtype": args.dtype, "rounds": args.rounds,
              "torch_threads": torch.get_num_threads(), "variants": rows}
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"{len(encoded)} chunks, {real} tokens, {args.dtype}, {args.rounds} rounds, {torch.get_num_threads()} threads")
    print(f"{'variant':<12} {'padding':>8} {'best s':>8} {'median s':>9} {'speed best':>11} {'speed median':>13} {'min cos':>8} {'cores':>6}")
    for name, row in rows.items():
        print(f"{name:<12} {row['padding_pct']:>7.1f}% {row['best_s']:>8.2f} {row['median_s']:>9.2f} "
              f"{row['speed_vs_count32_best']:>10.3f}x {row['speed_vs_count32_median']:>12.3f}x "
              f"{row['min_cosine_to_count32']:>8.5f} {row['cores_busy']:>6.2f}")


if __name__ == "__main__":
    main()
