"""A picture of the collection's embedding space (`rag map`): the stored vectors in two dimensions.

The vectors are projected with PCA (scikit-learn, the default) or UMAP (umap-learn, where installed)
and drawn twice: ``map.png`` (matplotlib's Agg renderer, a fixed pixel size) to read in a terminal
session or put in a report, and ``map.html``, one self-contained page (its data, script and SVG all
inline; nothing is fetched from anywhere) where hovering a point shows its chunk. A query, projected
with the same fitted projection, is drawn as a star and its top-k hits are circled.

This is a view over what the store holds, not a pipeline stage: it imports no stage module, and the
pipeline hands it the points (see ``Pipeline.map``).
"""

from __future__ import annotations

import html
import importlib
import json
import os
import time
import warnings
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from rag.errors import ConfigError
from rag.figures import agg_figure, png_bytes
from rag.files import write_atomic
from rag.types import Chunk

METHODS = ("pca", "umap")
COLOR_BY = ("source", "format", "cluster")
SEED = 0  # one seed for the sample, PCA, UMAP and k-means: the same store gives the same map

# The PNG is always 1000 x 750 pixels (width, height), at 100 dpi. The plot fills AXES_RECT (left,
# bottom, width, height as fractions of the figure); the legend sits to its right.
DPI = 100
PNG_SIZE = (1000, 750)
AXES_RECT = (0.03, 0.04, 0.64, 0.88)

# One colour per group, the largest groups first; groups past the palette share OTHER_COLOR.
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#bcbd22",
           "#17becf", "#393b79", "#e7969c")
OTHER_COLOR = "#a0a0a0"
MAX_CLUSTERS = 8

HTML_SIZE = (960, 640)  # the SVG's width and height in CSS pixels
TEXT_PREVIEW = 280  # characters of a chunk's text shown when it is hovered


@dataclass
class MapPoints:
    """The chunks to draw: ``vectors[i]`` (float32, one row per chunk) is ``ids[i]``'s stored vector."""

    ids: list[str]
    vectors: np.ndarray
    texts: list[str]
    metadatas: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.vectors = np.asarray(self.vectors, dtype=np.float32)
        if not self.metadatas:
            self.metadatas = [{} for _ in self.ids]
        n = len(self.ids)
        if self.vectors.ndim != 2 or len(self.vectors) != n or len(self.texts) != n or len(self.metadatas) != n:
            raise ValueError(f"MapPoints: {n} ids, {len(self.texts)} texts, {len(self.metadatas)} metadatas "
                             f"and vectors of shape {self.vectors.shape} do not line up")

    @classmethod
    def from_chunks(cls, pairs: Sequence[tuple[Chunk, np.ndarray | None]]) -> MapPoints:
        """From what ``VectorStore.get(ids, embeddings=True)`` returns."""
        kept = [(chunk, vector) for chunk, vector in pairs if vector is not None]
        dimension = len(kept[0][1]) if kept else 0
        return cls(ids=[chunk.id for chunk, _ in kept],
                   vectors=np.array([vector for _, vector in kept], dtype=np.float32).reshape(len(kept), dimension),
                   texts=[chunk.text for chunk, _ in kept], metadatas=[chunk.metadata for chunk, _ in kept])


# -- options, checked before anything is read ----------------------------------------------------------


