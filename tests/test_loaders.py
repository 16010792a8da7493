"""Tests of rag.loaders: fidelity against reference renderings, CSV dialects, encodings, broken files,
metadata, and folder walking. Everything but the shared format samples is built in tmp_path."""

from __future__ import annotations

import codecs
import contextlib
import datetime
import hashlib
import io
import json
import os
import random
import re
from collections import defaultdict
from functools import cache
from pathlib import Path

import pytest
from conftest import SHARED_DATA, shared_data

from rag.errors import LoadError
from rag.loaders import SUPPORTED_EXTENSIONS, decode_bytes, document_id, iter_files, load_file

# --- word recall against reference renderings ----------------------------------------------------
#
# Recall = share of the reference's distinct words (lower-cased \w+ tokens) found in the loaded text.
# A set, not a multiset: the references repeat merged-cell text and chart data tables that the
# loaders deliberately give once. Before tokenising, the reference loses what is rendering syntax,
# not document text: HTML comments (<!-- image -->), link targets "](url)", LaTeX control words
# ("\frac") and sub/superscript braces ("a_{0}" -> "a 0").

RECALL_THRESHOLD = 0.90
_FORMATS = SHARED_DATA / "formats"


def _reference_for(path: Path) -> Path:
    name = f"{path.stem}.md" if path.suffix == ".pdf" else f"{path.name}.md"
    return path.parent.parent / "groundtruth" / name


def _cases() -> list[str]:
    if not _FORMATS.exists():
        return []
    return sorted(
        str(path.relative_to(_FORMATS))
        for path in _FORMATS.glob("*/*")
        if path.parent.name != "groundtruth" and _reference_for(path).exists()
    )


def _words(text: str) -> list[str]:
    return re.findall(r"\w+", text.lower())


def _reference_words(markdown: str) -> set[str]:
    markdown = re.sub(r"<!--.*?-->", " ", markdown, flags=re.DOTALL)
    markdown = re.sub(r"\]\([^)]*\)", "]", markdown)
    markdown = re.sub(r"\\[A-Za-z]+", " ", markdown)
    markdown = re.sub(r"[_^]\{", " ", markdown)
    return set(_words(markdown))


@cache
def _recall(case: str) -> tuple[float, tuple[str, ...]]:
    path = _FORMATS / case
    reference = _reference_words(_reference_for(path).read_text(encoding="utf-8"))
    loaded = set(_words("\n".join(doc.text for doc in load_file(path))))
    missing = sorted(reference - loaded)
    return 1 - len(missing) / len(reference), tuple(missing)


@pytest.mark.parametrize("case", _cases())
def test_word_recall_against_reference(case: str) -> None:
    shared_data("formats")
    recall, missing = _recall(case)
    assert recall >= RECALL_THRESHOLD, f"{case}: recall {recall:.3f}, missing {list(missing[:30])}"


def test_word_recall_per_format(capsys: pytest.CaptureFixture[str]) -> None:
    shared_data("formats")
    by_format: dict[str, list[float]] = defaultdict(list)
    for case in _cases():
        by_format[Path(case).suffix].append(_recall(case)[0])
    with capsys.disabled():
        print("\nword recall per format (min / mean / files):")
        for fmt, values in sorted(by_format.items()):
            print(f"  {fmt:6} {min(values):.3f} / {sum(values) / len(values):.3f} / {len(values)}")
    assert by_format


def test_every_shared_sample_loads_with_clean_metadata() -> None:
    folder = shared_data("formats")
    files = [f for f in iter_files([folder]) if isinstance(f, Path) and "groundtruth" not in f.parts]
    assert len(files) >= 30
    for path in files:
        docs = load_file(path)
        assert docs, path
        for doc in docs:
            meta = doc.metadata
            assert meta["source"] == str(path.resolve())
            assert isinstance(meta["title"], str)
            assert meta["content_hash"] == hashlib.sha256(doc.text.encode()).hexdigest()
            assert all(isinstance(v, str | int | float | bool) for v in meta.values()), meta
            assert doc.text == doc.text.strip() and doc.text


