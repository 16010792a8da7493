"""Crash safety of `rag ingest`, for real: a child process is SIGKILLed at many points, the ingest is run
again to completion, and the store must then equal a clean ingest of the same folder: the same chunk
ids, texts and file signatures, no chunk missing or duplicated, every vector findable, and the lexical
index holding exactly the collection's ids.

Crash points come two ways:

- by timing: a first full run in a child, with its stderr on a pseudo-terminal so that it shows
  progress, measures how long the ingest takes once it has started; later runs are killed at fractions
  of that time after their own progress appears (loading, embedding, writing, saving the lexical index,
  whatever it is doing then). What the kill left in the store is recorded, so the report says where it
  landed.
- by name, through tests/crash_child.py, which wraps a real function and SIGKILLs the process on its
  N-th call (inside the embedder, inside Chroma's upsert, between writing new chunks and deleting stale
  ones, between batches, while the lexical index is written).

The children are forked by a fork server (tests/crash_child.py --serve) that has imported torch,
transformers and chromadb once; each child then runs ``rag.cli.main`` from the start in a process of its
own. That saves seconds of imports per crash point on a small CPU and changes nothing else. The reruns
go through ``rag.cli.main`` in this process. Each test prints a table of its crash points (pytest -s).
"""

from __future__ import annotations

import contextlib
import io
import json
import random
import shutil
import signal
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from proc_support import ForkServer, IngestChild

from rag.cli import main
from rag.pipeline import Pipeline
from rag.stores.bm25 import LexicalIndex

# Small chunks keep the embedding work (the slow part on a CPU) small while still giving a few hundred
# chunks and more than one write batch (WRITE_BATCH).
CHUNKING = {"chunk_size": 10, "chunk_overlap": 1}
WRITE_BATCH = 128  # ingest.write_batch: chunks embedded and written together
WORDS = [
    "river", "mountain", "harbor", "lantern", "violin", "meadow", "falcon", "quarry", "turbine", "saddle", "ledger",
    "invoice", "tariff", "voltage", "copper", "silicon", "harvest", "orchard", "glacier", "canyon", "reactor",
    "boron", "mirror", "helium", "galaxy", "bread", "flour", "garden", "window", "engine", "signal", "planet",
    "market", "winter", "summer", "forest", "island", "bridge", "castle", "doctor", "teacher", "pilot", "farmer",
    "sailor", "painter", "author", "island", "coffee", "butter", "pepper", "cotton", "marble",
]
SMALL = (6, 14, 30, 60, 110, 200)  # words per file, cycled over the 30 files: ~330 chunks
LARGE = (12, 28, 60, 120, 220, 400)  # ~620 chunks, three write batches