def _require(module: str, package: str, extra: str, what: str = "rag map") -> Any:
    """An optional dependency, or one line that says how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ConfigError(f'{what} needs {package}, which is not installed: pip install -e ".[{extra}]"') from None


def check_options(*, color_by: str, method: str, limit: int, k: int | None = None) -> None:
    """Bad values and missing packages fail here, in one line, before the store is read."""
    if method not in METHODS:
        raise ConfigError(f"map: --method {method!r} is not one of {', '.join(METHODS)}")
    if color_by not in COLOR_BY:
        raise ConfigError(f"map: --color-by {color_by!r} is not one of {', '.join(COLOR_BY)}")
    if limit < 1:
        raise ConfigError(f"map: --limit must be at least 1, got {limit}")
    if k is not None and k < 1:
        raise ConfigError(f"map: -k must be at least 1, got {k}")
    _require("sklearn", "scikit-learn", "map")
    _require("matplotlib", "matplotlib", "map")
    if method == "umap":
        _require("umap", "umap-learn", "umap", what="--method umap")


def sample_ids(ids: Iterable[str], limit: int, *, keep: Sequence[str] = (), seed: int = SEED) -> list[str]:
    """At most ``limit`` ids: every id in ``keep`` (the query's hits, so they can be drawn), then a
    seeded sample of the others, taken from the sorted ids so that the same store and limit always
    give the same map."""
    if limit < 1:
        raise ConfigError(f"map: --limit must be at least 1, got {limit}")
    everything = sorted(set(ids))
    present = set(everything)
    kept = [i for i in dict.fromkeys(keep) if i in present]
    taken = set(kept)
    rest = [i for i in everything if i not in taken]
    room = max(0, limit - len(kept))
    if room < len(rest):
        picks = np.random.default_rng(seed).choice(len(rest), size=room, replace=False)
        rest = [rest[i] for i in np.sort(picks)]
    return kept + rest


# -- projection and colours ------------------------------------------------------------------------------


def project(vectors: np.ndarray, method: str = "pca",
            query_vector: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """(n, 2) coordinates of ``vectors``, and the query's (2,) coordinates from the same fitted
    projection (None without a query)."""
    vectors = np.asarray(vectors, dtype=np.float32)
    n = len(vectors)
    query = None if query_vector is None else np.asarray(query_vector, dtype=np.float32).reshape(1, -1)
    if method == "pca":
        if n == 1:  # nothing to spread: the one chunk (and the query) at the centre
            return np.zeros((1, 2), dtype=np.float32), None if query is None else np.zeros(2, dtype=np.float32)
        decomposition = _require("sklearn.decomposition", "scikit-learn", "map")
        reducer = decomposition.PCA(n_components=min(2, n, vectors.shape[1]), random_state=SEED)
    elif method == "umap":
        if n < 3:
            raise ConfigError(f"map: --method umap needs at least 3 chunks, this map has {n}; use --method pca")
        umap = _require("umap", "umap-learn", "umap", what="--method umap")
        # Neighbours by cosine, as text embeddings are compared (the default store space); UMAP's
        # default of 15 neighbours, fewer on a small sample.
        reducer = umap.UMAP(n_components=2, n_neighbors=min(15, n - 1), metric="cosine", random_state=SEED)
    else:
        raise ConfigError(f"map: --method {method!r} is not one of {', '.join(METHODS)}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # umap: "n_jobs overridden by setting random_state"
        xy = _two_columns(reducer.fit_transform(vectors))
        at = None if query is None else _two_columns(reducer.transform(query))[0]
    return xy, at


def _two_columns(xy: np.ndarray) -> np.ndarray:
    """PCA of two chunks has one component; the picture wants two columns all the same."""
    xy = np.asarray(xy, dtype=np.float32)
    if xy.shape[1] < 2:
        xy = np.hstack([xy, np.zeros((len(xy), 2 - xy.shape[1]), dtype=np.float32)])
    return xy


def color_groups(points: MapPoints, color_by: str) -> tuple[list[int], list[dict[str, Any]]]:
    """Each point's group index, and the groups (label, colour, count), the largest first. Past
    the palette's size, the smallest groups are merged into one "other" group."""
    if color_by == "cluster":
        cluster = _require("sklearn.cluster", "scikit-learn", "map")
        # No more clusters than distinct vectors: repeated text gives identical vectors, and k-means
        # asked for more clusters than points leaves some empty (with a warning).
        distinct = len(np.unique(points.vectors, axis=0))
        clusters = min(MAX_CLUSTERS, distinct)
        labels = cluster.KMeans(n_clusters=clusters, n_init=3, random_state=SEED).fit_predict(points.vectors)
        names = [f"cluster {int(label) + 1}" for label in labels]
    elif color_by in ("source", "format"):
        names = [str(metadata.get(color_by) or "(none)") for metadata in points.metadatas]
    else:
        raise ConfigError(f"map: --color-by {color_by!r} is not one of {', '.join(COLOR_BY)}")
    counts = Counter(names)
    if color_by == "cluster":
        ordered = sorted(counts, key=lambda name: int(name.split()[1]))
    else:
        ordered = sorted(counts, key=lambda name: (-counts[name], name))
    named = ordered if len(ordered) <= len(PALETTE) else ordered[: len(PALETTE) - 1]
    labels = _source_labels(named) if color_by == "source" else named
    groups = [{"label": label, "color": PALETTE[i], "count": counts[name]}
              for i, (name, label) in enumerate(zip(named, labels, strict=True))]
    index = {name: i for i, name in enumerate(named)}
    if len(named) < len(ordered):
        groups.append({"label": f"other ({len(ordered) - len(named)} groups)", "color": OTHER_COLOR,
                       "count": sum(counts[name] for name in ordered[len(named):])})
    return [index.get(name, len(named)) for name in names], groups


def _source_labels(sources: list[str]) -> list[str]:
    """File paths as the legend shows them: relative to the folder they all share, which tells the
    groups apart no better. Identities that are not paths stay as they are; a point's tooltip
    always shows its full source."""
    paths = [source for source in sources if source != "(none)"]
    try:
        common = os.path.commonpath(paths) if len(paths) > 1 else os.path.dirname(paths[0]) if paths else ""
    except ValueError:  # absolute and relative paths mixed
        return sources
    if not common:
        return sources
    return [source if source == "(none)" else os.path.relpath(source, common) for source in sources]


# -- the map ---------------------------------------------------------------------------------------------


def draw_map(points: MapPoints, out: str | Path, *, color_by: str = "source", method: str = "pca",
             query: str | None = None, query_vector: np.ndarray | None = None, hit_ids: Sequence[str] = (),
             total: int | None = None, title: str = "") -> dict[str, Any]:
    """Project ``points``, colour them by ``color_by`` and write ``out/map.png`` and ``out/map.html``.

    ``total`` is the collection's size (the points may be a sample of it); ``hit_ids`` are the
    query's top-k, in rank order. Returns the paths, what was drawn and the seconds it took.
    """
    clock = time.perf_counter()
    if not points.ids:
        raise ValueError("draw_map: no points to draw")
    if query is not None and query_vector is None:
        raise ValueError("draw_map: a query needs its query_vector")
    check_options(color_by=color_by, method=method, limit=len(points.ids))
    total = len(points.ids) if total is None else total
    xy, query_xy = project(points.vectors, method, query_vector)
    group_of, groups = color_groups(points, color_by)
    row = {chunk_id: i for i, chunk_id in enumerate(points.ids)}
    hits = [row[i] for i in dict.fromkeys(hit_ids) if i in row]

    what = f"{len(points.ids):,} of {total:,} chunks" if len(points.ids) < total else f"all {total:,} chunks"
    heading = f"{title + ': ' if title else ''}{what}, {method.upper()}, coloured by {color_by}"

    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    png, page = folder / "map.png", folder / "map.html"
    _write_png(png, xy, [groups[g]["color"] for g in group_of], groups, query_xy, hits, heading, query)
    write_atomic(page, _html(points, xy, group_of, groups, query_xy, hits, heading, query))
    return {
        "png": str(png.resolve()), "html": str(page.resolve()), "points": len(points.ids), "total": total,
        "method": method, "color_by": color_by, "groups": len(groups), "query": query,
        "hits": [points.ids[i] for i in hits], "png_size": list(PNG_SIZE),
        "seconds": time.perf_counter() - clock,
    }


def _plain(text: str) -> str:
    """Text as matplotlib shows it literally: a ``$`` would start mathtext."""
    return text.replace("$", r"\$")


def _short(text: str, width: int) -> str:
    """A label cut to ``width`` characters, keeping its end (where a path's file name is)."""
    return text if len(text) <= width else "..." + text[-(width - 3):]


def _marker_area(n: int) -> float:
    """Points big enough to see on a small map, small enough not to be one blot on a large one."""
    return float(np.clip(4000.0 / n, 1.0, 40.0))


def _write_png(path: Path, xy: np.ndarray, colors: list[str], groups: list[dict[str, Any]],
               query_xy: np.ndarray | None, hits: list[int], heading: str, query: str | None) -> None:
    from matplotlib.lines import Line2D

    fig = agg_figure(*PNG_SIZE, dpi=DPI, what="rag map")
    ax = fig.add_axes(AXES_RECT)
    ax.scatter(xy[:, 0], xy[:, 1], c=colors, s=_marker_area(len(xy)), alpha=0.85, linewidths=0)
    handles = [Line2D([], [], marker="o", linestyle="", markersize=6, markerfacecolor=g["color"],
                      markeredgewidth=0, label=_plain(f"{_short(g['label'], 44)} ({g['count']:,})"))
               for g in groups]
    if hits:
        ax.scatter(xy[hits, 0], xy[hits, 1], s=max(60.0, 4 * _marker_area(len(xy))), facecolors="none",
                   edgecolors="black", linewidths=1.2, zorder=3)
        handles.append(Line2D([], [], marker="o", linestyle="", markersize=8, markerfacecolor="none",
                              markeredgecolor="black", label=f"query's top {len(hits)}"))
    if query_xy is not None:
        ax.scatter([query_xy[0]], [query_xy[1]], marker="*", s=320, c="black", edgecolors="white",
                   linewidths=0.8, zorder=4)
        handles.append(Line2D([], [], marker="*", linestyle="", markersize=12, color="black", label="query"))
    ax.set_aspect("equal", adjustable="datalim")
    ax.set_xticks([])
    ax.set_yticks([])
    lines = [_plain(heading)] + ([_plain(f"query: {_short(' '.join(query.split()), 90)}")] if query else [])
    ax.set_title("\n".join(lines), fontsize=10, loc="left")
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False, fontsize=8,
              borderaxespad=0)
    write_atomic(path, png_bytes(fig))