def test_paged_formats_give_one_document_per_page() -> None:
    pdf = load_file(shared_data("formats", "pdf", "multi_page.pdf"))
    assert [d.metadata["page"] for d in pdf] == list(range(1, len(pdf) + 1))
    assert len({d.id for d in pdf}) == len(pdf)
    assert pdf[0].id == document_id(pdf[0].metadata["source"], 1)
    slides = load_file(shared_data("formats", "pptx", "powerpoint_sample.pptx"))
    assert [d.metadata["page"] for d in slides] == [1, 2, 3]
    assert slides[0].text.startswith("# Test Table Slide")
    sheets = load_file(shared_data("formats", "xlsx", "xlsx_01.xlsx"))
    assert [d.metadata["sheet"] for d in sheets][:3] == ["Sheet1", "Sheet2", "Sheet3"]
    assert "first: 1\nsecond: 5\nthird: 9" in sheets[0].text
    assert "Scatter chart: 'col-2', 'col-3', 'col-4' by 'col-1'" in sheets[1].text


def test_skipped_page_pdf_with_broken_font_map_still_loads() -> None:
    docs = load_file(shared_data("formats", "pdf", "skipped_1page.pdf"))
    assert docs and all(d.text.encode("utf-8") for d in docs)  # lone surrogates replaced


# --- CSV ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, delimiter, rows, expected",
    [
        ("csv-comma.csv", ",", 5, "Last Name: Lozano, Dr"),
        ("csv-pipe.csv", "|", 5, "Company: Dominguez|Mcmillan and Donovan"),
        ("csv-semicolon.csv", ";", 5, "Company: Dominguez;Mcmillan and Donovan"),
        ("csv-tab.csv", "\t", 5, "Company: Dominguez\tMcmillan and Donovan"),
        ("csv-comma-in-cell.csv", ",", 4, "1: a\n2: ,\n3: c\n4: d"),
        ("csv-single-column.csv", ",", 6, "Industry: Sales"),
        ("csv-inconsistent-header.csv", ",", 4, "3: c\ncolumn_4: d"),
        ("csv-too-many-columns.csv", ",", 4, "4: d\ncolumn_5: e"),
        ("csv-too-few-columns.csv", ",", 4, "1: a\n2: b\n3: c\n\n"),
    ],
)
def test_csv_dialects_and_ragged_rows(name: str, delimiter: str, rows: int, expected: str) -> None:
    (doc,) = load_file(shared_data("formats", "csv", name))
    assert doc.metadata["format"] == "csv"
    assert doc.metadata["delimiter"] == delimiter
    assert doc.metadata["rows"] == rows
    assert len(doc.text.split("\n\n")) == rows
    assert expected in doc.text


def test_all_shared_csv_files_load() -> None:
    files = sorted(shared_data("formats", "csv").glob("*.csv"))
    assert len(files) >= 9
    for path in files:
        assert load_file(path)[0].text


