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
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

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


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder")
    parser.add_argument("--dtype", default="bfloat16", choices=("float32", "bfloat16"))
    parser.add_argument("--step", type=int, default=3, help="use every N-th chunk by length (3)")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--json", action="store_true")
    return parser.parse_args()


def sampled_token_ids(tokenizer, folder: str, step: int) -> list[list[int]]:
    """Every ``step``-th of the folder's chunks by length, tokenized, in corpus order."""
    texts = corpus_chunks(folder)
    encoded_all = tokenizer(texts, truncation=True, max_length=256)["input_ids"]
    by_length = sorted(range(len(texts)), key=lambda i: -len(encoded_all[i]))
    picked = sorted(by_length[::step])  # back in corpus order: write1024 sorts runs of it
    return [encoded_all[i] for i in picked]


def counted(order: list[int], size: int) -> list[list[int]]:
    return [order[b : b + size] for b in range(0, len(order), size)]


def by_tokens(longest_first: list[int], lengths: list[int], budget: int) -> list[list[int]]:
    batches, begin = [], 0
    while begin < len(longest_first):
        count = max(1, min(32, budget // lengths[longest_first[begin]]))
        batches.append(longest_first[begin : begin + count])
        begin += count
    return batches


def write_runs(lengths: list[int]) -> list[list[int]]:
    batches = []
    for run in counted(list(range(len(lengths))), 1024):
        batches += counted(sorted(run, key=lambda i: -lengths[i]), 32)
    return batches


def batch_plans(variants: list[str], lengths: list[int], longest_first: list[int]) -> dict[str, list[list[int]]]:
    """The padded variants' batches (texts by index); exits on a name that is no variant."""
    plans = {"count32": counted(longest_first, 32), "write1024": write_runs(lengths)}
    for name in variants:
        if name.startswith("tokens"):
            plans[name] = by_tokens(longest_first, lengths, int(name.removeprefix("tokens")))
    unknown = [v for v in variants if v not in plans and not v.startswith("packed")]
    if unknown:
        raise SystemExit(f"--variants: unknown {', '.join(unknown)}")
    return plans


class Encoder:
    """The sampled chunks' token ids and MiniLM, encoding them padded in given batches or packed."""

    def __init__(self, model, encoded: list[list[int]]):
        self.model, self.encoded = model, encoded
        self.lengths = [len(ids) for ids in encoded]
        self.longest_first = sorted(range(len(encoded)), key=lambda i: -self.lengths[i])
        self.hidden_size = model.config.hidden_size
        self.embeddings, self.layers = model.embeddings, model.encoder.layer
        self.heads = model.config.num_attention_heads
        self.head_size = self.hidden_size // self.heads

    def padded(self, batches: list[list[int]]) -> np.ndarray:
        import torch
        import torch.nn.functional as F

        model, encoded, lengths = self.model, self.encoded, self.lengths
        out = np.empty((len(encoded), self.hidden_size), np.float32)
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

    def packed_batch(self, seqs: list[list[int]]) -> torch.Tensor:
        import torch
        import torch.nn.functional as F

        embeddings, layers = self.embeddings, self.layers
        hidden_size, heads, head_size = self.hidden_size, self.heads, self.head_size
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

    def packed(self, budget: int) -> np.ndarray:
        import torch

        encoded, lengths, longest_first = self.encoded, self.lengths, self.longest_first
        out = np.empty((len(encoded), self.hidden_size), np.float32)
        with torch.inference_mode():
            begin = 0
            while begin < len(longest_first):
                end, tokens = begin, 0
                while end < len(longest_first) and (tokens + lengths[longest_first[end]] <= budget or end == begin):
                    tokens += lengths[longest_first[end]]
                    end += 1
                batch = longest_first[begin:end]
                out[batch] = self.packed_batch([encoded[i] for i in batch]).numpy()
                begin = end
        return out


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def timed_rounds(run: Callable[[str], np.ndarray], variants: list[str], rounds: int):
    """Each variant's wall seconds and busy cores per round, the variants in alternating order; its last vectors."""
    seconds: dict[str, list[float]] = {name: [] for name in variants}
    cores: dict[str, list[float]] = {name: [] for name in variants}
    vectors: dict[str, np.ndarray] = {}
    for round_ in range(rounds):
        for name in variants if round_ % 2 == 0 else variants[::-1]:
            started, cpu = time.perf_counter(), cpu_seconds()
            vectors[name] = run(name)
            seconds[name].append(time.perf_counter() - started)
            cores[name].append((cpu_seconds() - cpu) / seconds[name][-1])
        print(f"round {round_ + 1}: " + ", ".join(f"{n} {s[-1]:.2f} s" for n, s in seconds.items()),
              file=sys.stderr, flush=True)
    return seconds, cores, vectors


def print_table(result: dict) -> None:
    print(f"{result['chunks']} chunks, {result['tokens']} tokens, {result['dtype']}, {result['rounds']} rounds, "
          f"{result['torch_threads']} threads")
    print(f"{'variant':<12} {'padding':>8} {'best s':>8} {'median s':>9} {'speed best':>11} {'speed median':>13} "
          f"{'min cos':>8} {'cores':>6}")
    for name, row in result["variants"].items():
        print(f"{name:<12} {row['padding_pct']:>7.1f}% {row['best_s']:>8.2f} {row['median_s']:>9.2f} "
              f"{row['speed_vs_count32_best']:>10.3f}x {row['speed_vs_count32_median']:>12.3f}x "
              f"{row['min_cosine_to_count32']:>8.5f} {row['cores_busy']:>6.2f}")


def main() -> None:
    args = parse_args()

    import torch
    from transformers import AutoModel, AutoTokenizer

    from rag.hub import DEFAULT_EMBEDDING_MODEL, resolve_model_path

    path = resolve_model_path(DEFAULT_EMBEDDING_MODEL, "embedding.model")
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path, dtype=getattr(torch, args.dtype)).eval()
    encoder = Encoder(model, sampled_token_ids(tokenizer, args.folder, args.step))
    lengths = encoder.lengths
    variants = args.variants.split(",")
    plans = batch_plans(variants, lengths, encoder.longest_first)

    def run(name: str) -> np.ndarray:
        if name.startswith("packed"):
            return encoder.packed(int(name.removeprefix("packed")))
        return encoder.padded(plans[name])

    real = sum(lengths)
    padding = {name: sum(len(b) * max(lengths[i] for i in b) for b in plans[name]) / real - 1 for name in plans}
    for name in variants:
        if name.startswith("packed"):
            padding[name] = 0.0
    encoder.padded(plans["count32"][:3])  # warm-up
    seconds, cores, vectors = timed_rounds(run, variants, args.rounds)
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
    result = {"chunks": len(lengths), "tokens": real, "dtype": args.dtype, "rounds": args.rounds,
              "torch_threads": torch.get_num_threads(), "variants": rows}
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print_table(result)


if __name__ == "__main__":
    main()
