"""OCR with the real engine (Tesseract): scanned PDFs and pictures made here from rendered text are
ingested and found by `rag search`, with their pages and ``ocr: true``; bad pictures and pages give
one-line reasons while the rest of the folder goes in; no engine gives the line that installs it."""

from __future__ import annotations

import io
import json
import os
import shutil
import stat
from pathlib import Path

import pytest
from conftest import shared_data
from test_loaders import _make_pdf

from rag.cli import main
from rag.errors import LoadError
from rag.loaders import OcrOptions, load_file
from rag.pipeline import Pipeline

Image = pytest.importorskip("PIL.Image", reason="OCR needs Pillow (the ocr extra)")
from PIL import ImageDraw, ImageFont  # noqa: E402  (after the skip above)

pytestmark = pytest.mark.skipif(shutil.which("tesseract") is None,
                                reason="the tesseract program is not installed (apt-get install tesseract-ocr)")

PAGE_ONE = ["Invoice 4471 from Zanzibar Shipping", "Freight of copper cable to Rotterdam", "Total due: 980 euros"]
PAGE_TWO = ["Maintenance log of the harbour crane", "Hydraulic pump replaced in March", "Next inspection in autumn"]
PICTURE = ["Whiteboard photo from the design review", "The glacier survey drone needs longer batteries"]


def page_image(lines: list[str], size: tuple[int, int] = (1700, 1100)) -> Image.Image:
    """Text rendered black on white at about 200 dpi, as a scanner would give it."""
    image = Image.new("L", size, 255)
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=44)
    for number, line in enumerate(lines):
        draw.text((120, 140 + number * 90), line, fill=0, font=font)
    return image


def scanned_pdf(path: Path, pages: list[list[str]]) -> Path:
    """An image-only PDF: pictures of pages, no text layer (Pillow's PDF writer)."""
    first, *rest = [page_image(lines) for lines in pages]
    first.save(path, save_all=True, append_images=rest, resolution=200)
    return path


