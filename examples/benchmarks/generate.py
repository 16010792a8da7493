"""Time to first token and tokens/s of ``Pipeline.stream()`` against bare ``model.generate``.

Full-size run (from the repository root; about 10 minutes on a 2-core CPU machine, 2 GB of RAM
and 2 GB of temporary disk for the random model):

    python examples/benchmarks/generate.py --prompts 10 --max-new-tokens 64

Smoke test (a minute):

    python examples/benchmarks/generate.py --layers 2 --prompts 2 --max-new-tokens 8

Without ``--model``, a random-weight model in the shape of Qwen2.5-0.5B (Qwen2Config: hidden 896,
intermediate 4864, 24 layers, 14 heads, 2 key/value heads, vocabulary 151936, 32768 positions,
rope_theta 1e6, tied embeddings) is built and saved in a temporary folder, with a byte-level BPE
tokenizer made here that covers the whole vocabulary (so every token the random model emits decodes to
text and streams) and a ChatML chat template like Qwen's. ``--model FOLDER`` uses a saved model instead.

A tiny store is built from the sample documents (``--docs``); the pipeline answers with k=3
retrieved chunks. For each question a first, untimed ``Pipeline.ask`` gives the formatted prompt
(``Answer.prompt``, which doubles as warm-up); then the pipeline's ``stream()`` and a bare
``model.generate`` with a ``TextIteratorStreamer`` on that same prompt run one after the other, the
order alternating between questions: greedy, the same ``max_new_tokens``, the same model object.

Reported (medians): time to first streamed text piece, for the pipeline both generation-only
(``Answer.timings["first_token"]``) and end to end (retrieval and prompt packing included); tokens/s
over the tokens actually generated (the pipeline cannot force ``min_new_tokens``, so an end-of-sequence
token may end a completion early: the counts are shown), overall and after the first token.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")

REPO = Path(__file__).resolve().parents[2]
ENDOFTEXT, IM_START, IM_END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
CHATML = (
    "{% if messages[0]['role'] != 'system' %}"
    "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
    "{% endif %}"
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
QUESTIONS = [
    "How many days of paid holiday do full-time employees get?",
    "What does fault code E07 on the inverter mean?",
    "What is the hotel limit per night in London?",
    "How long do I have to submit an expense report?",
    "What should I do on my first day?",
    "How do I reset the solar inverter?",
    "Can I book business class for long flights?",
    "Where can I find the office Wi-Fi password?",
    "Who approves travel expenses?",
    "What is the warranty period of the inverter?",
]
QWEN_SHAPE = dict(
    hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
    num_key_value_heads=2, vocab_size=151936, max_position_embeddings=32768, rope_theta=1_000_000.0,
    tie_word_embeddings=True, rms_norm_eps=1e-6, hidden_act="silu",
)


# -- a random model in the default generator's shape ---------------------------------------------


def build_tokenizer(corpus: list[str], vocab_size: int):
    """A byte-level BPE trained on ``corpus``, then grown to exactly ``vocab_size`` tokens with extra
    merges that append a letter to word-initial tokens (``Ġab`` + ``c``), so any id decodes to text."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers.models.qwen2.tokenization_qwen2 import Qwen2Tokenizer

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=min(vocab_size, 8000), special_tokens=[ENDOFTEXT, IM_START, IM_END],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    bpe.train_from_iterator(corpus, trainer=trainer)
    model = json.loads(bpe.to_str())["model"]
    vocab: dict[str, int] = dict(model["vocab"])
    merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in model["merges"]]

    letters = "abcdefghijklmnopqrstuvwxyz"
    frontier = sorted((t for t in vocab if t.startswith("\u0120")), key=vocab.__getitem__)
    while len(vocab) < vocab_size and frontier:
        grown = []
        for token in frontier:
            for letter in letters:
                if len(vocab) >= vocab_size:
                    break
                new = token + letter
                if new not in vocab:
                    vocab[new] = len(vocab)
                    merges.append((token, letter))
                    grown.append(new)
        frontier = grown
    tokenizer = Qwen2Tokenizer(vocab=vocab, merges=merges, unk_token=ENDOFTEXT,
                               eos_token=IM_END, pad_token=ENDOFTEXT,
                               additional_special_tokens=[IM_START, IM_END], model_max_length=32768)
    tokenizer.chat_template = CHATML
    return tokenizer


