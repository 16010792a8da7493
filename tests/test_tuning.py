"""Fusion chosen by the collection (rag.tuning) and chunks that carry their context: the label-free
tuner picks the better retriever's side on collections built so that one side is clearly better; a
recorded choice survives a reopen and a re-ingest and yields to an explicit setting; contextual text is
embedded and indexed but never stored; a collection made before the record keeps its behaviour."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from rag import tuning
from rag.cli import main
from rag.loaders import load_file
from rag.pipeline import Pipeline
from rag.types import Document, indexed_text


@pytest.fixture()
def config(tmp_path, minilm_path) -> dict:
    # float32: vectors that do not depend on batch composition, so a re-embedding can be compared.
    return {"store": {"path": str(tmp_path / "store")},
            "embedding": {"model": str(minilm_path), "dtype": "float32"}}


def ingest(config: dict, documents: list[Document], **settings) -> Pipeline:
    pipeline = Pipeline.from_config({**config, **settings})
    pipeline.ingest_documents(documents)
    return pipeline


# -- two collections, each with one clearly better retriever ------------------------------------------

SYLLABLES = [c + v for c in "bdfgklmnprstvz" for v in "aeiou"]


def code_word(rng: np.random.Generator) -> str:
    return "".join(SYLLABLES[i] for i in rng.integers(0, len(SYLLABLES), 4))


def coded_documents(count: int) -> list[Document]:
    """Lexical wins: each record's sentences share its own made-up code words and nothing else (the
    filler is the same everywhere), which BM25 matches exactly and a sentence encoder only vaguely."""
    rng = np.random.default_rng(1)
    documents = []
    for n in range(count):
        a, b, c = (code_word(rng) for _ in range(3))
        text = (f"The registry lists {a} beside {b} in the ledger. Inspectors confirmed {b} together with {c} "
                f"last season. Later audits matched {a} with {c} again.")
        documents.append(Document(f"coded-{n}", text, {"source": f"coded-{n}", "title": ""}))
    return documents


def hyphenated_documents(count: int) -> list[Document]:
    """Dense wins: the same records with soft hyphens between the letters of each code word, as text
    copied from web pages can carry them. The embedding model's normalizer drops them, so it reads the
    records as above; BM25's tokenizer cuts the words into single letters, which it does not index."""
    documents = coded_documents(count)
    for document in documents:
        document.text = " ".join("\u00ad".join(w) if w.islower() and len(w) == 8 else w
                                 for w in document.text.split(" "))
    return documents


@pytest.mark.parametrize(("make", "side"), [(coded_documents, "lexical"), (hyphenated_documents, "dense")])
def test_the_label_free_tuner_picks_the_better_side(config, capsys, make, side):
    """`rag tune --apply` on questions made from the chunks: the choice scores as well as the better
    retriever alone and leans to its side (a tie leans to dense); searches use it from then on."""
    ingest(config, make(2 * tuning.MIN_CHUNKS), retrieval={"tune_on_ingest": False})
    assert Pipeline.from_config(config).info()["fusion"]["source"] == "default"
    argv = ["tune", "--apply", "--json", "--store", config["store"]["path"],
            "--set", f"embedding.model={config['embedding']['model']}", "--set", "embedding.dtype=float32"]
    assert main(argv) == 0
    found = json.loads(capsys.readouterr().out)
    scores = {c["dense_weight"]: c["ndcg@10"] for c in found["candidates"]}
    weight = found["choice"]["dense_weight"]
    better, worse = (scores[0.0], scores[1.0]) if side == "lexical" else (scores[1.0], scores[0.0])
    assert better > worse + 0.3
    assert scores[weight] >= better - 0.01
    assert weight <= 0.5 if side == "lexical" else weight > 0.5
    assert found["source"] == "pseudo-queries" and found["questions"] == min(tuning.QUESTIONS, 2 * tuning.MIN_CHUNKS)
    fusion = Pipeline.from_config(config).info()["fusion"]
    assert (fusion["source"], fusion["dense_weight"]) == ("pseudo-queries", weight)
    assert Pipeline.from_config(config).retriever().fusion_in_use.dense_weight == weight


# -- recorded settings ----------------------------------------------------------------------------------

def small_beir(folder: Path) -> tuple[list[Document], Path, Path]:
    """A few documents and judged queries where BM25 is right and the dense side is not asked."""
    documents = coded_documents(12)
    queries = folder / "queries.jsonl"
    qrels = folder / "qrels.tsv"
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    with queries.open("w") as out:
        for n, document in enumerate(documents[:6]):
            words = [w for w in document.text.split() if w.islower() and len(w) == 8][:2]
            out.write(json.dumps({"_id": f"q{n}", "text": " ".join(words)}) + "\n")
            rows.append(f"q{n}\t{document.metadata['source']}\t1\n")
    qrels.write_text("query-id\tcorpus-id\tscore\n" + "".join(rows))
    return documents, queries, qrels


