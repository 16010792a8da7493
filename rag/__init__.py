"""rag: answers from your own documents with local models."""

from __future__ import annotations

from importlib.metadata import version
from typing import TYPE_CHECKING

from rag.errors import RagError
from rag.types import Answer, Chunk, Document, Hit

if TYPE_CHECKING:  # what type checkers see of the lazy attribute below
    from rag.pipeline import Pipeline

__all__ = ["Answer", "Chunk", "Document", "Hit", "Pipeline", "RagError"]
__version__ = version("rag")


def __getattr__(name: str) -> type[Pipeline]:
    # Pipeline pulls in torch and chromadb; keep `import rag` cheap until it is asked for.
    if name == "Pipeline":
        from rag.pipeline import Pipeline as loaded

        return loaded
    raise AttributeError(name)