def scans(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    scanned_pdf(root / "invoice.pdf", [PAGE_ONE, PAGE_TWO])
    page_image(PICTURE).save(root / "whiteboard.png")
    return root


def search(store: Path, minilm_path: Path, query: str, capsys: pytest.CaptureFixture[str]) -> dict:
    common = ["--store", str(store), "--set", f"embedding.model={minilm_path}"]
    assert main(["search", query, "-k", "3", "--mode", "lexical", "--json", *common]) == 0
    return json.loads(capsys.readouterr().out)["hits"][0]


def counting_tesseract(folder: Path) -> Path:
    """A `tesseract` first on PATH that notes each call in a log, then runs the real one."""
    folder.mkdir()
    script = folder / "tesseract"
    script.write_text(f'#!/bin/sh\necho "$@" >> {folder / "calls.log"}\nexec {shutil.which("tesseract")} "$@"\n')
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return folder / "calls.log"


def pages_read(calls: Path) -> int:
    return sum(line.endswith(" txt tsv") for line in calls.read_text().splitlines())


def test_scans_and_pictures_are_ingested_and_found(tmp_path, minilm_path, capsys, monkeypatch):
    docs = scans(tmp_path / "docs")
    calls = counting_tesseract(tmp_path / "bin")
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    store = tmp_path / "store"
    common = ["--store", str(store), "--set", f"embedding.model={minilm_path}"]
    assert main(["ingest", str(docs), *common, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["added"] == 2 and report["failed"] == 0
    assert pages_read(calls) == 3  # two PDF pages, one picture

    hit = search(store, minilm_path, "hydraulic pump crane", capsys)
    assert hit["source"].endswith("invoice.pdf")
    meta = hit["metadata"]
    assert meta["page"] == 2 and meta["pages"] == 2 and meta["ocr"] is True and meta["format"] == "pdf"
    assert 0.5 < meta["ocr_confidence"] <= 1
    assert search(store, minilm_path, "Zanzibar copper freight", capsys)["metadata"]["page"] == 1
    hit = search(store, minilm_path, "glacier drone batteries", capsys)
    assert hit["source"].endswith("whiteboard.png")
    assert hit["metadata"]["ocr"] is True and hit["metadata"]["page"] == 1 and hit["metadata"]["format"] == "image"

    # Unchanged scans are not read again.
    assert main(["ingest", str(docs), *common, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["unchanged"] == 2
    assert pages_read(calls) == 3


def test_auto_reads_only_pages_without_text(tmp_path):
    from pypdf import PdfReader, PdfWriter

    writer = PdfWriter(clone_from=PdfReader(scanned_pdf(tmp_path / "scan.pdf", [PAGE_ONE])))
    writer.add_page(PdfReader(io.BytesIO(_make_pdf(["A page with a real text layer about tidal energy"]))).pages[0])
    mixed = tmp_path / "mixed.pdf"
    with mixed.open("wb") as out:
        writer.write(out)
    first, second = load_file(mixed)
    assert first.metadata["ocr"] is True and "Zanzibar" in first.text
    assert "ocr" not in second.metadata and second.text == "A page with a real text layer about tidal energy"
    never = load_file(mixed, ocr=OcrOptions(mode="never"))
    assert [d.metadata["page"] for d in never] == [2]
    always = load_file(mixed, ocr=OcrOptions(mode="always"))
    assert [d.metadata.get("ocr") for d in always] == [True, True] and "tidal energy" in always[1].text


def test_multi_page_tiff_keeps_page_numbers(tmp_path):
    path = tmp_path / "fax.tiff"
    page_image(PAGE_ONE).save(path, save_all=True, append_images=[page_image(PAGE_TWO)], compression="tiff_lzw")
    docs = load_file(path, ocr=OcrOptions(workers=2))
    assert [(d.metadata["page"], d.metadata["pages"]) for d in docs] == [(1, 2), (2, 2)]
    assert "Zanzibar" in docs[0].text and "Hydraulic" in docs[1].text


def test_bad_inputs_give_one_line_and_the_rest_goes_in(tmp_path, minilm_path, capsys):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "good.txt").write_text("The lighthouse keeper logs the weather every evening.")
    Image.new("1", (20_000, 20_000), 1).save(docs / "huge.png")  # 400 million pixels, a few KB on disk
    tiff = io.BytesIO()
    page_image(PAGE_ONE).save(tiff, format="TIFF")
    (docs / "truncated.tif").write_bytes(tiff.getvalue()[: len(tiff.getvalue()) // 3])
    Image.new("L", (1700, 2200), 255).save(docs / "blank.pdf", resolution=200)  # a page that renders to nothing
    (docs / "not-really.jpg").write_bytes(b"this is no picture")

    store = tmp_path / "store"
    common = ["--store", str(store), "--set", f"embedding.model={minilm_path}"]
    assert main(["ingest", str(docs), *common, "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    reasons = {Path(f["source"]).name: f["reason"] for f in report["failures"]}
    assert report["added"] == 1 and set(reasons) == {"huge.png", "truncated.tif", "blank.pdf", "not-really.jpg"}
    assert all("\n" not in reason for reason in reasons.values())
    assert "400,000,000 pixels" in reasons["huge.png"] and "loading.ocr_max_pixels" in reasons["huge.png"]
    assert "truncated" in reasons["truncated.tif"]
    assert "blank" in reasons["blank.pdf"]
    assert "not an image" in reasons["not-really.jpg"]


def test_a_page_past_the_time_limit_is_skipped(tmp_path, caplog):
    path = scanned_pdf(tmp_path / "slow.pdf", [PAGE_ONE])
    with pytest.raises(LoadError, match=r"OCR took longer than 0.001 s \(loading.ocr_page_timeout\)"):
        load_file(path, ocr=OcrOptions(page_timeout=0.001))


def test_a_huge_pdf_page_is_rendered_within_the_pixel_limit(tmp_path):
    path = tmp_path / "poster.pdf"
    page_image(PAGE_ONE, size=(3400, 2200)).save(path, resolution=20)  # a page 170 x 110 inches
    (doc,) = load_file(path, ocr=OcrOptions(max_pixels=20_000_000))
    assert "Zanzibar" in doc.text and doc.metadata["ocr_dpi"] < 40


def test_without_the_engine_a_scan_fails_with_what_to_install(tmp_path, monkeypatch, capsys, minilm_path):
    docs = scans(tmp_path / "docs")
    (docs / "notes.txt").write_text("Plain notes about the harbour are still ingested.")
    monkeypatch.setenv("PATH", str(tmp_path / "nowhere"))  # the tesseract program cannot be found
    common = ["--store", str(tmp_path / "store"), "--set", f"embedding.model={minilm_path}"]
    assert main(["ingest", str(docs), *common, "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["added"] == 1
    for failure in report["failures"]:
        assert 'pip install -e ".[ocr]"' in failure["reason"] and "apt-get install tesseract-ocr" in failure["reason"]


def test_a_missing_language_pack_is_named(tmp_path):
    path = scanned_pdf(tmp_path / "scan.pdf", [PAGE_ONE])
    with pytest.raises(LoadError, match="apt-get install tesseract-ocr-xyz"):
        load_file(path, ocr=OcrOptions(languages=("eng", "xyz")))


@pytest.mark.slow  # four dense pages in Korean: the longest OCR here
def test_korean_scan_with_the_korean_pack(tmp_path):
    if "kor" not in os.popen("tesseract --list-langs 2>/dev/null").read().split():
        pytest.skip("the Korean language pack is not installed (apt-get install tesseract-ocr-kor)")
    path = shared_data("scanned", "normal_4pages.pdf")
    docs = load_file(path, ocr=OcrOptions(languages=("kor", "eng")))
    assert [d.metadata["page"] for d in docs] == [1, 2, 3, 4]
    assert "발행일" in docs[0].text and all(d.metadata["ocr"] for d in docs)


def test_pipeline_settings_reach_the_loader(tmp_path, minilm_path):
    path = scanned_pdf(tmp_path / "scan.pdf", [PAGE_ONE])
    pipeline = Pipeline.from_config({"store": {"path": str(tmp_path / "store")},
                                     "embedding": {"model": str(minilm_path)}, "loading": {"ocr": "never"}})
    report = pipeline.ingest([path])
    assert report.failed == 1 and "loading.ocr: auto" in report.failures[0][1]


def test_ocr_settings_move_only_the_signatures_of_files_ocr_reads(tmp_path, minilm_path, capsys):
    """Changing how OCR reads (or installing the engine) re-reads scans and pictures, never the
    Markdown and text files beside them: their signatures do not carry OCR's settings."""
    folder = scans(tmp_path / "docs")
    (folder / "notes.md").write_text("# Notes\n\nThe ferry to the island leaves at seven.\n", encoding="utf-8")
    common = ["--store", str(tmp_path / "store"), "--set", f"embedding.model={minilm_path}", "--json"]
    assert main(["ingest", str(folder), *common]) == 0
    assert json.loads(capsys.readouterr().out)["added"] == 3
    assert main(["ingest", str(folder), *common, "--set", "loading.ocr_dpi=300"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["updated"], report["unchanged"]) == (2, 1)
