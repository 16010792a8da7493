"""rag: answers from your own documents with local models."""

from rag.errors import RagError
from rag.types import Answer, Chunk, Document, Hit

__all__ = ["Answer", "Chunk", "Document", "Hit", "Pipeline", "RagError"]
__version__ = "0.1.0"


def __getattr__(name: str):
    # Pipeline pulls in torch and chromadb; keep `import rag` cheap until it is asked for.
    if name == "Pipeline":
        from rag.pipeline import Pipeline

        return Pipeline
    raise AttributeError(name)