def write_corpus(folder: Path, sizes: tuple[int, ...], *, seed: int = 11, files: int = 30) -> dict[str, str]:
    """~30 text and Markdown files of very different sizes; returns each file's unique word."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    markers = {}
    for i in range(files):
        marker = f"zq{i:02d}crash"
        words = [rng.choice(WORDS) for _ in range(sizes[i % len(sizes)] + rng.randrange(8))]
        words.insert(rng.randrange(len(words) + 1), marker)
        paragraphs = [" ".join(words[j : j + 40]) + "." for j in range(0, len(words), 40)]
        name = f"doc{i:02d}.md" if i % 2 else f"doc{i:02d}.txt"
        if name.endswith(".md"):
            text = f"# Notes {i}\n\n" + "\n\n## Part\n\n".join(paragraphs) + "\n"
        else:
            text = "\n\n".join(paragraphs) + "\n"
        (folder / name).write_text(text, encoding="utf-8")
        markers[name] = marker
    return markers


def settings_args(model: Path) -> list[str]:
    sets = [f"embedding.model={model}", f"ingest.write_batch={WRITE_BATCH}"]
    sets += [f"chunking.{k}={v}" for k, v in CHUNKING.items()]
    return [arg for s in sets for arg in ("--set", s)]


def pipeline_for(store: Path, model: Path) -> Pipeline:
    pipeline = Pipeline.from_config(
        {"store": {"path": str(store)}, "embedding": {"model": str(model)}, "ingest": {"write_batch": WRITE_BATCH},
         "chunking": dict(CHUNKING)}
    )
    pipeline.progress = False
    return pipeline


def ingest_args(folder: Path, store: Path, model: Path) -> list[str]:
    return ["ingest", str(folder), "--store", str(store), *settings_args(model), "--json"]


# --- what a store holds -------------------------------------------------------------------------


@dataclass
class Snapshot:
    chunks: dict[str, tuple]  # id -> (text, source, file_signature, file_chunks, start, end)
    count: int  # what Chroma says it holds
    listed: int  # ids seen paging through it (more than len(chunks): an id listed twice)


def snapshot(store: Path, model: Path) -> Snapshot:
    pipeline = pipeline_for(store, model)
    chroma = pipeline.store
    if not chroma.exists():
        return Snapshot({}, 0, 0)
    chroma.open(chroma.record(), create=False)
    texts = dict(chroma.iter_texts())
    chunks, listed = {}, 0
    for chunk_id, m in chroma.iter_metadata():
        listed += 1
        chunks[chunk_id] = (texts.get(chunk_id), m.get("source"), m.get("file_signature"), m.get("file_chunks"),
                            m.get("start"), m.get("end"))
    return Snapshot(chunks, chroma.count(), listed)


@dataclass
class Outcome:
    point: str
    crashed: bool  # the kill landed while the process ran
    stored_at_kill: int = 0
    lexical_at_kill: bool = False
    rerun_rc: int | None = None
    rerun_traceback: bool = False
    lost: int = 0
    extra: int = 0
    changed: int = 0
    duplicated: int = 0
    unsearchable: int = 0  # chunks a dense query for all k did not return
    lexical_off: int = 0  # ids in the lexical index and not the collection, or the other way round
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return (self.rerun_rc == 0 and not self.rerun_traceback and not self.notes and
                not (self.lost or self.extra or self.changed or self.duplicated or self.unsearchable
                     or self.lexical_off))

    def row(self, total: int) -> str:
        where = ("nothing stored yet" if self.stored_at_kill == 0 else
                 f"{self.stored_at_kill}/{total} chunks stored")
        return (f"{self.point:<22} {'killed' if self.crashed else 'had ended':<9} {where:<24} "
                f"lexical={'y' if self.lexical_at_kill else 'n'}  rerun rc={self.rerun_rc} lost={self.lost} "
                f"extra={self.extra} changed={self.changed} dup={self.duplicated} "
                f"unsearchable={self.unsearchable} lexical_off={self.lexical_off} {' '.join(self.notes)}")


def rerun(folder: Path, store: Path, model: Path, capsys) -> tuple[int, dict, str]:
    """The ingest run again, to completion, through the CLI in this process."""
    capsys.readouterr()
    rc = main(["ingest", str(folder), "--store", str(store), *settings_args(model), "--json"])
    out, err = capsys.readouterr()
    return rc, (json.loads(out) if out.strip() else {}), err


def check_store(outcome: Outcome, store: Path, model: Path, reference: Snapshot, probe: str, vector) -> None:
    """Compare a store with the clean reference; count what differs into ``outcome``."""
    got = snapshot(store, model)
    outcome.lost = len(reference.chunks.keys() - got.chunks.keys())
    outcome.extra = len(got.chunks.keys() - reference.chunks.keys())
    outcome.changed = sum(got.chunks[i] != v for i, v in reference.chunks.items() if i in got.chunks)
    outcome.duplicated = (got.count - len(got.chunks)) + (got.listed - len(got.chunks))
    pipeline = pipeline_for(store, model)
    try:
        hits = pipeline.search(probe, k=3, mode="lexical")
        if not hits:
            outcome.notes.append("lexical search found nothing")
        ids = set(got.chunks)
        outcome.lexical_off = len(pipeline.lexical.ids ^ ids)
        saved = LexicalIndex(pipeline.lexical.folder, stemmer=pipeline.settings.lexical.stemmer,
                             stopwords=pipeline.settings.lexical.stopwords)
        if not saved.load():
            outcome.notes.append("lexical index on disk unreadable")
        else:
            outcome.lexical_off = max(outcome.lexical_off, len(saved.ids ^ ids))
        found = {chunk.id for chunk, _, _ in pipeline.store.query(vector, k=max(1, len(ids)))}
        outcome.unsearchable = len(ids - found)
    except Exception as exc:
        outcome.notes.append(f"{type(exc).__name__}: {exc}")


def crash_and_recover(point: str, child: IngestChild, folder: Path, store: Path, model: Path, reference: Snapshot,
                      probe: str, vector, capsys, *, at: float | None = None) -> Outcome:
    if at is None:  # a named point: the child kills itself
        rc, _ = child.finish()
        outcome = Outcome(point, crashed=rc == -signal.SIGKILL)
        if rc not in (0, -signal.SIGKILL):
            outcome.notes.append(f"child exited {rc}: {child.stderr[-500:]}")
    else:
        child.run_until(at)
        outcome = Outcome(point, crashed=child.kill())
    if "Traceback" in child.stderr:
        outcome.notes.append("traceback in the killed run's stderr")
    before = snapshot(store, model)
    outcome.stored_at_kill = len(before.chunks)
    outcome.lexical_at_kill = (store / "lexical").is_dir() and any((store / "lexical").rglob("CURRENT"))
    rc, _, err = rerun(folder, store, model, capsys)
    outcome.rerun_rc = rc
    outcome.rerun_traceback = "Traceback" in err
    if rc != 0:
        outcome.notes.append(f"rerun stderr: {err.strip()[-300:]}")
    check_store(outcome, store, model, reference, probe, vector)
    return outcome


def report(title: str, outcomes: list[Outcome], total: int) -> str:
    crashed = sum(o.crashed for o in outcomes)
    lines = [f"{title}: {len(outcomes)} crash points, {crashed} killed a running ingest, "
             f"{sum(not o.ok for o in outcomes)} left a store that differs after the rerun; "
             f"chunks lost {sum(o.lost for o in outcomes)}, extra {sum(o.extra for o in outcomes)}, "
             f"duplicated {sum(o.duplicated for o in outcomes)}"]
    lines += ["  " + o.row(total) for o in outcomes]
    text = "\n".join(lines)
    print("\n" + text)
    return text



# --- the corpus, the model and a clean ingest ----------------------------------------------------


def build_tiny_embedder(folder: Path, minilm: Path) -> Path:
    """A one-layer random BERT with MiniLM's tokenizer. Embedding then costs next to nothing, so the
    ingest's time goes to loading, chunking and writing, where a crash can do harm (the slow test
    runs the same crashes with MiniLM itself)."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    tokenizer = AutoTokenizer.from_pretrained(minilm)
    tokenizer.save_pretrained(folder)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=512)
    BertModel(config).save_pretrained(folder)
    return folder


