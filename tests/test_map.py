"""`rag map` end to end: a real ingest of a small folder, the real CLI, the PNG decoded, and the HTML
page rendered by a real headless Chromium (Debian's `chromium`) and read back from its DOM."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from bs4 import BeautifulSoup
from PIL import Image
from support import PROSE, make_folder

from rag import mapping
from rag.cli import build_parser, main
from rag.pipeline import Pipeline

# A chunk that would break a page that embeds text carelessly, and that quotes a URL.
HOSTILE = {
    "hostile.txt": "Closing tags in a note: </script><script>document.title = 'broken'</script> <!-- "
    "and a link to https://example.com/page?a=1&b=2 that must stay text.",
}
QUERY = "What are the control rods made of?"


@pytest.fixture(scope="module")
def store(tmp_path_factory, minilm_path) -> dict:
    root = tmp_path_factory.mktemp("map")
    docs = make_folder(root / "docs", {**PROSE, **HOSTILE})
    pipeline = Pipeline.from_config({"store": {"path": str(root / "store")}, "embedding": {"model": str(minilm_path)}})
    assert not pipeline.ingest([docs]).failed
    ids = pipeline.store.ids()
    assert len(ids) > 3  # so that --limit 3 is a sample
    vectors = np.stack([vector for _, vector in pipeline.store.get(sorted(ids), embeddings=True)])
    return {"root": root, "path": root / "store", "model": minilm_path, "ids": ids,
            "distinct": len(np.unique(vectors, axis=0))}


def run(store: dict, *argv: str) -> tuple[int, str, str]:
    """``rag ARGV`` on the store, through the real CLI: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([*argv, "--store", str(store["path"]), "--set", f"embedding.model={store['model']}"])
    return code, out.getvalue(), err.getvalue()


def rag_map(store: dict, out: Path, *extra: str) -> tuple[dict, str]:
    code, stdout, stderr = run(store, "map", "--out", str(out), "--json", *extra)
    assert code == 0, stderr
    return json.loads(stdout), stderr


def rendered(page: Path) -> BeautifulSoup:
    """The page's DOM after its scripts ran, as headless Chromium dumps it."""
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("Debian's chromium is not installed (apt-get install chromium); CI installs it")
    done = subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--no-first-run", "--dump-dom", page.as_uri()],
        capture_output=True, text=True, timeout=180, check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return BeautifulSoup(done.stdout, "html.parser")


def embedded_data(page: Path) -> dict:
    """The point data the page carries, parsed as the page's own script parses it."""
    soup = BeautifulSoup(page.read_text(encoding="utf-8"), "html.parser")
    return json.loads(soup.find("script", id="map-data").string)


@pytest.fixture(scope="module")
def full_map(store) -> dict:
    result, stderr = rag_map(store, store["root"] / "full")
    return {"result": result, "stderr": stderr}


