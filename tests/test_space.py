"""The embedding space: cosine, inner product or L2, ranked as brute force over the stored vectors
ranks, the space fixed with the collection; nearest chunks (`rag similar`) and near-duplicates."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest
from support import make_folder

from rag.cli import main
from rag.errors import StoreError
from rag.pipeline import Pipeline

# Distinct texts, so no two chunks tie and the rankings are unambiguous.
TOPICS = {
    "reactor.txt": "The molten salt reactor runs at atmospheric pressure. Its fuel is dissolved in fluoride salt. "
    "Control rods of boron carbide absorb neutrons. The plant produces 300 megawatts of heat.",
    "telescope.txt": "The infrared telescope observes distant galaxies. Its mirrors are cooled with liquid helium. "
    "Detectors read faint signals from the early universe. The dome opens at dusk.",
    "bread.txt": "Sourdough bread needs a lively starter. Rye flour gives a dense crumb. A long cold "
    "fermentation builds flavour. Bake it in a hot covered pot.",
    "sailing.txt": "Sailing upwind means tacking back and forth. The jib is trimmed before the mainsail. "
    "A reef shortens sail when the wind rises. Knots hold the sheets fast.",
    "bees.txt": "Honey bees dance to tell the hive where flowers are. The queen lays eggs all summer. "
    "Workers keep the brood warm. Beekeepers smoke the hive before opening it.",
    "chess.txt": "In chess the bishop moves diagonally. Castling protects the king. A pawn reaching the last "
    "rank becomes a queen. Endgames reward active kings.",
}
QUESTIONS = ["how is the reactor controlled", "cooling the telescope mirrors", "baking rye bread",
             "what happens when the wind rises", "the queen bee"]


def config(tmp_path, minilm_path, space: str, normalize: bool = True, **retrieval) -> dict:
    return {"store": {"path": str(tmp_path / f"store-{space}-{normalize}")},
            "embedding": {"model": str(minilm_path), "space": space, "normalize": normalize},
            "chunking": {"chunk_size": 24, "chunk_overlap": 0}, "retrieval": retrieval}


def brute_force(pipeline: Pipeline, question: str, space: str) -> dict[str, float]:
    """Every stored chunk's dense score for ``question``, from the stored vectors, by numpy."""
    query = pipeline.embedder.embed_queries([question])[0].astype(np.float64)
    store = pipeline.store
    scores = {}
    for chunk, stored in store.get(sorted(store.ids()), embeddings=True):
        vector = stored.astype(np.float64)
        if space == "cosine":
            scores[chunk.id] = vector @ query / (np.linalg.norm(vector) * np.linalg.norm(query))
        elif space == "ip":
            scores[chunk.id] = vector @ query
        else:
            scores[chunk.id] = -np.linalg.norm(vector - query)
    return scores


@pytest.mark.parametrize("normalize", [True, False], ids=["normalized", "raw"])
@pytest.mark.parametrize("space", ["cosine", "ip", "l2"])
def test_each_space_ranks_as_brute_force(tmp_path, minilm_path, space, normalize):
    docs = make_folder(tmp_path / "docs", TOPICS)
    settings = config(tmp_path, minilm_path, space, normalize)
    Pipeline.from_config(settings).ingest([docs])
    pipeline = Pipeline.from_config(settings)
    assert pipeline.info()["embedding_space"] == space
    total = pipeline.info()["chunks"]
    assert total >= 12
    if not normalize:  # the vectors really are of different lengths, so ip, cosine and l2 can disagree
        norms = [np.linalg.norm(v) for _, v in pipeline.store.get(sorted(pipeline.store.ids()), embeddings=True)]
        assert max(norms) - min(norms) > 0.1
    for question in QUESTIONS:
        truth = brute_force(pipeline, question, space)
        best = sorted(truth, key=lambda i: -truth[i])
        dense = pipeline.search(question, k=5, mode="dense")
        assert [h.chunk.id for h in dense] == best[:5], question
        for mode in ("dense", "hybrid", "lexical"):  # every hit's dense score, whoever found it
            for hit in pipeline.search(question, k=5, mode=mode):
                assert hit.scores["dense"] == pytest.approx(truth[hit.chunk.id], abs=1e-4), (mode, question)
        if space == "l2":
            assert all(h.score <= 0 for h in dense)

    # MMR with lambda 1 is relevance alone: the brute-force order again, in every space.
    mmr = Pipeline.from_config({**settings, "retrieval": {"mmr": True, "mmr_lambda": 1.0, "mode": "dense"}})
    for question in QUESTIONS[:2]:
        truth = brute_force(pipeline, question, space)
        assert [h.chunk.id for h in mmr.search(question, k=4)] == sorted(truth, key=lambda i: -truth[i])[:4]

    # The threshold is read in the same unit as the dense score: it keeps exactly the chunks above it.
    question = QUESTIONS[0]
    truth = brute_force(pipeline, question, space)
    cut = sorted(truth.values(), reverse=True)[3] - 1e-6  # between the 4th and 5th best
    for mode in ("dense", "hybrid"):
        kept = Pipeline.from_config({**settings, "retrieval": {"score_threshold": cut}}).search(
            question, k=total, mode=mode)
        assert {h.chunk.id for h in kept} == {i for i, s in truth.items() if s >= cut}, mode