@dataclass
class Corpus:
    root: Path
    folder: Path
    markers: dict[str, str]
    model: Path
    base_store: Path  # the full ingest by a child; re-ingest tests start from copies of it
    reference: Snapshot
    duration: float  # seconds from the first progress line to the end of a full ingest in a child
    vector: object  # a query vector, to ask a store for every chunk it holds
    server: ForkServer


def make_corpus(root: Path, model: Path, sizes: tuple[int, ...]) -> Corpus:
    """The folder; a full ingest in a child, timed from its first progress line to its end (its store,
    written by a process that then exited, is the base the re-ingest tests copy); and the reference: a
    clean ingest in this process, which the child's store must equal."""
    folder = root / "docs"
    markers = write_corpus(folder, sizes)
    server = ForkServer(root)
    base = root / "base"
    child = IngestChild(ingest_args(folder, base, model), cwd=root, server=server)
    start = child.wait_progress()
    rc, out = child.finish()
    assert rc == 0 and "Traceback" not in child.stderr, child.stderr
    summary = json.loads(out)

    reference_store = root / "reference"
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        assert main(["ingest", str(folder), "--store", str(reference_store), *settings_args(model)]) == 0
    reference = snapshot(reference_store, model)
    assert summary["added"] == len(markers) and summary["failed"] == 0
    assert summary["chunks_total"] == len(reference.chunks) == reference.count
    assert len(reference.chunks) > WRITE_BATCH, "the corpus must need more than one write batch"
    assert snapshot(base, model).chunks == reference.chunks
    vector = pipeline_for(reference_store, model).embedder.embed_queries(["harbor lantern"])[0]
    return Corpus(root, folder, markers, model, base, reference, child.ended_at - start, vector, server)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, minilm_path):
    root = tmp_path_factory.mktemp("crash")
    model = build_tiny_embedder(root / "tiny-embedder", minilm_path)
    c = make_corpus(root, model, LARGE)
    yield c
    c.server.close()


@pytest.fixture(scope="module")
def minilm_corpus(tmp_path_factory, minilm_path):
    c = make_corpus(tmp_path_factory.mktemp("crash-minilm"), minilm_path, SMALL)
    yield c
    c.server.close()