def test_csv_empty_header_names_and_header_only(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text("name,,age\nAda,x,36\n")
    assert load_file(path)[0].text == "name: Ada\ncolumn_2: x\nage: 36"
    path.write_text("only,a,header\n")
    assert load_file(path)[0].text == "only | a | header"


# --- encodings and broken files --------------------------------------------------------------------

TEXT = "Café à Paris coûte 5 €.\nSecond line — naïve."


@pytest.mark.parametrize(
    "encoded",
    [
        TEXT.encode("utf-8"),
        codecs.BOM_UTF8 + TEXT.encode("utf-8"),
        TEXT.encode("utf-16"),  # BOM, native order
        codecs.BOM_UTF16_LE + TEXT.encode("utf-16-le"),
        codecs.BOM_UTF16_BE + TEXT.encode("utf-16-be"),
        TEXT.encode("utf-16-le"),  # no BOM
        TEXT.encode("utf-16-be"),  # no BOM
        TEXT.encode("utf-32"),
        TEXT.encode("cp1252"),
        TEXT.replace("\n", "\r\n").encode("cp1252"),
    ],
    ids=["utf8", "utf8-bom", "utf16", "utf16le-bom", "utf16be-bom", "utf16le", "utf16be", "utf32", "cp1252", "crlf"],
)
def test_encodings_recover_exact_text(tmp_path: Path, encoded: bytes) -> None:
    path = tmp_path / "note.txt"
    path.write_bytes(encoded)
    (doc,) = load_file(path)
    assert doc.text == TEXT
    assert decode_bytes(encoded, path) == TEXT


def test_longer_legacy_text_uses_a_detector(tmp_path: Path) -> None:
    text = "Привет, как дела? Это проверка кодировки файла. " * 3
    path = tmp_path / "ru.txt"
    path.write_bytes(text.encode("cp1251"))
    assert load_file(path)[0].text == text.strip()


@pytest.mark.parametrize(
    "name, data, reason",
    [
        ("zero.txt", b"", "empty file"),
        ("zero.pdf", b"", "empty file"),
        ("blank.txt", b"  \n\t\r\n  ", "empty file"),
        ("blank.md", " \n ".encode("utf-16"), "empty file"),
        ("junk.txt", bytes(range(256)) * 8, "binary file"),
        ("junk.md", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(1, 200)), "binary file"),
        ("controls.txt", bytes([1, 2, 3, 4, 5, 6, 7, 8, 14, 15, 16]) * 40, "binary file"),
        ("junk.html", b"\x00\x01\x02" * 100, "binary file"),
        ("fake.docx", b"this is plain text, not a zip", "not a valid .docx"),
        ("fake.pptx", b"plain text", "not a valid .pptx"),
        ("fake.xlsx", b"PK\x03\x04 broken zip", "not a valid .xlsx"),
        ("fake.pdf", b"%PDF-1.4\n1 0 obj garbage", "PDF"),
        ("bad.json", b'{"text": "a",\n "b": }', "invalid JSON at line 2"),
        ("bad.jsonl", b'{"text": "a"}\n{"text": \n', "invalid JSON on line 2"),
        ("data.bin", b"abc", "unsupported file type .bin"),
    ],
)
def test_broken_files_raise_load_error_only(tmp_path: Path, name: str, data: bytes, reason: str) -> None:
    path = tmp_path / name
    path.write_bytes(data)
    with pytest.raises(LoadError) as info:
        load_file(path)
    assert reason in info.value.reason
    assert info.value.path == str(path)
    assert "\n" not in info.value.reason


