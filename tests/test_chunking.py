"""Chunking: offsets exact, every chunk fits the model, nothing lost, ids stable."""

from __future__ import annotations

from itertools import pairwise

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rag.chunking import Chunker, chunk_id
from rag.config import load_settings
from rag.errors import ConfigError, ModelError
from rag.types import CONTEXT_SEPARATOR, STRATEGIES, Document

PARAGRAPHS = [
    "Retrieval-augmented generation answers a question in two steps. First it looks up the passages "
    "of your own documents that are most likely to hold the answer; then it asks a language model to "
    "write the answer from those passages alone, citing them as it goes.",
    "The lookup works on chunks, not whole files. A chunk must be small enough for the embedding model "
    "to read in full, yet large enough to carry a complete thought. Cutting at paragraph breaks keeps "
    "most thoughts whole; cutting at sentences or words is the fallback when a paragraph runs long.",
    "Each chunk remembers where it came from: the document, the first and last character, and the "
    "headers above it. That is what lets an answer point back to the exact lines it was drawn from, "
    "and what lets a second ingestion of the same file skip everything that has not changed.",
    "Tokens are counted with the embedding model's own tokenizer. Characters are a poor proxy: code, "
    "URLs like https://example.org/a/very/long/path?with=query&and=more, numbers such as 3.14159 and "
    "words in other scripts (Grüße, 東京, Ελληνικά) all tokenise at very different rates.",
]
PROSE = "\n\n".join(PARAGRAPHS * 4)

MARKDOWN = """---
title: "Guide"
# not a header: front matter
---

Intro text before any header.

# Install

Install the package with your usual tool.

## From PyPI

Run the command below in a fresh virtual environment.

```bash
# not a header: a comment in a code block
pip install rag
```

## From source

Clone the repository and install it in editable mode.

### Extras

Optional extras pull in the benchmark tools.

# Usage

## Python API

Build a pipeline, ingest a folder, then ask a question.

```python
from rag import Pipeline
pipeline = Pipeline.from_config("configs/default.yaml")
# Still code, not a header
print(pipeline.ask("What is RAG?").text)
```
"""

LONG_TOKENS = (
    "supercalifragilisticexpialidocious" * 5
    + " "
    + "a" * 400
    + "\n"
    + "x1y2z3" * 80
    + " 東京大学" * 60
    + " " * 5
    + "é" * 300
)

REPEATED = "\n\n".join(["The same paragraph appears again and again in this file."] * 40)

TEXTS = {"prose": PROSE, "markdown": MARKDOWN, "long_tokens": LONG_TOKENS, "repeated": REPEATED}


@pytest.fixture(scope="module")
def tokenizer(minilm_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(minilm_path))


def check_invariants(chunker: Chunker, document: Document) -> list:
    """The promises every strategy keeps, whatever the text."""
    chunks = chunker.split(document)
    text = document.text
    covered = [False] * len(text)
    previous = None
    for index, chunk in enumerate(chunks):
        assert text[chunk.start : chunk.end] == chunk.text
        assert chunk.text.strip(), "empty or whitespace-only chunk"
        assert chunker.count_tokens(chunk.text) <= chunker.limit
        assert chunker.count_tokens(chunk.indexed) <= chunker.limit  # its context and text fit together
        assert chunk.document_id == document.id
        assert chunk.id == chunk_id(document.id, chunk.start, chunk.text)
        assert chunk.metadata["chunk_index"] == index
        assert (chunk.metadata["start"], chunk.metadata["end"]) == (chunk.start, chunk.end)
        assert all(isinstance(v, (str, int, float, bool)) for v in chunk.metadata.values())
        if previous is not None:
            assert previous.start < chunk.start and previous.end < chunk.end, "chunks out of order"
        previous = chunk
        covered[chunk.start : chunk.end] = [True] * (chunk.end - chunk.start)
    missing = [i for i, ch in enumerate(text) if not ch.isspace() and not covered[i]]
    assert not missing, f"uncovered text at {missing[:5]}: {text[missing[0] : missing[0] + 20]!r}"
    return chunks


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("name", sorted(TEXTS))
@pytest.mark.parametrize(("size", "overlap"), [(256, 32), (40, 8), (8, 3)])
def test_invariants_on_realistic_text(tokenizer, strategy, name, size, overlap):
    chunker = Chunker(tokenizer, strategy=strategy, chunk_size=size, chunk_overlap=overlap)
    chunks = check_invariants(chunker, Document("doc", TEXTS[name], {"source": f"{name}.md"}))
    assert chunks
    if name == "repeated":  # the same text at different places gets distinct positions and ids
        assert len({c.id for c in chunks}) == len(chunks)