def build_random_model(folder: Path, docs: Path, layers: int) -> dict:
    import torch
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    corpus = [p.read_text(encoding="utf-8", errors="replace") for p in sorted(docs.rglob("*")) if p.is_file()]
    corpus += QUESTIONS
    tokenizer = build_tokenizer(corpus, QWEN_SHAPE["vocab_size"])
    shape = {**QWEN_SHAPE, "num_hidden_layers": layers}
    config = Qwen2Config(**shape, bos_token_id=None, eos_token_id=tokenizer.convert_tokens_to_ids(IM_END),
                         pad_token_id=tokenizer.convert_tokens_to_ids(ENDOFTEXT))
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config)
    model.generation_config = GenerationConfig(eos_token_id=config.eos_token_id, pad_token_id=config.pad_token_id,
                                               do_sample=False)
    model.save_pretrained(str(folder), safe_serialization=True)
    tokenizer.save_pretrained(str(folder))
    parameters = sum(p.numel() for p in model.parameters())
    del model
    return {"parameters": parameters, "layers": layers, "tokenizer_size": len(tokenizer), **shape}


# -- the two contenders ----------------------------------------------------------------------------


def run_pipeline(pipeline, question: str) -> dict:
    from rag.types import Answer

    first = None
    answer = None
    start = time.perf_counter()
    for piece in pipeline.stream(question):
        if isinstance(piece, Answer):
            answer = piece
        elif piece and first is None:
            first = time.perf_counter() - start
    total = time.perf_counter() - start
    timings, usage = answer.timings, answer.usage
    tokens = int(usage.get("completion_tokens", 0))
    return {
        "ttft_s": timings["first_token"], "ttft_e2e_s": first if first is not None else total,
        "generation_s": timings["generation"], "total_s": total,
        "retrieval_s": timings.get("retrieval", 0.0), "prompt_s": timings.get("prompt", 0.0),
        "completion_tokens": tokens, "prompt_tokens": int(usage.get("prompt_tokens", 0)),
        "tokens_per_s": tokens / timings["generation"],
        "tokens_per_s_e2e": tokens / total,
        "decode_tokens_per_s": (tokens - 1) / (timings["generation"] - timings["first_token"]) if tokens > 1 else 0.0,
        "prompt": answer.prompt,
    }


def run_bare(model, tokenizer, prompt: str, max_new_tokens: int, add_special_tokens: bool) -> dict:
    import torch
    from transformers import TextIteratorStreamer

    encoded = tokenizer(prompt, add_special_tokens=add_special_tokens, return_tensors="pt").to(model.device)
    prompt_len = encoded["input_ids"].shape[1]
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True,
                                    clean_up_tokenization_spaces=False)
    out: dict = {}

    def work() -> None:
        with torch.inference_mode():
            out["ids"] = model.generate(**encoded, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                                        pad_token_id=tokenizer.pad_token_id, streamer=streamer)

    first = None
    start = time.perf_counter()
    worker = threading.Thread(target=work, daemon=True)
    worker.start()
    for piece in streamer:
        if piece and first is None:
            first = time.perf_counter() - start
    worker.join()
    total = time.perf_counter() - start
    tokens = int(out["ids"].shape[1] - prompt_len)
    first = first if first is not None else total
    return {
        "ttft_s": first, "generation_s": total, "completion_tokens": tokens, "prompt_tokens": prompt_len,
        "tokens_per_s": tokens / total,
        "decode_tokens_per_s": (tokens - 1) / (total - first) if tokens > 1 and total > first else 0.0,
    }


