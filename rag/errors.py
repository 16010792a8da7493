"""Errors a user can cause. Each message says what went wrong and what to do; the CLI prints it
as one line and exits non-zero."""

from __future__ import annotations


class RagError(Exception):
    """Base of every error the user can cause and fix."""


class ConfigError(RagError):
    """A bad config file, key or value."""


class LoadError(RagError):
    """A file that cannot be turned into documents (unreadable, empty, binary, corrupt)."""

    def __init__(self, path: object, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{path}: {reason}")


class ModelError(RagError):
    """A model that cannot be found or loaded."""


class StoreError(RagError):
    """A store that cannot be opened, or one built with a different embedding model."""


class PromptError(RagError):
    """A prompt template that cannot be read, parsed or rendered."""


class GenerationError(RagError):
    """Generation that cannot run (e.g. the prompt leaves no room for the answer)."""


class ModelServerError(RagError):
    """A model server (``generation.backend`` or ``embedding.backend``: openai) that cannot be reached,
    refuses the request, or answers in a way that cannot be read."""


class ModelServerTimeout(ModelServerError):
    """A model server that did not answer within its timeout."""