WORDS = ["alpha", "beta", "Grüße", "東京", "x" * 120, "3.14", "def f(x):", "# Title", "## Sub", "```"]
SPACES = [" ", "\n", "\n\n", "\t", "  \n"]
structured_text = st.lists(
    st.one_of(st.sampled_from(WORDS), st.sampled_from(SPACES), st.text(max_size=5)), max_size=120
).map("".join)


@pytest.mark.parametrize("strategy", STRATEGIES)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.one_of(st.text(max_size=400), structured_text))
def test_invariants_on_any_text(tokenizer, strategy, text):
    chunker = Chunker(tokenizer, strategy=strategy, chunk_size=12, chunk_overlap=3)
    check_invariants(chunker, Document("any", text, {}))


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(max_size=200))
def test_count_tokens_matches_the_tokenizer(tokenizer, text):
    chunker = Chunker(tokenizer)
    assert chunker.count_tokens(text) == len(tokenizer(text, add_special_tokens=False)["input_ids"])


def test_count_tokens_is_not_truncated(tokenizer):
    # MiniLM's tokenizer.json truncates and pads to 128; counting must see every token.
    count = Chunker(tokenizer).count_tokens(PROSE)
    assert count == len(tokenizer(PROSE, add_special_tokens=False)["input_ids"]) > 512


def test_blank_documents_have_no_chunks(tokenizer):
    for strategy in STRATEGIES:
        chunker = Chunker(tokenizer, strategy=strategy)
        assert chunker.split(Document("blank", "", {})) == []
        assert chunker.split(Document("blank", " \n\n\t ", {})) == []


def test_recursive_chunks_overlap_on_long_prose(tokenizer):
    # Langchain overlaps the pieces of a paragraph it had to cut, not whole paragraphs, so the
    # paragraphs here are longer than a chunk.
    text = "\n\n".join([" ".join(PARAGRAPHS)] * 3)
    chunker = Chunker(tokenizer, chunk_size=64, chunk_overlap=16)
    chunks = chunker.split(Document("prose", text, {}))
    assert len(chunks) > 8
    overlaps = [prev.end - nxt.start for prev, nxt in pairwise(chunks)]
    assert sum(o > 0 for o in overlaps) >= len(overlaps) // 2
    for prev, nxt in pairwise(chunks):
        if nxt.start < prev.end:
            assert 0 < chunker.count_tokens(text[nxt.start : prev.end]) <= 16 + 2


def test_token_windows_are_full_and_overlap(tokenizer):
    chunker = Chunker(tokenizer, strategy="token", chunk_size=50, chunk_overlap=10)
    chunks = chunker.split(Document("prose", PROSE, {}))
    assert all(chunker.count_tokens(c.text) == 50 for c in chunks[:-1])
    assert all(nxt.start < prev.end for prev, nxt in pairwise(chunks))


def test_limit_is_the_smaller_of_chunk_size_and_model_limit(tokenizer):
    assert Chunker(tokenizer, chunk_size=256, max_tokens=510).limit == 256
    assert Chunker(tokenizer, chunk_size=1000, max_tokens=510).limit == 510
    assert Chunker(tokenizer, chunk_size=100).limit == 100
    chunker = Chunker(tokenizer, chunk_size=100, chunk_overlap=10, max_tokens=510)
    chunks = chunker.split(Document("prose", PROSE, {}))
    assert len(chunks) > 3
    assert max(chunker.count_tokens(c.text) for c in chunks) <= 100
    assert max(chunker.count_tokens(c.text) for c in chunks) > 60  # chunks are filled, not tiny


