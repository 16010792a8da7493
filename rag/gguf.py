"""A GGUF file -> a transformers model folder, converted once and cached by the file's content.

transformers reads GGUF files (``from_pretrained(folder, gguf_file=NAME)``) by dequantizing every
tensor, which takes about a minute for a 135M-parameter model on a small CPU, and the model it
returns refuses ``save_pretrained``. So the first use converts the file into an ordinary folder
(config, float32 safetensors, tokenizer with its chat template) and every later load reads that folder
in seconds. The folder is named by the sha256 of the file's bytes: a changed file is converted again,
and the same file under another name or path reuses the cache.

Where: ``$RAG_CACHE/gguf/<hash>`` when ``RAG_CACHE`` is set, else ``rag-gguf/<hash>`` under the
Hugging Face cache (``$HF_HOME``, by default ``~/.cache/huggingface``). A conversion is written beside
its final name and renamed into place, so a crash never leaves a half-written folder that a later load
would trust.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

from rag.errors import ModelError
from rag.hub import MODEL_LOADING

GGUF_MAGIC = b"GGUF"
MARKER = "rag-gguf.json"  # written last into a finished conversion


def cache_root() -> Path:
    """The folder that holds converted GGUF models."""
    if os.environ.get("RAG_CACHE"):
        return Path(os.environ["RAG_CACHE"]).expanduser() / "gguf"
    from huggingface_hub import constants

    return Path(constants.HF_HOME) / "rag-gguf"


def find_gguf(model: str, setting: str) -> Path | None:
    """The GGUF file that ``model`` names (a ``.gguf`` file, or a folder holding exactly one and no
    transformers config), or None when ``model`` is something else."""
    path = Path(model).expanduser()
    if path.is_file() and path.suffix.lower() == ".gguf":
        return path
    if path.suffix.lower() == ".gguf" and not path.exists():
        raise ModelError(f"{setting}: GGUF file {model} does not exist")
    if path.is_dir() and not (path / "config.json").is_file():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() == ".gguf" and p.is_file())
        if len(files) > 1:
            names = ", ".join(p.name for p in files)
            raise ModelError(f"{setting}: {model} holds several GGUF files ({names}); name one of them")
        if files:
            return files[0]
    return None


def _digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def converted(gguf: Path, setting: str, *, log=None) -> Path:
    """The cached transformers folder for ``gguf``, converting it first when there is none."""
    try:
        with open(gguf, "rb") as handle:
            magic = handle.read(4)
        digest = _digest(gguf)
    except OSError as exc:
        raise ModelError(f"{setting}: cannot read {gguf} ({exc.strerror or exc})") from None
    if magic != GGUF_MAGIC:
        raise ModelError(f"{setting}: {gguf} is not a GGUF file (it does not start with 'GGUF'); "
                         "give a .gguf model file, a model folder or a hub id")
    target = cache_root() / digest[:32]
    if (target / MARKER).is_file():
        return target
    _check(gguf, setting)
    say = log or (lambda message: print(message, file=sys.stderr, flush=True))
    say(f"converting {gguf.name} (GGUF) once into {target}; later loads read it from there")
    _convert(gguf, target, digest, setting)
    return target


def _unreadable(gguf: Path, setting: str, exc: Exception) -> ModelError:
    reason = " ".join(str(exc).split())[:300] or type(exc).__name__
    return ModelError(f"{setting}: cannot read the GGUF file {gguf}: it is corrupt or of an architecture "
                      f"transformers cannot load from GGUF ({reason})")


def _check(gguf: Path, setting: str) -> None:
    """Read the file's metadata the way transformers will (its architecture included), without the
    tensors: a bad file fails here in seconds, before a conversion is announced."""
    try:
        from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

        load_gguf_checkpoint(str(gguf), return_tensors=False)
    except ImportError:  # another transformers layout: the conversion itself will tell
        return
    except Exception as exc:
        raise _unreadable(gguf, setting, exc) from None


def _convert(gguf: Path, target: Path, digest: str, setting: str) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    partial.chmod(0o755)
    try:
        try:
            with MODEL_LOADING:
                tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
                loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        except Exception as exc:
            raise _unreadable(gguf, setting, exc) from None
        # The loaded model is marked as quantized and will not save; a plain model built from the
        # same config holds the same (dequantized) weights and saves normally.
        config = loaded.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        with MODEL_LOADING:
            model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model.load_state_dict(loaded.state_dict())
        model.generation_config = loaded.generation_config
        model.save_pretrained(partial)
        tokenizer.save_pretrained(partial)
        (partial / MARKER).write_text(json.dumps({"gguf": str(gguf), "sha256": digest}, indent=2), encoding="utf-8")
        if target.exists():  # a conversion left without its marker: incomplete, replaced
            shutil.rmtree(target, ignore_errors=True)
        try:
            os.replace(partial, target)
        except OSError:
            if not (target / MARKER).is_file():  # another process finished the same conversion first
                raise
    finally:
        shutil.rmtree(partial, ignore_errors=True)