def _fit(xy: np.ndarray, width: float, height: float, pad: float) -> np.ndarray:
    """Coordinates scaled into a width x height box (y pointing down, as in SVG), one scale for both
    axes so that distances keep their proportions."""
    xy = np.asarray(xy, dtype=np.float64)  # float32 would print as 123.4000015258789 in the page
    low = xy.min(axis=0)
    span = xy.max(axis=0) - low
    span[span == 0] = 1.0
    scale = min((width - 2 * pad) / span[0], (height - 2 * pad) / span[1])
    left = pad + (width - 2 * pad - span[0] * scale) / 2
    top = pad + (height - 2 * pad - span[1] * scale) / 2
    x = left + (xy[:, 0] - low[0]) * scale
    y = top + (low[1] + span[1] - xy[:, 1]) * scale
    return np.round(np.stack([x, y], axis=1), 1)


def _script_json(data: Any) -> str:
    """JSON to embed in a <script>: every ``<``, ``>``, ``&`` and ``/`` written as a \\u escape, so no
    chunk text (one holding ``</script>`` or ``<!--``) can end the script early, and no URL a chunk
    quotes appears in the page as one. JSON.parse turns the escapes back into the text."""
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    for char in "<>&/":
        text = text.replace(char, f"\\u{ord(char):04x}")
    return text