def timed_kills(c: Corpus, capsys, fractions: tuple[float, ...], tag: str) -> list[Outcome]:
    """Kill at each fraction of the measured ingest time; on a busy machine a run is sometimes quicker
    than the measured one and ends first, and then the point is tried once more at half the delay."""
    outcomes = []
    for i, fraction in enumerate(fractions):
        for attempt, scale in enumerate((1.0, 0.5)):
            store = c.root / f"{tag}-{i}-{attempt}"
            child = IngestChild(ingest_args(c.folder, store, c.model), cwd=c.root, server=c.server)
            start = child.wait_progress()
            at = fraction * scale
            outcomes.append(crash_and_recover(f"after {at:.0%} of ingest", child, c.folder, store, c.model,
                                              c.reference, "zq07crash", c.vector, capsys,
                                              at=start + at * c.duration))
            if outcomes[-1].crashed:
                break
    return outcomes


def named_kills(c: Corpus, capsys, points: tuple[str, ...], tag: str) -> list[Outcome]:
    outcomes = []
    for i, point in enumerate(points):
        store = c.root / f"{tag}-{i}"
        child = IngestChild(ingest_args(c.folder, store, c.model), cwd=c.root, point=point, server=c.server)
        outcomes.append(crash_and_recover(point, child, c.folder, store, c.model, c.reference, "zq11crash",
                                          c.vector, capsys))
    return outcomes


def check_all(title: str, outcomes: list[Outcome], total: int, capsys, *, named: int = 0) -> None:
    with capsys.disabled():
        text = report(title, outcomes, total)
    assert all(o.ok for o in outcomes), text
    assert all(o.crashed for o in outcomes[:named]), "a named crash point was never reached\n" + text


def test_reference_store_is_consistent(corpus):
    outcome = Outcome("clean ingest", crashed=False, rerun_rc=0)
    check_store(outcome, corpus.base_store, corpus.model, corpus.reference, "zq05crash", corpus.vector)
    assert outcome.ok, outcome.row(len(corpus.reference.chunks))
    pipeline = pipeline_for(corpus.base_store, corpus.model)
    for name, marker in list(corpus.markers.items())[:8]:  # every file findable by its own word
        hits = pipeline.search(marker, k=1, mode="lexical")
        assert hits and hits[0].chunk.metadata["source"].endswith(name)


def test_sigkill_at_timed_points_then_rerun_equals_clean_ingest(corpus, capsys):
    outcomes = timed_kills(corpus, capsys, (0.3, 0.6, 0.9), "timed")
    check_all("timed kills during a first ingest", outcomes, len(corpus.reference.chunks), capsys)
    assert any(o.crashed for o in outcomes), "no kill landed while the ingest ran"


def test_sigkill_inside_a_chroma_write_and_between_batches(corpus, capsys):
    outcomes = named_kills(corpus, capsys, ("upsert-inside:2", "after-write:1", "record-finish:2"), "named")
    check_all("named kills during a first ingest", outcomes, len(corpus.reference.chunks), capsys, named=3)


# --- a re-ingest after edits, killed ------------------------------------------------------------


def edit_corpus(folder: Path, markers: dict[str, str]) -> dict[str, bytes | None]:
    """Rewrite some files, append to others, add two; returns what to put back (None: remove)."""
    rng = random.Random(99)
    saved: dict[str, bytes | None] = {}
    names = sorted(markers)
    for name in names[3:30:4]:  # rewritten: every chunk new
        path = folder / name
        saved[name] = path.read_bytes()
        words = [rng.choice(WORDS) for _ in range(len(path.read_text().split()) + 20)]
        path.write_text(f"Rewritten {markers[name]} " + " ".join(words) + ".\n", encoding="utf-8")
    for name in names[1:30:6]:  # appended to: the first chunks are kept, their signature changes
        path = folder / name
        saved[name] = path.read_bytes()
        extra = " ".join(rng.choice(WORDS) for _ in range(60))
        path.write_text(path.read_text(encoding="utf-8") + f"\nAddendum: {extra}.\n", encoding="utf-8")
    for i in (1, 2):
        name = f"new{i}.txt"
        saved[name] = None
        (folder / name).write_text(f"zqnew{i}crash " + " ".join(rng.choice(WORDS) for _ in range(80)) + ".\n",
                                   encoding="utf-8")
    return saved


