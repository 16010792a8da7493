"""Where a model's files are: a local folder, the Hugging Face cache, or the Hub.

Shared by every stage that loads a model. A model already on disk is loaded from disk without any
network request; a model that must be downloaded fails fast with one clear line when the Hub cannot
be reached, instead of minutes of retries.
"""

from __future__ import annotations

import os
import socket
import threading
from pathlib import Path
from urllib.parse import urlparse

from rag.errors import ModelError

# transformers swaps process-wide torch state while it builds a model (the default device, the init
# functions); two loads in two threads interleave those swaps and can leave them in place, after
# which every later load in the process fails ("Cannot copy out of meta tensor"). Every model load
# holds this lock. Reentrant: loading a GGUF default converts it first, which loads it too.
MODEL_LOADING = threading.RLock()


def _offline() -> bool:
    flags = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    return any(os.environ.get(flag, "").lower() in ("1", "true", "yes", "on") for flag in flags)


def _hub_reachable(timeout: float = 3.0) -> bool:
    endpoint = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        with socket.create_connection((endpoint.hostname or "huggingface.co", port), timeout=timeout):
            return True
    except OSError:
        return False


def pick_device(device: str = "auto") -> str:
    """``auto`` prefers CUDA, then Apple's MPS, then the CPU; anything else is used as given."""
    if device != "auto":
        return device
    import torch

    if torch.cuda.is_available():
        return "cuda"
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return "mps"
    return "cpu"


def local_folder(model: str) -> Path | None:
    """The model's folder on this machine: the folder given, or its snapshot in the Hugging Face
    cache; None when it has never been downloaded. Never touches the network."""
    path = Path(model).expanduser()
    if path.is_dir():
        return path
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(model, local_files_only=True))
    except Exception:
        return None


def locate(model: str, setting: str) -> str:
    """A local folder for ``model`` when one exists (given, or cached), else the hub id to download.

    ``setting`` names the config key (e.g. ``generation.model``) for the error message."""
    path = Path(model).expanduser()
    if path.is_dir():
        return str(path)
    if path.is_absolute() or model.startswith((".", "~")) or model.count("/") > 1:
        raise ModelError(f"{setting}: folder {model} does not exist; point it at a saved model folder or a hub id")
    folder = local_folder(model)
    if folder is not None:
        return str(folder)
    if _offline():
        raise ModelError(f"{setting}: {model!r} is not in the local Hugging Face cache and HF_HUB_OFFLINE is set; "
                         "point it at a local model folder, or unset HF_HUB_OFFLINE once to download it")
    if not _hub_reachable():
        raise ModelError(f"{setting}: {model!r} is not on this machine and the Hugging Face Hub cannot be reached; "
                         "point it at a local model folder, or run once with network access to download it")
    return model