def median(rows: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in rows)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None,
                        help="a saved causal LM folder (default: build a random Qwen2.5-0.5B-shaped one)")
    parser.add_argument("--layers", type=int, default=QWEN_SHAPE["num_hidden_layers"],
                        help="layers of the random model (24, as Qwen2.5-0.5B; fewer for smoke tests)")
    parser.add_argument("--docs", default=str(REPO / "examples" / "sample_docs"), help="documents for the tiny store")
    parser.add_argument("--prompts", type=int, default=10, help="questions, each timed once per contender (10)")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("-k", type=int, default=3, help="retrieved chunks per question (3)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (torch's default)")
    parser.add_argument("--tmp", default=None, help="where the random model and the store go")
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    return parser.parse_args()


def model_to_time(args: argparse.Namespace, tmp: Path, docs: Path) -> tuple[Path, dict | None]:
    """``--model``'s folder, or a random model built in ``tmp`` and what was built."""
    if args.model:
        return Path(args.model), None
    model_folder = tmp / "model"
    print(f"building a random Qwen2.5-0.5B-shaped model ({args.layers} layers) in {model_folder}",
          file=sys.stderr, flush=True)
    clock = time.perf_counter()
    built = build_random_model(model_folder, docs, args.layers)
    built["build_s"] = time.perf_counter() - clock
    return model_folder, built


def interleaved_runs(pipeline, questions: list[str], prompts: list[str], max_new_tokens: int):
    """Each question through the pipeline and bare, the order alternating; the rows and the prompt mismatches."""
    generator = pipeline.generator
    model, tokenizer = generator.model, generator.tokenizer
    add_special = not generator.uses_chat_template
    run_bare(model, tokenizer, prompts[0], max_new_tokens, add_special)  # warm-up of the bare path

    rows_pipeline, rows_bare, mismatches = [], [], 0
    for i, (question, prompt) in enumerate(zip(questions, prompts, strict=True)):
        order = ("pipeline", "bare") if i % 2 == 0 else ("bare", "pipeline")
        for who in order:
            if who == "pipeline":
                row = run_pipeline(pipeline, question)
                mismatches += row.pop("prompt") != prompt
                rows_pipeline.append(row)
            else:
                rows_bare.append(run_bare(model, tokenizer, prompt, max_new_tokens, add_special))
        print(f"prompt {i + 1}/{len(questions)}: pipeline TTFT {rows_pipeline[-1]['ttft_s'] * 1000:.0f} ms, "
              f"bare {rows_bare[-1]['ttft_s'] * 1000:.0f} ms", file=sys.stderr, flush=True)
    return rows_pipeline, rows_bare, mismatches


def pipeline_over_bare(p: dict, b: dict) -> dict:
    """The pipeline's medians over bare's."""
    return {
        "ttft_generation_only": p["ttft_s"] / b["ttft_s"],
        "ttft_end_to_end": p["ttft_e2e_s"] / b["ttft_s"],
        "tokens_per_s_generation_only": p["tokens_per_s"] / b["tokens_per_s"],
        "tokens_per_s_end_to_end": p["tokens_per_s_e2e"] / b["tokens_per_s"],
        "decode_tokens_per_s": (p["decode_tokens_per_s"] / b["decode_tokens_per_s"]
                                if b["decode_tokens_per_s"] else None),
    }