def test_markdown_headers_path(tokenizer):
    chunker = Chunker(tokenizer, strategy="markdown", chunk_size=256, chunk_overlap=0)
    chunks = check_invariants(chunker, Document("guide", MARKDOWN, {}))
    headers = {c.metadata["headers"] for c in chunks}
    assert headers == {
        "",
        "Install",
        "Install > From PyPI",
        "Install > From source",
        "Install > From source > Extras",
        "Usage > Python API",  # "# Usage" has nothing of its own, so it rides with its sub-section
    }

    def header_of(snippet: str) -> str:
        return next(c.metadata["headers"] for c in chunks if snippet in c.text)

    assert header_of("Intro text") == ""
    assert header_of("pip install rag") == "Install > From PyPI"
    assert header_of("# not a header: a comment") == "Install > From PyPI"
    assert header_of("Optional extras") == "Install > From source > Extras"
    assert header_of("print(pipeline.ask") == "Usage > Python API"
    assert any(c.text.startswith("# Usage\n\n## Python API") for c in chunks)
    section_heads = ["# Install\n", "## From PyPI\n", "## From source\n", "### Extras\n", "# Usage\n"]
    for chunk in chunks:  # a section head may open a chunk, never sit inside one
        assert not any("\n" + head in chunk.text for head in section_heads), chunk.text


@pytest.mark.parametrize("front", ["---\n# settings\ntitle: A\n---\n", "---\r\n# settings\r\ntitle: A\r\n...\r\n",
                                   "---\n# settings\ntitle: A\n...\n"])
def test_front_matter_is_read_alike_by_the_markdown_loader_and_chunker(tokenizer, tmp_path, front):
    """One definition of front matter: what the loader strips, the chunker never reads as headings
    (a YAML comment in it looks like an ATX heading)."""
    from rag.loaders import load_file

    text = front + "# Title\n\nBody text here.\n"
    path = tmp_path / "page.md"
    path.write_bytes(text.encode())
    assert "title: A" not in load_file(path)[0].text and "Body text here." in load_file(path)[0].text
    chunker = Chunker(tokenizer, strategy="markdown", chunk_size=256, chunk_overlap=0)
    chunks = check_invariants(chunker, Document("page", text, {}))
    assert {c.metadata["headers"] for c in chunks if "Body text" in c.text} == {"Title"}
    assert not any("settings" in c.metadata["headers"] for c in chunks)


@pytest.mark.parametrize("strategy", ["recursive", "markdown"])
def test_no_scraps_after_a_long_block(tokenizer, strategy):
    # Langchain starts a new chunk after a block it had to cut; the chunker joins the tail back.
    code = "\n".join(f"result_{i} = compute(value_{i}, factor={i})" for i in range(40))
    rows = "\n".join(f"| **Name {i}** | `value-{i}` |" for i in range(30))
    text = (
        f"# Example\n\nSome text.\n\n```python\n{code}\n```\n\nAfter the code.\n\n"
        f"## Table\n\n<div>\n\n{rows}\n\n</div>\n\n## Next\n\nMore."
    )
    # The whole limit for the text: a context would take a few tokens of it, and this pins the size.
    chunker = Chunker(tokenizer, strategy=strategy, chunk_size=64, chunk_overlap=8, context=False)
    chunks = check_invariants(chunker, Document("blocks", text, {}))
    scraps = {"```", "After the code.", "<div>", "## Table\n\n<div>", "</div>"}
    assert not [c.text for c in chunks if c.text in scraps]


def test_other_strategies_have_no_headers_key(tokenizer):
    for strategy in ("recursive", "token"):
        chunks = Chunker(tokenizer, strategy=strategy).split(Document("guide", MARKDOWN, {}))
        assert all("headers" not in c.metadata for c in chunks)


def test_metadata_carries_the_document_metadata(tokenizer):
    meta = {"source": "a.md", "format": "md", "page": 3, "score": 0.5, "draft": False, "missing": None}
    chunks = Chunker(tokenizer, chunk_size=64, chunk_overlap=8).split(Document("doc", PROSE, meta))
    assert chunks[1].metadata == {
        "source": "a.md",
        "format": "md",
        "page": 3,
        "score": 0.5,
        "draft": False,
        "chunk_index": 1,
        "start": chunks[1].start,
        "end": chunks[1].end,
    }


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_ids_are_deterministic_and_local(tokenizer, strategy):
    def split(text: str) -> list:
        chunker = Chunker(tokenizer, strategy=strategy, chunk_size=64, chunk_overlap=8)  # fresh each run
        return chunker.split(Document("doc", text, {}))

    first = split(PROSE)
    assert [c.id for c in first] == [c.id for c in split(PROSE)]

    paragraphs = PROSE.split("\n\n")
    changed_at = 9
    paragraphs[changed_at] = "This paragraph was rewritten: it now says something else entirely, at length."
    edited = "\n\n".join(paragraphs)
    change_start = len("\n\n".join(paragraphs[:changed_at]))
    old_before = [c.id for c in first if c.end <= change_start]
    new_before = [c.id for c in split(edited) if c.end <= change_start]
    assert len(old_before) > 3
    # Only the chunk just before the edit may change (by taking in some of the edited text).
    assert new_before == old_before[: len(new_before)]
    assert len(new_before) >= len(old_before) - 1

    other_doc = Chunker(tokenizer, strategy=strategy).split(Document("other", PROSE, {}))
    assert not {c.id for c in other_doc} & {c.id for c in first}