def test_truncated_zip_and_pdf_raise_load_error(tmp_path: Path) -> None:
    pdf = _make_pdf(["Some text on page one", "and more on page two"])
    (tmp_path / "cut.pdf").write_bytes(pdf[: len(pdf) // 3])
    docx_path = tmp_path / "full.docx"
    _make_docx(docx_path)
    (tmp_path / "cut.docx").write_bytes(docx_path.read_bytes()[:2000])
    for name in ("cut.pdf", "cut.docx"):
        with pytest.raises(LoadError):
            load_file(tmp_path / name)


def test_mangled_files_raise_only_load_error(tmp_path: Path) -> None:
    """Truncated and bit-flipped files of every family: documents or LoadError, never anything else."""
    _make_docx(tmp_path / "seed.docx")
    seeds = {
        ".pdf": _make_pdf(["Page one text", "Page two text"], title="T"),
        ".docx": (tmp_path / "seed.docx").read_bytes(),
        ".html": b"<html><head><title>t</title></head><body><p>Hello</p><ul><li>x</li></ul></body></html>",
        ".md": "---\ntitle: x\n---\n# Head\n\nBody é".encode(),
        ".csv": b'a,b,c\n1,"x, y",3\n4,5\n',
        ".json": b'[{"text": "one", "n": 1}, {"text": "two"}]',
        ".jsonl": b'{"text": "one"}\n{"text": "two"}\n',
    }
    rng = random.Random(7)
    for suffix, data in seeds.items():
        for attempt in range(12):
            mangled = bytearray(data[: rng.randrange(1, len(data) + 1)])
            for _ in range(rng.randrange(0, 6)):
                mangled[rng.randrange(len(mangled))] = rng.randrange(256)
            path = tmp_path / f"m{attempt}{suffix}"
            path.write_bytes(bytes(mangled))
            with contextlib.suppress(LoadError):
                load_file(path)


def test_missing_file_directory_and_size_limit(tmp_path: Path) -> None:
    with pytest.raises(LoadError, match="no such file"):
        load_file(tmp_path / "nope.txt")
    with pytest.raises(LoadError, match="is a directory"):
        load_file(tmp_path)
    path = tmp_path / "big.txt"
    path.write_text("x" * 100)
    with pytest.raises(LoadError) as info:
        load_file(path, max_bytes=10)
    assert info.value.reason == "file is 100 bytes, over the limit of 10 (loading.max_file_bytes)"
    assert load_file(path, max_bytes=100)[0].text == "x" * 100


# --- format details ---------------------------------------------------------------------------------


def test_markdown_front_matter_goes_to_metadata(tmp_path: Path) -> None:
    path = tmp_path / "post.md"
    path.write_text(
        "---\ntitle: Front Title\ntags: [a, b]\ndate: 2024-01-02\nsource: blog\ndraft: false\nnone:\n---\n"
        "# Heading One\n\nBody text.\n"
    )
    (doc,) = load_file(path)
    assert doc.text == "# Heading One\n\nBody text."
    meta = doc.metadata
    assert meta["title"] == "Front Title"
    # As the file gave them; the store makes them storable (test_ingest: metadata the store keeps).
    assert meta["tags"] == ["a", "b"] and meta["date"] == datetime.date(2024, 1, 2) and meta["draft"] is False
    assert meta["meta_source"] == "blog" and meta["source"] == str(path.resolve())
    assert "none" not in meta
    assert meta["format"] == "markdown"


def test_markdown_title_from_heading_and_bad_front_matter_kept(tmp_path: Path) -> None:
    path = tmp_path / "a.mdx"
    path.write_text("```\n# not a title\n```\n\n## Sub\n\n# Real Title\n\ntext")
    assert load_file(path)[0].metadata["title"] == "Real Title"
    bad = "---\ntitle: [unclosed\n---\n# H\n\nBody"
    path.write_text(bad)
    (doc,) = load_file(path)
    assert doc.text == bad and doc.metadata["title"] == "H"


def test_html_visible_text_structure_and_title(tmp_path: Path) -> None:
    path = tmp_path / "page.html"
    path.write_text(
        "<html><head><title> My  Page </title><style>.x{color:red}</style><script>var secret=1;</script>"
        "</head><body><header>Site banner</header><nav>Menu Home</nav><aside>Ads</aside>"
        "<main><article><header><h1>Article title</h1></header><p>Hello <b>bold</b>\n   world.</p>"
        "<p hidden>hidden para</p><div aria-hidden='true'>aria text</div><noscript>enable js</noscript>"
        "<ul><li>one</li><li>two<ul><li>nested</li></ul></li></ul><ol start='3'><li>three</li></ol>"
        "<table><tr><th>A</th><th>B</th></tr><tr><td><p>1</p></td><td>2</td></tr></table>"
        "<form><input value='x'>Search</form><template>tmpl</template><svg><text>svg</text></svg>"
        "<pre>code\n  indented</pre></article></main><footer>Copyright</footer></body></html>"
    )
    (doc,) = load_file(path)
    assert doc.metadata["title"] == "My Page"
    assert doc.text == (
        "# Article title\n\nHello bold world.\n\n- one\n- two\n  - nested\n3. three\n\n"
        "| A | B |\n| --- | --- |\n| 1 | 2 |\n\n"
        "code\n  indented"
    )


def test_html_deep_nesting_does_not_raise_recursion_error(tmp_path: Path) -> None:
    path = tmp_path / "deep.html"
    path.write_text("<div>" * 20000 + "deep text" + "</div>" * 20000)
    try:
        docs = load_file(path)
    except LoadError:
        return
    assert "deep text" in docs[0].text


def test_pdf_pages_title_and_blank_pages(tmp_path: Path) -> None:
    path = tmp_path / "doc.pdf"
    path.write_bytes(_make_pdf(["Hello first page", "", "Third page text"], title="My Title"))
    docs = load_file(path)
    assert [(d.text, d.metadata["page"]) for d in docs] == [("Hello first page", 1), ("Third page text", 3)]
    assert docs[0].metadata["title"] == "My Title" and docs[0].metadata["format"] == "pdf"
    assert docs[1].id == document_id(str(path.resolve()), 3)
    path.write_bytes(_make_pdf(["", ""]))
    with pytest.raises(LoadError, match="no extractable text"):
        load_file(path)


def test_encrypted_pdf(tmp_path: Path) -> None:
    from pypdf import PdfReader, PdfWriter

    for password in ("secret", ""):
        writer = PdfWriter(clone_from=PdfReader(io.BytesIO(_make_pdf(["Locked text"]))))
        writer.encrypt(user_password=password, owner_password="owner", algorithm="RC4-128")
        path = tmp_path / f"enc{password}.pdf"
        with path.open("wb") as fh:
            writer.write(fh)
        if password:
            with pytest.raises(LoadError, match="encrypted"):
                load_file(path)
        else:
            assert load_file(path)[0].text == "Locked text"


def test_docx_structure(tmp_path: Path) -> None:
    path = tmp_path / "d.docx"
    _make_docx(path)
    (doc,) = load_file(path)
    assert doc.metadata["title"] == "Core Title" and doc.metadata["format"] == "docx"
    assert doc.text == (
        "# Big Title\n\n# Section\n\nIntro paragraph.\n\n- first bullet\n- second bullet\n\n"
        "| Name | Score |\n| --- | --- |\n| Ada | 36 |\n| Merged across |  |\n\nAfter the table."
    )


def test_pptx_and_xlsx_built_here(tmp_path: Path) -> None:
    from openpyxl import Workbook
    from pptx import Presentation

    presentation = Presentation()
    slide = presentation.slides.add_slide(presentation.slide_layouts[1])
    slide.shapes.title.text = "Slide One"
    slide.placeholders[1].text_frame.text = "Point A"
    presentation.slides.add_slide(presentation.slide_layouts[6])  # blank slide: skipped
    slide = presentation.slides.add_slide(presentation.slide_layouts[5])
    slide.shapes.title.text = "Slide Three"
    presentation.save(tmp_path / "p.pptx")
    slides = load_file(tmp_path / "p.pptx")
    assert [(d.metadata["page"], d.text) for d in slides] == [(1, "# Slide One\n\nPoint A"), (3, "# Slide Three")]
    assert slides[1].metadata["title"] == "Slide One"

    workbook = Workbook()
    sheet = workbook.active
    sheet.title = "People"
    sheet.append(["name", None, "age"])
    sheet.append(["Ada", "x", 36, "extra"])
    sheet.append([None, None, None])
    sheet.append(["Bob", None, 41.0])
    workbook.create_sheet("Empty")
    workbook.save(tmp_path / "w.xlsx")
    (doc,) = load_file(tmp_path / "w.xlsx")
    assert doc.metadata["sheet"] == "People" and doc.metadata["rows"] == 2
    assert doc.text == "# People\n\nname: Ada\ncolumn_2: x\nage: 36\ncolumn_4: extra\n\nname: Bob\nage: 41"


def test_json_records_text_field_and_metadata(tmp_path: Path) -> None:
    path = tmp_path / "records.json"
    records = [
        {"id": 1, "text": "First record.", "title": "One", "tags": ["a", "b"], "extra": None, "source": "web"},
        {"id": 2, "body": "no text field: skipped"},
        {"id": 3, "text": "Third record.", "nested": {"k": 1}, "big": 2**70},
    ]
    path.write_text(json.dumps(records))
    docs = load_file(path)
    assert [d.text for d in docs] == ["First record.", "Third record."]
    first, third = (d.metadata for d in docs)
    assert first["title"] == "One" and first["id"] == 1 and first["tags"] == ["a", "b"]
    assert "extra" not in first and first["meta_source"] == "web" and first["format"] == "json"
    assert third["nested"] == {"k": 1} and third["big"] == 2**70 and third["title"] == ""
    assert docs[1].id == document_id(str(path.resolve()), 2)

    path.write_text(json.dumps({"doc": {"body": "Nested text."}, "lang": "en"}))
    (doc,) = load_file(path, json_text_field="doc.body")
    assert doc.text == "Nested text." and doc.metadata["lang"] == "en" and "doc" not in doc.metadata
    assert doc.id == document_id(str(path.resolve()), None)

    with pytest.raises(LoadError, match=r"text field 'content' \(keys found: doc, lang\)"):
        load_file(path, json_text_field="content")


def test_jsonl_lines(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    path.write_text('{"text": "one", "n": 1}\n\n{"other": 2}\n{"text": "four", "ok": true}\n')
    docs = load_file(path)
    assert [(d.text, d.metadata["line"]) for d in docs] == [("one", 1), ("four", 4)]
    assert docs[1].metadata["ok"] is True
    assert docs[1].id == document_id(str(path.resolve()), 4)


def test_document_id_is_deterministic() -> None:
    assert document_id("a.txt") == hashlib.sha256(b"a.txt#None").hexdigest()[:32]
    assert document_id("a.pdf", 2) == hashlib.sha256(b"a.pdf#2").hexdigest()[:32]
    assert len(document_id("x")) == 32


def test_supported_extensions() -> None:
    assert {".txt", ".md", ".mdx", ".html", ".htm", ".pdf", ".docx", ".csv", ".json", ".jsonl", ".pptx",
            ".xlsx"} <= SUPPORTED_EXTENSIONS


# --- walking folders ---------------------------------------------------------------------------------


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    for name in [
        "a.md", "b.txt", "c.bin", ".hidden.md", ".git/config.md", "drafts/d.md", "drafts/old/e.md",
        "sub/e.csv", "sub/deeper/f.html", "Z.PDF",
    ]:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("x")
    os.symlink(root, root / "sub" / "loop")  # a link to an ancestor
    os.symlink(root / "sub", root / "sub" / "deeper" / "up")
    return root


def _relative(items: list, root: Path) -> list[str]:
    return [p.relative_to(root).as_posix() for p in items]


def test_iter_files_walks_sorted_skips_hidden_and_loops(tree: Path) -> None:
    items = list(iter_files([tree]))
    assert all(isinstance(p, Path) for p in items)
    assert _relative(items, tree) == [
        "Z.PDF", "a.md", "b.txt", "drafts/d.md", "drafts/old/e.md", "sub/deeper/f.html", "sub/e.csv",
    ]
    assert list(iter_files([tree])) == items
    assert list(iter_files([tree, tree / "a.md"])) == items  # each file once


def test_iter_files_include_exclude(tree: Path) -> None:
    def walk(include=(), exclude=()):
        return _relative(list(iter_files([tree], include, exclude)), tree)

    assert walk(include=["**/*.md"]) == ["a.md", "drafts/d.md", "drafts/old/e.md"]
    assert walk(include=["*.md"]) == ["a.md", "drafts/d.md", "drafts/old/e.md"]
    assert walk(include=["drafts/*"]) == ["drafts/d.md", "drafts/old/e.md"]
    assert walk(include=["sub/**/*.html"]) == ["sub/deeper/f.html"]
    assert walk(exclude=["drafts/*", "*.csv"]) == ["Z.PDF", "a.md", "b.txt", "sub/deeper/f.html"]
    assert walk(exclude=["drafts"]) == ["Z.PDF", "a.md", "b.txt", "sub/deeper/f.html", "sub/e.csv"]
    assert walk(include=["*.md"], exclude=["old"]) == ["a.md", "drafts/d.md"]


def test_iter_files_explicit_missing_and_unreadable(tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    items = list(iter_files([tree / "c.bin", tree / "missing", tree / ".hidden.md"]))
    assert items[0] == tree / "c.bin" and items[2] == tree / ".hidden.md"
    assert isinstance(items[1], LoadError) and items[1].reason == "no such file or directory"
    with pytest.raises(LoadError, match=re.escape("unsupported file type .bin")):
        load_file(items[0])

    real_scandir = os.scandir

    def scandir(path):
        if Path(path).name == "drafts":
            raise PermissionError(13, "Permission denied")
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    items = list(iter_files([tree]))
    errors = [item for item in items if isinstance(item, LoadError)]
    assert len(errors) == 1 and "cannot read directory" in errors[0].reason
    assert "sub/e.csv" in _relative([i for i in items if isinstance(i, Path)], tree)


# --- builders ------------------------------------------------------------------------------------------


def _make_pdf(pages: list[str], title: str | None = None) -> bytes:
    """A minimal valid PDF with one line of Helvetica text per page ('' = a blank page)."""
    kids = " ".join(f"{4 + 2 * i} 0 R" for i in range(len(pages)))
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        f"<< /Type /Pages /Kids [{kids}] /Count {len(pages)} >>".encode(),
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    for i, text in enumerate(pages):
        stream = f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET".encode() if text else b""
        objects.append(
            f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources << /Font << /F1 3 0 R >> >> "
            f"/Contents {5 + 2 * i} 0 R >>".encode()
        )
        objects.append(b"<< /Length %d >>\nstream\n%s\nendstream" % (len(stream), stream))
    info = ""
    if title:
        objects.append(f"<< /Title ({title}) >>".encode())
        info = f" /Info {len(objects)} 0 R"
    out, offsets = bytearray(b"%PDF-1.4\n"), []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (number, body)
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R{info} >>\nstartxref\n{xref}\n%%EOF\n".encode()
    return bytes(out)


def _make_docx(path: Path) -> None:
    from docx import Document as new_docx

    doc = new_docx()
    doc.core_properties.title = "Core Title"
    doc.add_heading("Big Title", level=0)
    doc.add_heading("Section", level=1)
    doc.add_paragraph("Intro paragraph.")
    doc.add_paragraph("first bullet", style="List Bullet")
    doc.add_paragraph("second bullet", style="List Bullet")
    table = doc.add_table(rows=3, cols=2)
    # strict=False: the third row is left for the merged cell below.
    for row, values in zip(table.rows, [("Name", "Score"), ("Ada", "36")], strict=False):
        for cell, value in zip(row.cells, values, strict=True):
            cell.text = value
    merged = table.cell(2, 0).merge(table.cell(2, 1))
    merged.text = "Merged across"
    doc.add_paragraph("After the table.")
    doc.save(path)


def test_pdf_table_rows_come_out_as_markdown_rows() -> None:
    (page,) = load_file(shared_data("formats", "pdf", "2305.03393v1-pg9.pdf"))
    assert "| 6 | OTSL HTML | 0.965 0.969 | 0.934 0.927 | 0.955 0.955 | 0.88 0.857 |" in page.text
    assert "| --- | --- | --- | --- | --- | --- |" in page.text
    assert "smaller models trained on OTSL perform better" in page.text  # the prose around it kept


def test_a_box_around_code_is_not_taken_for_a_table() -> None:
    pages = load_file(shared_data("formats", "pdf", "code_and_formula.pdf"))
    assert "return a + b" in pages[0].text and "| function" not in pages[0].text
