"""The Ray engine: an ingest's work on a Ray cluster (Ray Data), writing to a Chroma server.

The driver (the ``rag ingest`` process) lists and hashes the files and plans them exactly as the local
engine does (rag.indexing.Indexer); only the files to (re)ingest go to Ray. There a task per block of
files reads each file again, hashes it and loads and chunks it; an actor pool embeds the
chunks (each actor loads the model once, on a GPU where ``num_gpus`` asks for one) and writes them to
the Chroma server in batches. The chunks come back to the driver, which retires stale chunks, keeps
the lexical index in step and reports per file, as for a local ingest.

Workers build their stages from the pickled Settings (``build``), never from pickled models. They read
the files at the driver's paths, so on a cluster of several machines the files must be on a shared
file system. Writes are upserts of deterministic ids, so a batch Ray retries after a worker died is
harmless, and an ingest that fails midway is finished by running it again.
"""

from __future__ import annotations

import logging
import os
import pickle
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rag.errors import ConfigError, LoadError, RagError
from rag.indexing import WRITTEN, FileWork, IngestStages, chunk_work, signature_of, write_chunks
from rag.text import one_line

# Ray's usage statistics are sent to Anyscale unless turned off; an ingest sends nothing anywhere.
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

RETRIES = 3  # how often Ray re-runs a task, or restarts an actor, whose worker died

# One worker process builds the stages once per ingest (``token``), not once per block of files.
_built: dict[str, IngestStages] = {}


def _stages(build: Callable[[], IngestStages], token: str) -> IngestStages:
    if token not in _built:
        _built.clear()
        _built[token] = build()
    return _built[token]


def _failed(source: str, reason: str) -> dict[str, Any]:
    return {"source": source, "signature": "", "chunk": b"", "new": False, "error": reason}


def _load_and_chunk(row: dict[str, Any], *, build: Callable[[], IngestStages], token: str) -> list[dict[str, Any]]:
    """A Ray task: one planned file -> its chunk rows (or one failure row). The file is read and
    hashed again, so the chunks carry the signature of the bytes they were cut from."""
    stages = _stages(build, token)
    path = Path(row["path"])
    work = FileWork(row["source"], status="added", item=path)
    try:
        work.data = stages.read(path)
    except LoadError as exc:
        return [_failed(work.source, exc.reason)]
    work.signature = signature_of(stages.salt(path), work.data)
    chunk_work(work, stages.load, stages.split)
    if work.status == "failed":
        return [_failed(work.source, work.reason)]
    stored = set(row["stored"].split())
    return [{"source": work.source, "signature": work.signature, "chunk": pickle.dumps(chunk),
             "new": chunk.id not in stored, "error": ""} for chunk in work.chunks]


class EmbedWriter:
    """A Ray actor: the model loaded once; each batch of chunk rows embedded and written to the server."""

    build: Callable[[], IngestStages]

    def __init__(self) -> None:
        stages = self.build()
        self.embed = stages.embed
        self.store = stages.open_store()

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        pairs = zip(batch["chunk"], batch["new"], strict=True)
        rows = [(pickle.loads(blob), bool(new)) for blob, new in pairs if len(blob)]
        write_chunks(self.store, self.embed, [c for c, new in rows if new], [c for c, new in rows if not new])
        return batch


