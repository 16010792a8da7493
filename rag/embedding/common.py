"""What both embedders share: instruction prefixes by model family, and how many tokens of text one
input may carry."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# Families that were trained with instruction prefixes; used when neither the config nor the model's
# own files give them. Matched against the lower-cased model name.
KNOWN_PREFIXES: tuple[tuple[str, str, str], ...] = (
    ("e5-", "query: ", "passage: "),
    ("bge-", "Represent this sentence for searching relevant passages: ", ""),
    ("nomic-embed", "search_query: ", "search_document: "),
)


def prefixes(model_name: str, prompts: Mapping[str, str], query: str | None, document: str | None) -> tuple[str, str]:
    """The (query, document) prefixes: the configured ones, else the model's own ``prompts``
    (config_sentence_transformers.json), else its family's (KNOWN_PREFIXES), else none."""
    auto_query = prompts.get("query", "")
    auto_document = prompts.get("document", prompts.get("passage", ""))
    if not prompts:
        name = model_name.lower()
        for family, family_query, family_document in KNOWN_PREFIXES:
            if family in name:
                auto_query, auto_document = family_query, family_document
                break
    return (auto_query if query is None else query, auto_document if document is None else document)


def content_tokens(tokenizer: Any, max_length: int, document_prefix: str) -> int:
    """The most text tokens one input can carry: ``max_length`` less the special tokens the tokenizer
    adds around a text ([CLS] and [SEP] for BERT) and the document prefix."""
    special = len(tokenizer("")["input_ids"])
    prefix = len(tokenizer(document_prefix, add_special_tokens=False)["input_ids"])
    return max_length - special - prefix
