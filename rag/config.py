"""YAML <-> typed settings, one section per stage. Unknown keys and wrong types are errors that name
the key and the file; YAML is read with ``safe_load`` only; relative paths written in a config file
are resolved against that file's folder, so a config means the same thing from any working directory.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from rag.errors import ConfigError
from rag.types import ChunkingStrategy, RetrievalMode, SimilaritySpace


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class StoreSettings(Section):
    path: str = ".rag"
    url: str | None = None
    collection: str = "rag"
    # Bearer token for a Chroma server; RAG_CHROMA_TOKEN in the environment is used when unset.
    token: str | None = Field(default=None, repr=False)
    lock_timeout: float = 600.0


class LoadingSettings(Section):
    include: list[str] = []
    exclude: list[str] = []
    json_text_field: str = "text"
    max_file_bytes: int = 50_000_000


class ChunkingSettings(Section):
    strategy: ChunkingStrategy = "recursive"
    chunk_size: int = Field(default=256, ge=1)
    chunk_overlap: int = Field(default=32, ge=0)

    @model_validator(mode="after")
    def _overlap_below_size(self) -> ChunkingSettings:
        # The model's own limit may cap chunk_size further; the Chunker checks that one.
        if self.chunk_overlap >= self.chunk_size:
            raise ValueError(f"chunking.chunk_overlap ({self.chunk_overlap}) must be smaller than "
                             f"chunking.chunk_size ({self.chunk_size})")
        return self


class EmbeddingSettings(Section):
    model: str = "sentence-transformers/all-MiniLM-L6-v2"
    device: str = "auto"
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    batch_size: int = Field(default=32, ge=1)
    # Padded tokens per forward pass at most (texts x longest); auto: CPU_BATCH_TOKENS on the CPU,
    # where a batch whose activations stay in cache runs faster, and no limit on a GPU.
    batch_tokens: Annotated[int, Field(ge=1)] | Literal["auto"] | None = "auto"
    pooling: Literal["mean", "cls", "last", "max"] | None = None
    normalize: bool = True
    max_length: int | None = None
    query_prefix: str | None = None
    document_prefix: str | None = None
    quantize: Literal["none", "int8"] = "none"
    trust_remote_code: bool = False
    # How the store measures similarity (Chroma's hnsw:space), fixed when the collection is created.
    space: SimilaritySpace = "cosine"


class RaySettings(Section):
    """The Ray engine (``ingest.engine: ray``, rag.engines.ray)."""

    # None: a Ray started on this machine for the ingest; "auto": the running cluster; ray://HOST:PORT
    address: str | None = None
    workers: int = Field(default=2, ge=1)  # embedding actors, each with its own copy of the model
    batch_size: int = Field(default=256, ge=1)  # chunks an actor embeds and writes to the server at once
    num_gpus: float = Field(default=0, ge=0)  # GPUs per embedding actor (0: it runs on CPUs)
    num_cpus: float = Field(default=1, gt=0)  # CPUs per embedding actor (its torch threads)
    loaders: int = Field(default=2, ge=1)  # load-and-chunk tasks at once (they reserve no CPU)


class IngestSettings(Section):
    """How an ingest runs, whatever the stages are: the engine, batching and overlap."""

    engine: Literal["local", "ray"] = "local"  # ray needs store.url (a Chroma server) and the [ray] extra
    write_batch: int = Field(default=1024, ge=1)  # chunks embedded and written to the store together
    prepare_ahead: bool | Literal["auto"] = "auto"  # load and chunk in a thread ahead of embedding
    ray: RaySettings = RaySettings()


# Keys that moved, old -> new: still read, with a one-line note.
MOVED_KEYS = {"embedding.write_batch": "ingest.write_batch", "loading.prepare_ahead": "ingest.prepare_ahead"}


class LexicalSettings(Section):
    stemmer: str | None = "english"
    stopwords: str | None = "en"
    k1: float = 1.2
    """BM25 term-frequency saturation: 1.2, the only value the lexical index (Tantivy) scores with."""
    b: float = 0.75
    """BM25 length normalization: 0.75, the only value the lexical index (Tantivy) scores with."""

    @model_validator(mode="after")
    def _engine_parameters(self) -> LexicalSettings:
        if (self.k1, self.b) != (1.2, 0.75):
            raise ValueError(f"k1={self.k1}, b={self.b}: the lexical index (Tantivy) scores with BM25's k1=1.2 and "
                             "b=0.75, fixed in the engine; remove lexical.k1 and lexical.b")
        return self


class RetrievalSettings(Section):
    mode: RetrievalMode = "hybrid"
    k: int = Field(default=5, ge=1)
    score_threshold: float | None = None
    where: dict[str, Any] | None = None
    fusion: Literal["rrf", "weighted"] = "weighted"
    rrf_k: int = Field(default=60, ge=1)
    dense_weight: float = Field(default=0.5, ge=0, le=1)
    fetch_k: int = Field(default=100, ge=1)
    mmr: bool = False
    mmr_lambda: float = Field(default=0.5, ge=0, le=1)


class RerankSettings(Section):
    model: str | None = None
    top_n: int = Field(default=20, ge=1)
    batch_size: int = Field(default=16, ge=1)
    device: str = "auto"
    trust_remote_code: bool = False


class PromptSettings(Section):
    # auto: qa_short for generators under 1B parameters (they answer better from a few sentences
    # than they cite), qa_cited for larger ones.
    template: str = "auto"
    variables: dict[str, Any] = {}
    # What the prompt shows of each retrieved chunk: the whole chunk, or its best sentences (auto:
    # sentences for generators under 1B parameters).
    evidence: Literal["auto", "chunks", "sentences"] = "auto"
    evidence_sentences: int = Field(default=3, ge=1)


class GenerationSettings(Section):
    model: str = "HuggingFaceTB/SmolLM2-135M-Instruct"
    device: str = "auto"
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    # "auto": 48 tokens ending at the first line break for small generators (short answers), else 256
    max_new_tokens: Annotated[int, Field(ge=1)] | Literal["auto"] = "auto"
    temperature: float = Field(default=0.0, ge=0)
    top_p: float = Field(default=1.0, gt=0, le=1)
    repetition_penalty: float = Field(default=1.0, gt=0)
    stop: list[str] | Literal["auto"] = "auto"
    seed: int | None = 0
    context_window: int | None = Field(default=None, ge=1)
    system_prompt: str | None = None
    trust_remote_code: bool = False


class ServerSettings(Section):
    """`rag serve`: where it listens, who may call it, and how much one request may ask."""

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    # Every endpoint but /health then needs "Authorization: Bearer KEY" (or the RAG_API_KEY variable).
    api_key: str | None = None
    model_id: str = "rag"  # the pipeline's name in /v1/models and chat requests
    generations: int = Field(default=1, ge=1)  # answers generated at once; the rest wait their turn
    max_request_bytes: int = Field(default=1_048_576, ge=1024)  # a JSON request body
    max_upload_bytes: int = Field(default=64 * 1_048_576, ge=1024)  # one POST /ingest upload, all files
    # Server-side paths POST /ingest may name lie under this folder; none: uploads only.
    root: str | None = None
    ingest_wait: float = Field(default=10.0, ge=0)  # seconds POST /ingest waits before answering 202


class RunSettings(Section):
    inputs: list[str] = []
    questions: str | None = None
    output: str = "runs/latest"


class Settings(Section):
    store: StoreSettings = StoreSettings()
    loading: LoadingSettings = LoadingSettings()
    chunking: ChunkingSettings = ChunkingSettings()
    embedding: EmbeddingSettings = EmbeddingSettings()
    ingest: IngestSettings = IngestSettings()
    lexical: LexicalSettings = LexicalSettings()
    retrieval: RetrievalSettings = RetrievalSettings()
    rerank: RerankSettings = RerankSettings()
    prompt: PromptSettings = PromptSettings()
    generation: GenerationSettings = GenerationSettings()
    server: ServerSettings = ServerSettings()
    run: RunSettings = RunSettings()


# Keys whose relative values are file-system paths, resolved against the config file's folder.
PATH_KEYS = ("store.path", "run.questions", "run.output", "server.root")
# Keys that may be a path or a name (a model id, a built-in template): resolved only where it exists.
MAYBE_PATH_KEYS = ("embedding.model", "generation.model", "rerank.model", "prompt.template")


def parse_override(item: str) -> tuple[str, Any]:
    """``generation.max_new_tokens=64`` -> ("generation.max_new_tokens", 64); values are YAML."""
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. generation.max_new_tokens=64")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def _set_dotted(data: dict[str, Any], key: str, value: Any, origin: str) -> None:
    parts = key.split(".")
    node = data
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{origin}: {key}: {part} is not a section")
        node = child
    node[parts[-1]] = value


def _get_dotted(data: dict[str, Any], key: str) -> Any:
    node: Any = data
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _move_old_keys(data: dict[str, Any], origin: str) -> None:
    for old, new in MOVED_KEYS.items():
        section, key = old.split(".")
        if isinstance(data.get(section), dict) and key in data[section]:
            value = data[section].pop(key)
            if _get_dotted(data, new) is None:
                _set_dotted(data, new, value, origin)
            where = "" if origin == "defaults" else f"{origin}: "
            print(f"rag: note: {where}{old} is now {new}; the old key still works", file=sys.stderr)


def _resolve_paths(data: dict[str, Any], base: Path) -> None:
    for key in PATH_KEYS + MAYBE_PATH_KEYS + ("run.inputs",):
        value = _get_dotted(data, key)
        if key == "run.inputs" and isinstance(value, list):
            _set_dotted(data, key, [_resolve_one(v, base, True) for v in value], "")
        elif isinstance(value, str):
            _set_dotted(data, key, _resolve_one(value, base, key in PATH_KEYS), "")


def _resolve_one(value: Any, base: Path, always: bool) -> Any:
    if not isinstance(value, str) or not value:
        return value
    path = Path(value).expanduser()
    if path.is_absolute():
        return str(path)
    candidate = base / path
    return str(candidate) if always or candidate.exists() else value


def _validation_message(exc: ValidationError, origin: str) -> str:
    problems = []
    for error in exc.errors():
        key = ".".join(str(p) for p in error["loc"])
        if error["type"] == "extra_forbidden":
            problems.append(f"{key}: unknown key")
        elif error["type"] == "value_error":  # a check across keys: its message names them
            problems.append(str(error["ctx"]["error"]))
        else:
            problems.append(f"{key}: {error['msg']} (got {error.get('input')!r})")
    return f"{origin}: " + "; ".join(problems)


def dotted_overrides(overrides: dict[str, Any]) -> dict[str, Any]:
    """``generation={"max_new_tokens": 64}`` or ``generation__max_new_tokens=64`` -> dotted keys."""
    flat: dict[str, Any] = {}
    for key, value in overrides.items():
        if isinstance(value, dict):
            for sub, inner in value.items():
                flat[f"{key}.{sub}"] = inner
        else:
            flat[key.replace("__", ".")] = value
    return flat


def load_settings(
    path: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
    sets: list[str] | None = None,
) -> Settings:
    """Defaults, then the YAML file, then ``overrides`` (dotted keys), then ``--set`` items."""
    data: dict[str, Any] = {}
    origin = "defaults"
    if path is not None:
        origin = str(path)
        file = Path(path)
        try:
            text = file.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read the config file ({exc.strerror or exc})") from None
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}" if mark else ""
            raise ConfigError(f"{path}: not valid YAML{where}: {getattr(exc, 'problem', exc)}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: expected a mapping of sections (store:, embedding:, ...) at the top")
        data = loaded
        _resolve_paths(data, file.resolve().parent)
    for key, value in (overrides or {}).items():
        _set_dotted(data, key, value, "override")
    for item in sets or []:
        key, value = parse_override(item)
        _set_dotted(data, key, value, "--set")
    _move_old_keys(data, origin)
    try:
        settings = Settings.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_validation_message(exc, origin)) from None
    if settings.store.token is None and os.environ.get("RAG_CHROMA_TOKEN"):
        settings.store.token = os.environ["RAG_CHROMA_TOKEN"]
    return settings


def dump_settings(settings: Settings) -> str:
    """The effective config as YAML, secrets left out, for copies written beside a run's outputs."""
    data = settings.model_dump(mode="json")
    if data["store"].get("token"):
        data["store"]["token"] = "***"
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