def test_the_space_is_fixed_with_the_collection(tmp_path, minilm_path):
    docs = make_folder(tmp_path / "docs", TOPICS)
    settings = config(tmp_path, minilm_path, "ip")
    Pipeline.from_config(settings).ingest([docs])
    other = {**settings, "embedding": {**settings["embedding"], "space": "l2"}}
    with pytest.raises(StoreError, match=re.escape("built with embedding.space='ip', not 'l2'")):
        Pipeline.from_config(other).search("reactor")
    with pytest.raises(StoreError, match=re.escape("embedding.space='ip'")):
        Pipeline.from_config(other).ingest([docs])
    # Through the command line: one line, exit 2.
    assert main(["search", "reactor", "--store", settings["store"]["path"], "--set", f"embedding.model={minilm_path}",
                 "--set", "embedding.space=cosine", "--set", "chunking.chunk_size=24",
                 "--set", "chunking.chunk_overlap=0"]) == 2
    assert Pipeline.from_config(settings).search("reactor", k=1)  # the right space still works


def test_similar_finds_a_chunks_near_copy_first(tmp_path, minilm_path, capsys):
    texts = dict(TOPICS)
    texts["bread-copy.txt"] = TOPICS["bread.txt"].replace("hot covered pot", "hot covered iron pot")
    docs = make_folder(tmp_path / "docs", texts)
    settings = config(tmp_path, minilm_path, "cosine")
    settings["chunking"] = {"chunk_size": 256, "chunk_overlap": 0}  # one chunk per file
    Pipeline.from_config(settings).ingest([docs])
    pipeline = Pipeline.from_config(settings)
    assert pipeline.info()["chunks"] == len(texts)  # opens the store
    original = next(c for c, _ in pipeline.store.get(sorted(pipeline.store.ids()))
                    if c.metadata["source"].endswith("/bread.txt"))
    store_flags = ["--store", settings["store"]["path"], "--set", f"embedding.model={minilm_path}",
                   "--set", "chunking.chunk_size=256", "--set", "chunking.chunk_overlap=0"]
    assert main(["similar", "--id", original.id, "-k", "3", "--json", *store_flags]) == 0
    hits = json.loads(capsys.readouterr().out)["hits"]
    assert len(hits) == 3 and original.id not in [h["id"] for h in hits]
    assert hits[0]["source"].endswith("/bread-copy.txt") and hits[0]["score"] > 0.95 > hits[1]["score"]
    # A text finds the chunk holding it first, at a cosine of about 1.
    assert main(["similar", "--text", original.text, "-k", "2", "--json", *store_flags]) == 0
    hits = json.loads(capsys.readouterr().out)["hits"]
    assert hits[0]["id"] == original.id and hits[0]["score"] == pytest.approx(1.0, abs=1e-4)
    assert main(["similar", "--id", "no-such-chunk", *store_flags]) == 2
    assert "no chunk 'no-such-chunk'" in capsys.readouterr().err


def test_duplicates_groups_planted_copies_and_nothing_else(tmp_path, minilm_path, capsys):
    docs = make_folder(tmp_path / "docs", TOPICS)
    (docs / "copies").mkdir()
    shutil.copy(docs / "bees.txt", docs / "copies" / "bees.txt")  # a copied page
    shutil.copy(docs / "chess.txt", docs / "copies" / "chess-again.txt")
    (docs / "copies" / "chess-third.txt").write_text(TOPICS["chess.txt"].replace("active kings.", "active kings!"))
    settings = config(tmp_path, minilm_path, "cosine")
    settings["chunking"] = {"chunk_size": 256, "chunk_overlap": 0}  # one chunk per file
    Pipeline.from_config(settings).ingest([docs])
    assert main(["info", "--duplicates", "--json", "--store", settings["store"]["path"],
                 "--set", f"embedding.model={minilm_path}", "--set", "chunking.chunk_size=256",
                 "--set", "chunking.chunk_overlap=0"]) == 0
    groups = json.loads(capsys.readouterr().out)["groups"]
    found = sorted(sorted(str(c["source"]).removeprefix(str(docs) + "/") for c in group) for group in groups)
    assert found == [["bees.txt", "copies/bees.txt"], ["chess.txt", "copies/chess-again.txt", "copies/chess-third.txt"]]
    # Lines for people: one per group, and the count on stderr.
    assert main(["info", "--duplicates", "--store", settings["store"]["path"],
                 "--set", f"embedding.model={minilm_path}", "--set", "chunking.chunk_size=256",
                 "--set", "chunking.chunk_overlap=0"]) == 0
    captured = capsys.readouterr()
    assert len(captured.out.strip().splitlines()) == 2 and captured.out.startswith(("2 chunks: ", "3 chunks: "))
    assert "2 groups of near-duplicate chunks (5 chunks, cosine >= 0.98)" in captured.err