@dataclass
class RayEngine:
    """Runs an ingest's loading, chunking, embedding and writing on Ray (see the module docstring)."""

    build: Callable[[], IngestStages]  # picklable: builds the stages from the settings, in a worker
    url: str | None  # store.url: the Chroma server every worker writes to
    address: str | None = None  # None: start Ray on this machine; "auto"; ray://HOST:PORT
    workers: int = 2
    batch_size: int = 256
    num_gpus: float = 0
    num_cpus: float = 1
    loaders: int = 2

    def __post_init__(self) -> None:
        if not self.url:
            raise ConfigError("ingest.engine: ray writes from every worker to a Chroma server: set store.url "
                              "(e.g. http://HOST:8000 of a `chroma run --host 0.0.0.0`), or use ingest.engine: local")
        if not self.address:
            # A Ray started for one ingest is one node: on loopback only (Ray's own single-machine mode).
            os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        try:
            import ray
            import ray.data  # noqa: F401 - imported only to check the extra is installed
        except ImportError:
            raise ConfigError('ingest.engine: ray needs Ray Data: pip install -e ".[ray]"') from None

    def run(self, plan: Iterator[FileWork]) -> Iterator[list[FileWork]]:
        todo: dict[str, FileWork] = {}
        for work in plan:
            if work.status in WRITTEN and isinstance(work.item, Path):
                work.data = None  # the worker reads the file itself; the driver holds no bytes
                todo[work.source] = work
            else:
                yield [work]
        if not todo:
            return
        import ray

        started = self._connect(ray)
        try:
            yield from self._execute(ray, todo)
        except RagError:
            raise
        except Exception as exc:
            raise RagError(f"ingest on Ray failed: {type(exc).__name__}: {one_line(exc)}; run the same ingest "
                           "again (files already written are skipped)") from None
        finally:
            if started:
                ray.shutdown()

    def _connect(self, ray: Any) -> bool:
        """Joins (or starts) the cluster; True when this ingest started the connection."""
        if ray.is_initialized():
            return False
        try:
            ray.init(address=self.address, include_dashboard=False, log_to_driver=False,
                     logging_level=logging.WARNING, configure_logging=True)
        except Exception as exc:
            raise ConfigError(f"ingest.ray.address: cannot connect to Ray at {self.address or 'a new local Ray'}: "
                              f"{one_line(exc)} (use auto for a cluster started with `ray start`, ray://HOST:PORT, "
                              "or leave it empty)") from None
        return True

    def _writer(self) -> type:
        """The actor class with this ingest's ``build`` inside it: Ray ships it with the class, so a
        restarted actor needs no constructor arguments kept in the object store."""
        return type("EmbedWriter", (EmbedWriter,), {"build": staticmethod(self.build)})

    def _execute(self, ray: Any, todo: dict[str, FileWork]) -> Iterator[list[FileWork]]:
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False  # the driver shows its own, per file
        logging.getLogger("ray.data").setLevel(logging.ERROR)
        rows = [{"path": str(w.item), "source": s, "stored": " ".join(w.stored)} for s, w in todo.items()]
        token = uuid.uuid4().hex
        dataset = (
            ray.data.from_items(rows)
            # Loading and chunking reserve no CPU (they are light next to embedding), so they run
            # beside actors that hold every CPU instead of waiting for one; ``loaders`` bounds them.
            .flat_map(_load_and_chunk, fn_kwargs={"build": self.build, "token": token}, num_cpus=0,
                      compute=ray.data.TaskPoolStrategy(size=self.loaders), max_retries=RETRIES)
            # A killed actor is restarted and its batch retried, a few times: a batch that kills
            # its actor every time (out of memory) fails the ingest instead of looping forever.
            .map_batches(self._writer(), batch_size=self.batch_size,
                         compute=ray.data.ActorPoolStrategy(size=self.workers),
                         num_gpus=self.num_gpus or None, num_cpus=self.num_cpus,
                         max_restarts=RETRIES, max_task_retries=RETRIES)
        )
        parts: dict[str, dict[str, Any]] = {}  # source -> chunk id -> chunk, until the file is complete
        for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
            finished = []
            for source, signature, blob, new, error in zip(batch["source"], batch["signature"], batch["chunk"],
                                                           batch["new"], batch["error"], strict=True):
                work = todo.get(source)
                if work is None:  # a row of a file already complete, sent again by a retried task
                    continue
                if error:
                    work.status, work.reason = "failed", str(error)
                    finished.append(todo.pop(source))
                    continue
                chunk = pickle.loads(blob)
                got = parts.setdefault(source, {})
                if chunk.id not in got:
                    got[chunk.id] = chunk
                    work.embedded += bool(new)
                work.signature = str(signature)
                if len(got) == chunk.metadata["file_chunks"]:
                    work.chunks = list(parts.pop(source).values())
                    finished.append(todo.pop(source))
            if finished:
                yield finished
        if todo:
            raise RagError(f"ingest on Ray: {len(todo)} files came back incomplete (e.g. {next(iter(todo))}); "
                           "run the same ingest again")
