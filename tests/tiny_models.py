"""Tiny random-weight models built on the spot, so generator tests never touch the network.

The causal LM has the shape of Qwen2 (the default generator's family), with two layers of 64 units,
so it builds, loads and generates in well under a second.

Its tokenizer is a byte-level BPE trained here, with the ``tokenizers`` library, on a few
paragraphs of English, and saved as a ``Qwen2Tokenizer`` with Qwen's special tokens
(``<|endoftext|>``, ``<|im_start|>``, ``<|im_end|>``). Why not reuse the packaged MiniLM WordPiece
tokenizer: transformers 5 always loads a ``qwen2`` model folder's tokenizer as ``Qwen2Tokenizer``
(it distrusts the ``tokenizer_class`` saved beside Qwen2 models), which would rebuild a WordPiece
vocabulary as byte-level BPE and decode garbage. A byte-level BPE also behaves like the real
generator's tokenizer (exact round trips, multi-byte characters split across tokens).
"""

from __future__ import annotations

import json
from pathlib import Path

ENDOFTEXT = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"

# Qwen's ChatML turn format, system/user/assistant, with add_generation_prompt support.
TINY_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

_TRAINING_TEXT = """\
Retrieval-augmented generation answers a question from your own documents. A loader reads files
such as PDF, Word, HTML, Markdown and plain text; a chunker splits each document into passages of a
few hundred tokens, keeping the character offsets of every chunk. An embedding model turns each
chunk into a vector, and the vectors are stored in a Chroma collection on disk.
When a question arrives, the retriever embeds it, finds the nearest chunks, and may fuse them with a
lexical BM25 ranking. The prompt builder numbers the chosen chunks as sources [1], [2], [3] and asks
the model to cite them. The generator, a small local language model, writes the answer token by
token, and the answer keeps its citations, the prompt, the timings and the token usage.
What is the capital of France? Paris is the capital of France. Who wrote Hamlet? William
Shakespeare wrote Hamlet around 1600. The quick brown fox jumps over the lazy dog, 0123456789.
"""


def _train_bpe(vocab_size: int = 600) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Vocabulary and merges of a byte-level BPE trained on ``_TRAINING_TEXT`` (deterministic)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[ENDOFTEXT, IM_START, IM_END],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_TRAINING_TEXT.splitlines(), trainer=trainer)
    data = json.loads(tokenizer.to_str())
    merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in data["model"]["merges"]]
    return data["model"]["vocab"], merges


def build_tiny_causal_lm(folder: Path, *, chat_template: bool) -> Path:
    """Save a tiny random Qwen2-shaped causal LM and its tokenizer into ``folder`` and return it.

    With ``chat_template=True`` the tokenizer carries a ChatML template and ends turns with
    ``<|im_end|>`` (its end-of-sequence token, as in Qwen instruct models); without, the saved
    tokenizer has no chat template at all and ``<|endoftext|>`` ends sequences, so the generator's
    plain-text prompt format is exercised.
    """
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM
    from transformers.models.qwen2.tokenization_qwen2 import Qwen2Tokenizer

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)

    vocab, merges = _train_bpe()
    tokenizer = Qwen2Tokenizer(
        vocab=vocab,
        merges=merges,
        unk_token=ENDOFTEXT,
        eos_token=IM_END if chat_template else ENDOFTEXT,
        pad_token=ENDOFTEXT,
        additional_special_tokens=[IM_START, IM_END],
        model_max_length=4096,
    )
    tokenizer.chat_template = TINY_CHAT_TEMPLATE if chat_template else None

    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        # Untied: with tied embeddings a random model mostly echoes its last input token.
        tie_word_embeddings=False,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(1234)
    model = Qwen2ForCausalLM(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(str(folder), safe_serialization=True)
    tokenizer.save_pretrained(str(folder))

    if not chat_template:
        # No chat template may survive in any of the files transformers reads.
        (folder / "chat_template.jinja").unlink(missing_ok=True)
        (folder / "chat_template.json").unlink(missing_ok=True)
        config_file = folder / "tokenizer_config.json"
        data = json.loads(config_file.read_text(encoding="utf-8"))
        if data.pop("chat_template", None) is not None:
            config_file.write_text(json.dumps(data, indent=2), encoding="utf-8")
    return folder