def restore(folder: Path, saved: dict[str, bytes | None]) -> None:
    for name, data in saved.items():
        if data is None:
            (folder / name).unlink(missing_ok=True)
        else:
            (folder / name).write_bytes(data)


def reingest_kills(c: Corpus, capsys, points: tuple[str, ...], fractions: tuple[float, ...]) -> None:
    """Edit the folder, then kill re-ingests of the complete store at each point; after a rerun each
    store must equal a clean ingest of the edited folder, so changed files hold exactly their new chunks."""
    saved = edit_corpus(c.folder, c.markers)
    try:
        rc, _, err = rerun(c.folder, c.root / "edited-clean", c.model, capsys)
        assert rc == 0, err
        edited = snapshot(c.root / "edited-clean", c.model)
        changed = {str((c.folder / n).resolve()) for n in saved}
        old_ids = {i for i, v in c.reference.chunks.items() if v[1] in changed}
        new_ids = {i for i, v in edited.chunks.items() if v[1] in changed}
        assert old_ids - new_ids and new_ids - old_ids and old_ids & new_ids  # stale, new and kept chunks

        def copy(tag: str) -> Path:
            store = c.root / tag
            shutil.copytree(c.base_store, store)
            return store

        outcomes = []
        for i, point in enumerate(points):
            store = copy(f"edit-named-{i}")
            child = IngestChild(ingest_args(c.folder, store, c.model), cwd=c.root, point=point, server=c.server)
            outcomes.append(crash_and_recover(f"re-ingest {point}", child, c.folder, store, c.model, edited,
                                              "zqnew1crash", c.vector, capsys))
        if fractions:  # an uncrashed re-ingest measures how long one takes
            child = IngestChild(ingest_args(c.folder, copy("edit-measure"), c.model), cwd=c.root, server=c.server)
            start = child.wait_progress()
            assert child.finish()[0] == 0, child.stderr
            duration = child.ended_at - start
        for i, fraction in enumerate(fractions):
            store = copy(f"edit-timed-{i}")
            child = IngestChild(ingest_args(c.folder, store, c.model), cwd=c.root, server=c.server)
            start = child.wait_progress()
            outcomes.append(crash_and_recover(f"re-ingest at {fraction:.0%}", child, c.folder, store, c.model,
                                              edited, "zqnew1crash", c.vector, capsys,
                                              at=start + fraction * duration))
        check_all("kills during a re-ingest after edits", outcomes, len(edited.chunks), capsys, named=len(points))
    finally:
        restore(c.folder, saved)


def test_sigkill_during_reingest_after_edits(corpus, capsys):
    reingest_kills(corpus, capsys, ("before-delete:1", "after-upsert:1", "record-finish:1", "lexical-commit:1"), ())


# --- every point, and MiniLM itself (slow) -----------------------------------------------------


@pytest.mark.slow
def test_more_crash_points_tiny_model(corpus, capsys):
    points = ("embed:3", "upsert-inside:1", "after-upsert:2", "after-write:2", "upsert-inside:3", "lexical-save:1",
              "lexical-save:3", "record-finish:1", "lexical-commit:1")
    outcomes = named_kills(corpus, capsys, points, "more-named")
    outcomes += timed_kills(corpus, capsys, (0.05, 0.3, 0.6, 0.9), "more-timed")
    check_all("more kills during a first ingest", outcomes, len(corpus.reference.chunks), capsys, named=len(points))
    reingest_kills(corpus, capsys, ("before-delete:3", "after-write:1", "upsert-inside:1", "lexical-save:2",
                                    "record-finish:2", "lexical-commit:1"),
                   (0.2, 0.5, 0.8))


@pytest.mark.slow
def test_crash_points_with_minilm(minilm_corpus, capsys):
    c = minilm_corpus
    points = ("embed:2", "upsert-inside:1", "after-upsert:1", "after-write:1", "lexical-save:2")
    outcomes = named_kills(c, capsys, points, "named")
    outcomes += timed_kills(c, capsys, (0.1, 0.3, 0.5, 0.7, 0.9), "timed")
    check_all("MiniLM: kills during a first ingest", outcomes, len(c.reference.chunks), capsys, named=len(points))
    reingest_kills(c, capsys, ("before-delete:1", "after-upsert:1"), (0.3, 0.7))