def _where(metadata: dict[str, Any]) -> str:
    source = str(metadata.get("source") or "(no source)")
    return f"{source} (p. {metadata['page']})" if metadata.get("page") else source


def _html(points: MapPoints, xy: np.ndarray, group_of: list[int], groups: list[dict[str, Any]],
          query_xy: np.ndarray | None, hits: list[int], heading: str, query: str | None) -> str:
    width, height = HTML_SIZE
    placed = _fit(xy if query_xy is None else np.vstack([xy, query_xy]), width, height, pad=24)
    n = len(points.ids)
    data = {
        "points": {
            "id": points.ids, "x": placed[:n, 0].tolist(), "y": placed[:n, 1].tolist(), "group": group_of,
            "source": [_where(m) for m in points.metadatas],
            "text": [" ".join(t.split())[:TEXT_PREVIEW] for t in points.texts],
        },
        "groups": groups,
        "hits": hits,
        "query": None if query_xy is None else {"text": query, "x": float(placed[n, 0]), "y": float(placed[n, 1])},
        "radius": round(float(np.clip(300.0 / np.sqrt(n), 1.5, 6.0)), 2),
    }
    # The page (package data) holds everything inline; it reads the SVG namespace from its own <svg>
    # element rather than writing it out, so it holds no URL at all.
    page = resources.files("rag").joinpath("static/map.html").read_text(encoding="utf-8")
    return (page.replace("__TITLE__", html.escape(heading)).replace("__WIDTH__", str(width))
            .replace("__HEIGHT__", str(height)).replace("__DATA__", _script_json(data)))