def print_report(args: argparse.Namespace, built: dict | None, data: dict) -> None:
    p, b = data["summary"]["pipeline"], data["summary"]["bare"]
    ratios, cold_s, mismatches = data["ratios"], data["cold_first_ask_s"], data["prompt_mismatches"]
    what = (args.model
            or f"random Qwen2.5-0.5B-shaped model, {args.layers} layers, {built['parameters'] / 1e6:.0f}M parameters")
    print(f"model: {what}; {args.prompts} prompts, max_new_tokens {args.max_new_tokens}, k={args.k} (medians)")
    header = (f"{'contender':<10} {'TTFT ms':>8} {'TTFT e2e ms':>12} {'tokens/s':>9} {'tok/s e2e':>10} "
              f"{'decode tok/s':>13} {'prompt tok':>11} {'completion':>11}")
    print(header)
    print("-" * len(header))
    print(f"{'pipeline':<10} {p['ttft_s'] * 1000:>8.0f} {p['ttft_e2e_s'] * 1000:>12.0f} {p['tokens_per_s']:>9.2f} "
          f"{p['tokens_per_s_e2e']:>10.2f} {p['decode_tokens_per_s']:>13.2f} {p['prompt_tokens']:>11.0f} "
          f"{p['completion_tokens']:>11.0f}")
    print(f"{'bare':<10} {b['ttft_s'] * 1000:>8.0f} {b['ttft_s'] * 1000:>12.0f} {b['tokens_per_s']:>9.2f} "
          f"{b['tokens_per_s']:>10.2f} {b['decode_tokens_per_s']:>13.2f} {b['prompt_tokens']:>11.0f} "
          f"{b['completion_tokens']:>11.0f}")
    print(f"pipeline/bare: TTFT {ratios['ttft_generation_only']:.3f}x generation-only, "
          f"{ratios['ttft_end_to_end']:.3f}x end to end; tokens/s {ratios['tokens_per_s_generation_only']:.3f}x "
          f"generation-only, {ratios['tokens_per_s_end_to_end']:.3f}x end to end"
          + (f", decode {ratios['decode_tokens_per_s']:.3f}x" if ratios["decode_tokens_per_s"] else ""))
    print(f"pipeline extras (median): retrieval {p['retrieval_s'] * 1000:.0f} ms, prompt packing "
          f"{p['prompt_s'] * 1000:.0f} ms; cold first ask {cold_s:.1f} s")
    if mismatches:
        print(f"WARNING: {mismatches} pipeline runs built a different prompt from the one the bare runs used")
    print("note: TTFT is the first non-empty streamed text piece (TextIteratorStreamer on both sides); "
          "tokens/s counts the tokens actually generated")


def main() -> None:
    args = parse_args()

    import torch

    from rag.config import load_settings
    from rag.pipeline import Pipeline

    if args.threads:
        torch.set_num_threads(args.threads)
    docs = Path(args.docs)
    if not docs.is_dir():
        raise SystemExit(f"--docs: {docs} is not a folder")
    tmp = Path(tempfile.mkdtemp(prefix="rag-bench-generate-", dir=args.tmp))
    try:
        model_folder, built = model_to_time(args, tmp, docs)
        settings = load_settings(None, {
            "store.path": str(tmp / "store"), "retrieval.k": args.k, "generation.model": str(model_folder),
            "generation.max_new_tokens": args.max_new_tokens, "generation.temperature": 0.0,
            "generation.device": args.device,
        })
        pipeline = Pipeline(settings, progress=False)
        report = pipeline.ingest([docs])
        print(f"store: {report.summary()}", file=sys.stderr, flush=True)

        questions = [QUESTIONS[i % len(QUESTIONS)] for i in range(args.prompts)]
        clock = time.perf_counter()
        prompts = [pipeline.ask(questions[0]).prompt]
        cold_s = time.perf_counter() - clock  # loads the generator and the embedder's weights
        prompts += [pipeline.ask(q).prompt for q in questions[1:]]
        model = pipeline.generator.model
        rows_pipeline, rows_bare, mismatches = interleaved_runs(pipeline, questions, prompts, args.max_new_tokens)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    summary = {
        "pipeline": {key: median(rows_pipeline, key) for key in rows_pipeline[0]},
        "bare": {key: median(rows_bare, key) for key in rows_bare[0]},
    }
    data = {
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__,
                    "torch_threads": torch.get_num_threads(), "device": str(model.device), "dtype": str(model.dtype)},
        "model": str(args.model) if args.model else {"random": True, **built},
        "prompts": args.prompts, "max_new_tokens": args.max_new_tokens, "k": args.k,
        "cold_first_ask_s": cold_s,
        "prompt_mismatches": mismatches,
        "summary": summary, "ratios": pipeline_over_bare(summary["pipeline"], summary["bare"]),
        "runs": {"pipeline": rows_pipeline, "bare": rows_bare},
    }
    if args.json:
        print(json.dumps(data, indent=2))
        return
    print_report(args, built, data)


if __name__ == "__main__":
    main()