def test_recorded_fusion_survives_a_reopen_and_a_reingest_and_yields_to_the_config(config, tmp_path, capsys):
    documents, queries, qrels = small_beir(tmp_path / "labels")
    ingest(config, documents)
    assert Pipeline.from_config(config).info()["fusion"] == {"fusion": "weighted", "dense_weight": 0.5,
                                                             "source": "default"}  # too small to tune
    store = ["--store", config["store"]["path"], "--set", f"embedding.model={config['embedding']['model']}"]
    assert main(["tune", "--queries", str(queries), "--qrels", str(qrels), "--apply", "--json", *store]) == 0
    tuned = json.loads(capsys.readouterr().out)
    assert tuned["source"] == "labels" and tuned["applied"]
    assert len(tuned["candidates"]) == len(tuning.CANDIDATES)
    assert tuned["lexical_ndcg@10"] == pytest.approx(1.0)
    chosen = tuned["choice"]["dense_weight"]

    def recorded() -> dict:
        return Pipeline.from_config(config).info()["fusion"]

    assert recorded()["source"] == "labels" and recorded()["dense_weight"] == chosen
    ingest(config, documents)  # nothing changed
    more = coded_documents(2 * tuning.MIN_CHUNKS)[12:]  # grown far: a choice on labels is still kept
    ingest(config, more)
    assert recorded()["source"] == "labels" and recorded()["dense_weight"] == chosen
    assert Pipeline.from_config(config).retriever().fusion_in_use.dense_weight == chosen

    explicit = Pipeline.from_config({**config, "retrieval": {"dense_weight": 0.3}})
    assert explicit.info()["fusion"]["source"] == "config"
    assert explicit.retriever().fusion_in_use.dense_weight == 0.3
    assert explicit.info()["fusion"]["recorded"]["dense_weight"] == chosen  # shown, not used

    assert main(["info", *store]) == 0
    assert "'source': 'labels'" in capsys.readouterr().out


def test_a_pseudo_query_choice_is_made_again_when_the_collection_grows_far(config):
    pipeline = ingest(config, coded_documents(tuning.MIN_CHUNKS))
    first = pipeline.info()["fusion"]["recorded"]
    assert first["chunks"] == tuning.MIN_CHUNKS
    ingest(config, coded_documents(tuning.MIN_CHUNKS + 20))  # a little more: kept
    assert Pipeline.from_config(config).info()["fusion"]["recorded"] == first
    ingest(config, coded_documents(2 * tuning.MIN_CHUNKS + 10))  # twice the size: chosen again
    assert Pipeline.from_config(config).info()["fusion"]["recorded"]["chunks"] == 2 * tuning.MIN_CHUNKS + 10


# -- chunks that carry their context ------------------------------------------------------------------

GUIDE = """# Telescope handbook

An overview of the instrument.

## Cooling

The mirrors sit in a bath of liquid helium to keep thermal noise low.

### Maintenance

Refill the bath every three weeks and log the pressure afterwards.
"""


def test_context_is_embedded_and_indexed_never_stored(config, tmp_path):
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "guide.md").write_text(GUIDE, encoding="utf-8")
    settings = {"chunking": {"strategy": "markdown", "chunk_size": 64, "chunk_overlap": 0}}
    pipeline = Pipeline.from_config({**config, **settings})
    pipeline.ingest([folder])
    document = load_file(folder / "guide.md")[0]
    stored = pipeline.store.get(sorted(pipeline.store.ids()), embeddings=True)
    contexts = {}
    for chunk, vector in stored:
        assert document.text[chunk.start : chunk.end] == chunk.text  # offsets exact, text as written
        assert "Telescope handbook >" not in chunk.text
        contexts[chunk.text.split("\n")[-1]] = chunk.metadata.get("context")
        expected = pipeline.embedder.embed_documents([indexed_text(chunk.text, chunk.metadata)])[0]
        assert float(np.dot(vector, expected)) > 0.999  # what was embedded is the indexed text
    assert contexts["Refill the bath every three weeks and log the pressure afterwards."] == (
        "Telescope handbook > Cooling")  # its own heading opens the chunk, so it is not repeated
    assert pipeline.info()["chunking"]["context"] is True

    def maintenance_found_by_heading(p: Pipeline) -> bool:
        hits = p.search("telescope cooling refill", k=1, mode="lexical")
        return hits[0].chunk.text.startswith("### Maintenance")

    assert maintenance_found_by_heading(Pipeline.from_config({**config, **settings}))
    shutil.rmtree(Path(config["store"]["path"]) / "lexical")  # rebuilt from the store: the same text
    assert maintenance_found_by_heading(Pipeline.from_config({**config, **settings}))


def test_a_collection_made_before_the_record_keeps_its_behaviour(config, tmp_path, monkeypatch):
    """No chunking_context in the record (as rag wrote it before): chunks stay without context, and
    upgrading embeds nothing again."""
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "guide.md").write_text(GUIDE, encoding="utf-8")
    old_record = Pipeline._record

    def without_context(self):
        record = old_record(self)
        del record["chunking_context"]
        return record

    with monkeypatch.context() as patch:
        patch.setattr(Pipeline, "_record", without_context)
        patch.setattr(Pipeline, "_chunk_context", lambda self: False)  # the old chunker
        Pipeline.from_config(config).ingest([folder])
    pipeline = Pipeline.from_config(config)
    assert "chunking_context" not in pipeline.store.record()
    report = pipeline.ingest([folder])
    assert report.chunks_embedded == 0 and report.unchanged == 1
    assert not any("context" in c.metadata for c, _ in pipeline.store.get(sorted(pipeline.store.ids())))
    assert pipeline.info()["chunking"]["context"] is False  # recorded now, as it is
    fresh = Pipeline.from_config({**config, "store": {"path": str(tmp_path / "new")}})
    fresh.ingest([folder])
    assert fresh.info()["chunking"]["context"] is True  # a new collection gets the new default