def test_chunk_id_shape():
    assert chunk_id("d", 0, "text") == chunk_id("d", 0, "text")
    assert len(chunk_id("d", 0, "text")) == 32
    variants = [("d", 0, "text"), ("d", 1, "text"), ("e", 0, "text"), ("d", 0, "txt")]
    assert len({chunk_id(*v) for v in variants}) == 4


@pytest.mark.parametrize(
    ("values", "key"),
    [
        ({"strategy": "semantic"}, "chunking.strategy"),
        ({"chunk_size": 0}, "chunking.chunk_size"),
        ({"chunk_overlap": -1}, "chunking.chunk_overlap"),
        ({"chunk_size": 32, "chunk_overlap": 32}, "chunking.chunk_overlap"),
    ],
)
def test_bad_settings_name_the_key(values, key):
    with pytest.raises(ConfigError, match=key):
        load_settings(None, {f"chunking.{name}": value for name, value in values.items()})


def test_overlap_beyond_the_models_limit_names_the_key(tokenizer):
    # chunk_size 512 is fine as a setting, but the model takes 128 tokens: the overlap no longer fits.
    with pytest.raises(ConfigError, match=r"chunking\.chunk_overlap .* capped by the model's 128"):
        Chunker(tokenizer, chunk_size=512, chunk_overlap=200, max_tokens=128)


def test_a_slow_tokenizer_is_refused():
    class SlowTokenizer:
        is_fast = False

    with pytest.raises(ModelError, match="fast tokenizer"):
        Chunker(SlowTokenizer())


@pytest.mark.parametrize("strategy", ["recursive", "markdown"])
def test_a_long_table_is_cut_between_rows_and_names_its_header(tokenizer, strategy):
    header = "| City | Country | Population |\n| --- | --- | --- |"
    rows = "\n".join(f"| City number {i} | Country {i % 7} | {1000 + i} thousand |" for i in range(40))
    text = f"# Places\n\nSome prose before the table.\n\n{header}\n{rows}\n\nProse after the table."
    chunks = check_invariants(Chunker(tokenizer, strategy=strategy, chunk_size=64, chunk_overlap=8),
                              Document("places", text, {}))
    table_chunks = [c for c in chunks if "| City number" in c.text]
    assert len(table_chunks) > 2
    for chunk in table_chunks:
        rows_here = [line for line in chunk.text.split("\n") if "City number" in line]
        assert all(line.startswith("|") and line.endswith("|") for line in rows_here)
        if header in chunk.text:
            assert "table_header" not in chunk.metadata
        else:
            assert chunk.metadata["table_header"] == header
    assert header in table_chunks[0].text  # the header starts with rows of its own, not alone
    assert all("table_header" not in c.metadata for c in chunks if "Prose after" in c.text and "| City" not in c.text)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_chunks_carry_their_title_and_heading_path(tokenizer, strategy):
    """Where the text has headings (a Markdown document, whatever the strategy) each chunk knows the
    heading path where it starts, and its context (title, then that path) is what is embedded and
    indexed before its text, which stays an exact slice of the document."""
    document = Document("guide", MARKDOWN, {"title": "Handbook", "format": "markdown"})
    chunks = check_invariants(Chunker(tokenizer, strategy=strategy, chunk_size=40, chunk_overlap=8), document)
    sections = [(0, ""), (MARKDOWN.index("# Install"), "Install"),
                (MARKDOWN.index("## From PyPI"), "Install > From PyPI"),
                (MARKDOWN.index("## From source"), "Install > From source"),
                (MARKDOWN.index("### Extras"), "Install > From source > Extras"),
                (MARKDOWN.index("# Usage"), "Usage > Python API")]  # "# Usage" rides with its sub-section
    for chunk in chunks:
        path = [p for start, p in sections if start <= chunk.start][-1]
        assert chunk.metadata["headers"] == path
        context = chunk.metadata["context"]
        assert chunk.indexed == context + CONTEXT_SEPARATOR + chunk.text
        if not chunk.text.startswith("#"):  # a chunk that opens with its heading does not repeat it
            assert context == " > ".join(["Handbook", path] if path else ["Handbook"])
    assert not any("Handbook" in c.text for c in chunks)  # never in the stored text