def test_map_writes_a_png_of_the_documented_size_with_points(store, full_map):
    result = full_map["result"]
    assert full_map["stderr"].strip().splitlines()[-1] == f"rag: map: all {len(store['ids'])} chunks"
    assert result["points"] == result["total"] == len(store["ids"])
    assert result["method"] == "pca" and result["color_by"] == "source"
    image = Image.open(result["png"])
    assert image.format == "PNG" and image.size == mapping.PNG_SIZE == tuple(result["png_size"])
    pixels = np.asarray(image.convert("RGB")).astype(int)
    # Inside the plot (the legend sits outside it), coloured points, not just axes and white.
    width, height = mapping.PNG_SIZE
    left, bottom, w, h = mapping.AXES_RECT
    plot = pixels[int((1 - bottom - h) * height) + 3 : int((1 - bottom) * height) - 3,
                  int(left * width) + 3 : int((left + w) * width) - 3]
    colourful = plot.max(axis=2) - plot.min(axis=2) > 60
    assert colourful.sum() > 100
    assert len(np.unique(plot[colourful] // 32, axis=0)) >= 3  # several sources, several hues
    assert (plot.min(axis=2) < 250).mean() < 0.5  # mostly background: points, not a blot


def test_map_html_is_self_contained_and_escaped(full_map):
    page = Path(full_map["result"]["html"])
    text = page.read_text(encoding="utf-8")
    assert "http://" not in text and "https://" not in text
    assert not re.search(r"""\b(src|href)\s*=|@import|url\(""", text)
    assert text.lower().count("<script") == 2  # the data and the code: the chunk's </script> broke nothing
    data = embedded_data(page)
    hostile = [t for t in data["points"]["text"] if "Closing tags" in t]
    assert hostile and "</script><script>" in hostile[0] and "https://example.com/page?a=1&b=2" in hostile[0]


def test_map_html_renders_one_point_per_chunk(store, full_map):
    result = full_map["result"]
    dom = rendered(Path(result["html"]))
    points = dom.select("circle.point")
    assert len(points) == result["points"] == len(store["ids"])
    assert {p["data-id"] for p in points} == store["ids"]
    assert not dom.select("polygon.query") and not dom.select("circle.point.hit")
    legend = [item.get_text().rsplit(" (", 1)[0] for item in dom.select("#legend li")]
    assert sorted(legend) == sorted({**PROSE, **HOSTILE}) and result["groups"] == 4  # one per file, by name
    assert dom.title.string != "broken"


def test_map_html_hover_shows_source_and_text(full_map, tmp_path):
    # The page as written, plus one script that hovers the hostile chunk's point the way a mouse does.
    page = Path(full_map["result"]["html"]).read_text(encoding="utf-8")
    hover = ("<script>var dot = Array.from(document.querySelectorAll('circle.point')).find(function (c) {"
             " return c.getAttribute('data-id') === document.body.getAttribute('data-hover'); });"
             " dot.dispatchEvent(new MouseEvent('mouseover', {bubbles: true}));</script>")
    data = embedded_data(Path(full_map["result"]["html"]))["points"]
    hostile = next(i for i, t in enumerate(data["text"]) if "Closing tags" in t)
    hovered = tmp_path / "hovered.html"
    hovered.write_text(page.replace("<body>", f'<body data-hover="{data["id"][hostile]}">')
                       .replace("</body>", hover + "</body>"), encoding="utf-8")
    tip = rendered(hovered).select_one("#tip")
    assert "display: block" in tip["style"]
    assert tip.select_one("b").get_text().endswith("hostile.txt")
    assert tip.get_text().endswith(HOSTILE["hostile.txt"])  # the text itself, tags and URL as text


def test_map_limit_draws_a_reproducible_sample(store, tmp_path):
    result, stderr = rag_map(store, tmp_path / "a", "--limit", "3", "--color-by", "format")
    total = len(store["ids"])
    assert stderr.strip().splitlines()[-1] == f"rag: map: 3 of {total} chunks sampled"
    assert (result["points"], result["total"]) == (3, total)
    assert Image.open(result["png"]).size == mapping.PNG_SIZE
    dom = rendered(Path(result["html"]))
    drawn = [p["data-id"] for p in dom.select("circle.point")]
    assert len(drawn) == 3 and set(drawn) <= store["ids"]
    again, _ = rag_map(store, tmp_path / "b", "--limit", "3", "--color-by", "format")
    assert embedded_data(Path(again["html"]))["points"]["id"] == drawn


def test_map_query_draws_the_query_and_circles_its_hits(store, tmp_path):
    code, stdout, _ = run(store, "search", QUERY, "-k", "2", "--json")
    assert code == 0
    expected = [hit["id"] for hit in json.loads(stdout)["hits"]]
    # A sample smaller than the collection still holds the hits.
    result, _ = rag_map(store, tmp_path / "q", "--query", QUERY, "-k", "2", "--limit", "3")
    assert result["hits"] == expected and len(expected) == 2 and result["points"] == 3
    dom = rendered(Path(result["html"]))
    assert len(dom.select("circle.point")) == 3
    assert [p["data-id"] for p in dom.select("circle.point.hit")] == expected
    assert len(dom.select("circle.hit-ring")) == 2
    assert len(dom.select("polygon.query")) == 1
    assert QUERY in dom.select_one("#query-line").get_text()


def test_map_color_by_cluster(store, tmp_path):
    result, _ = rag_map(store, tmp_path / "c", "--color-by", "cluster")
    # k-means with k = min(8, distinct vectors); some alpha chunks are the same repeated sentence.
    assert result["groups"] == min(8, store["distinct"]) and store["distinct"] > 1
    labels = [g["label"] for g in embedded_data(Path(result["html"]))["groups"]]
    assert labels == [f"cluster {i}" for i in range(1, result["groups"] + 1)]
    assert len(rendered(Path(result["html"])).select("#legend li")) == result["groups"]


def test_map_choices_agree_with_the_module():
    parser = build_parser()
    commands = next(a for a in parser._actions if a.dest == "command")
    options = {a.dest: a.choices for a in commands.choices["map"]._actions}
    assert tuple(options["method"]) == mapping.METHODS and tuple(options["color_by"]) == mapping.COLOR_BY


def test_map_bad_limit_is_one_line(store, tmp_path):
    code, _, stderr = run(store, "map", "--out", str(tmp_path / "m"), "--limit", "0")
    assert code == 2
    assert stderr.strip().splitlines() == ["rag: error: map: --limit must be at least 1, got 0"]
    assert not (tmp_path / "m").exists()


def test_map_without_a_store_says_to_ingest(tmp_path, minilm_path):
    store = {"path": tmp_path / "nothing", "model": minilm_path}
    code, _, stderr = run(store, "map", "--out", str(tmp_path / "m"))
    assert code == 2 and len(stderr.strip().splitlines()) == 1 and "rag ingest" in stderr


@pytest.mark.skipif(importlib.util.find_spec("umap") is not None, reason="umap-learn is installed here")
def test_map_umap_without_umap_learn_is_one_line(store, tmp_path):
    code, _, stderr = run(store, "map", "--out", str(tmp_path / "m"), "--method", "umap")
    assert code == 2
    assert stderr.strip().splitlines() == [
        'rag: error: --method umap needs umap-learn, which is not installed: pip install -e ".[umap]"']
    assert not (tmp_path / "m").exists()


@pytest.mark.skipif(importlib.util.find_spec("umap") is None, reason="umap-learn is not installed")
def test_map_umap(store, tmp_path):
    result, _ = rag_map(store, tmp_path / "u", "--method", "umap", "--query", QUERY)
    assert result["method"] == "umap" and result["points"] == len(store["ids"])
    assert Image.open(result["png"]).size == mapping.PNG_SIZE
    assert len(embedded_data(Path(result["html"]))["points"]["id"]) == len(store["ids"])