def test_context_leaves_out_what_the_chunk_already_shows(tokenizer):
    text = "Glaciers\n\nGlaciers form where snow accumulates faster than it melts. " * 3
    chunker = Chunker(tokenizer, chunk_size=24, chunk_overlap=4)
    chunks = check_invariants(chunker, Document("g", text, {"title": "Glaciers"}))
    assert "context" not in chunks[0].metadata  # it opens with its title
    assert all(c.metadata.get("context") == "Glaciers" for c in chunks[1:] if not c.text.startswith("Glaciers"))
    markdown = "# Setup\n\n## Install\n\nRun the installer."
    (chunk,) = Chunker(tokenizer, strategy="markdown").split(Document("m", markdown, {"title": "Manual"}))
    assert chunk.metadata["context"] == "Manual"  # both headings open the chunk


def test_a_long_context_is_cut_never_the_text(tokenizer):
    title = "A very long title " * 40
    chunker = Chunker(tokenizer, chunk_size=64, chunk_overlap=8)
    chunks = check_invariants(chunker, Document("t", PROSE, {"title": title}))
    assert all(0 < chunker.count_tokens(c.metadata["context"]) <= 64 // 4 for c in chunks)
    assert "".join(c.text for c in chunks if c.start == 0)  # the text is all there (check_invariants)


def test_without_context_the_chunks_are_as_before(tokenizer):
    """context off: no context key and the whole limit for the text, so the chunks (ids, spans) are
    those of a document with nothing to carry, as rag cut them before context existed."""
    titled, plain = Document("doc", PROSE, {"title": "Prose"}), Document("doc", PROSE, {})
    for strategy in STRATEGIES:
        off = Chunker(tokenizer, strategy=strategy, chunk_size=40, chunk_overlap=8, context=False).split(titled)
        assert not any("context" in c.metadata for c in off)
        assert [c.id for c in off] == [
            c.id for c in Chunker(tokenizer, strategy=strategy, chunk_size=40, chunk_overlap=8).split(plain)]
        chunker = Chunker(tokenizer, strategy=strategy, chunk_size=40, chunk_overlap=8)
        on = chunker.split(titled)
        assert all(c.metadata["context"] == "Prose" for c in on)
        assert all(chunker.count_tokens(c.text) < 40 for c in on)  # room kept for the title


def test_a_document_that_fits_whole_and_opens_with_its_title_keeps_the_whole_chunk(tokenizer):
    """Context costs no room where there is nothing to carry: a document that fits one chunk whole
    and opens with its title (a BEIR record, `title + text`) stays one chunk, as without context; the
    same text under a title it does not show is cut, each chunk carrying the title."""
    chunker = Chunker(tokenizer, chunk_size=40, chunk_overlap=8)
    words = ["Glaciers", "form", "where", "snow", "falls", "faster", "than", "it", "melts", "each", "year"]
    text = "Glaciers. " + " ".join(words[i % len(words)] for i in range(60))
    while chunker.count_tokens(text) > chunker.limit:  # the longest that still fits whole
        text = text.rsplit(" ", 1)[0]
    # past what the limit less room for the title would leave
    assert chunker.count_tokens(text) + chunker.count_tokens("Glaciers" + CONTEXT_SEPARATOR) > chunker.limit
    (chunk,) = check_invariants(chunker, Document("g", text, {"title": "Glaciers"}))
    assert "context" not in chunk.metadata
    title = "Ice sheets of the polar regions"  # one the text does not open with: room is kept for it
    other = check_invariants(chunker, Document("g", text, {"title": title}))
    assert len(other) == 2 and all(c.metadata["context"] == title for c in other)
