"""What an evaluation leaves behind: the per-query rows, the metrics, a Markdown report comparing
the retrieval modes and its pictures; and the table printed on the terminal."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rag.config import Settings, dump_settings
from rag.errors import ConfigError
from rag.evaluation import metrics
from rag.figures import agg_figure, png_bytes
from rag.files import write_atomic
from rag.text import log

if TYPE_CHECKING:
    from matplotlib.figure import Figure

COMPARED = "ndcg@10"  # the per-query metric on which hybrid is set against dense
# Picture file -> size in pixels (width, height): a figure of (width / DPI, height / DPI) inches.
PICTURES = {"recall_at_k.png": (800, 500), "hybrid_vs_dense.png": (1000, 450)}
DPI = 100


def draw_pictures(out: Path, curves: dict[str, list[float]], per_query: dict[str, dict[str, dict[str, float]]],
                  outcomes: dict[str, int]) -> list[str]:
    """Recall@k against k for each mode, and hybrid's per-query score against dense's; the file names
    written (none when matplotlib, an optional extra, is missing)."""
    try:
        recall = _recall_picture(curves)
    except ConfigError:
        log('report without pictures: matplotlib is not installed (pip install -e ".[map]" adds them)')
        return []
    write_atomic(out / "recall_at_k.png", png_bytes(recall))
    write_atomic(out / "hybrid_vs_dense.png", png_bytes(_hybrid_picture(per_query, outcomes)))
    return list(PICTURES)


def _figure(name: str) -> Figure:
    width, height = PICTURES[name]
    return agg_figure(width, height, dpi=DPI, what="the report's pictures", layout="constrained")


def _recall_picture(curves: dict[str, list[float]]) -> Figure:
    fig = _figure("recall_at_k.png")
    ax = fig.subplots()
    for mode, curve in curves.items():
        ax.plot(range(1, len(curve) + 1), curve, label=f"{mode} (recall@{len(curve)} {curve[-1]:.3f})")
    ax.set(xscale="log", xlabel="k (documents retrieved)", ylabel="mean recall@k", ylim=(0, 1.02),
           title="Recall at depth k, by retrieval mode")
    ax.xaxis.set_major_formatter("{x:g}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right")
    return fig


def _hybrid_picture(per_query: dict[str, dict[str, dict[str, float]]], outcomes: dict[str, int]) -> Figure:
    from matplotlib.ticker import MaxNLocator


    dense, hybrid = per_query["dense"], per_query["hybrid"]
    pairs = sorted((dense[q][COMPARED], hybrid[q][COMPARED]) for q in dense.keys() & hybrid.keys())
    colours = {"better": "tab:green", "worse": "tab:red", "equal": "tab:gray"}
    fig = _figure("hybrid_vs_dense.png")
    scatter, spread = fig.subplots(1, 2)
    scatter.scatter([a for a, _ in pairs], [b for _, b in pairs], s=14, alpha=0.6,
                    c=[colours[metrics.outcome(a, b)] for a, b in pairs])
    scatter.plot([0, 1], [0, 1], color="black", linewidth=0.8)
    scatter.set(xlabel=f"dense {COMPARED}", ylabel=f"hybrid {COMPARED}", xlim=(-0.02, 1.02), ylim=(-0.02, 1.02),
                aspect="equal", title="one point per query")
    pairs.sort(key=lambda pair: pair[1] - pair[0])
    spread.bar(range(len(pairs)), [b - a for a, b in pairs], width=1.0,
               color=[colours[metrics.outcome(a, b)] for a, b in pairs])
    spread.axhline(0, color="black", linewidth=0.8)
    spread.set(xlabel="queries, sorted by the difference", ylabel=f"hybrid - dense {COMPARED}",
               xlim=(-0.5, len(pairs) - 0.5), ylim=(-1.05, 1.05), title="per-query difference")
    spread.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.suptitle(f"Hybrid against dense: fusion helps {outcomes['better']} queries, hurts {outcomes['worse']}, "
                 f"leaves {outcomes['equal']} equal")
    return fig


def write_outputs(out: Path, settings: Settings, result: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    """``per_query.jsonl``, ``config.yaml`` (the effective settings), ``report.md`` and ``metrics.json``."""
    write_atomic(out / "per_query.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    write_atomic(out / "config.yaml", dump_settings(settings))
    write_atomic(out / "report.md", format_result(result, markdown=True))
    write_atomic(out / "metrics.json", json.dumps({k: v for k, v in result.items() if k != "config"}, indent=2))


def format_result(result: dict[str, Any], *, markdown: bool = False) -> str:
    """Metrics as an aligned table (plain text for the terminal, Markdown for reports)."""
    title = f"{result['task']} evaluation, mode {result['mode']}"
    count = result.get("queries", result.get("questions"))
    lines = [f"# {title}", "", f"{count} queries; {result['seconds']:.1f} s in all", ""] if markdown else [
        f"{title}: {count} queries, {result['seconds']:.1f} s"]
    rows = [(name, f"{value:.4f}") for name, value in result["metrics"].items()]
    for key in ("latency_ms", "answer_latency_ms"):
        if result.get(key):
            rows += [(f"{key.removesuffix('_ms')} {p} (ms)", f"{v:.1f}") for p, v in result[key].items()]
    if markdown:
        lines += ["| metric | value |", "| --- | --- |"] + [f"| {n} | {v} |" for n, v in rows]
    else:
        width = max(len(n) for n, _ in rows)
        lines += [f"  {n:<{width}}  {v}" for n, v in rows]
    if result.get("modes"):
        lines += _format_modes(result, markdown)
    return "\n".join(lines) + "\n"


def _format_modes(result: dict[str, Any], markdown: bool) -> list[str]:
    """The same metrics for every mode side by side, how hybrid fares against dense, the pictures."""
    modes = result["modes"]
    names = list(next(iter(modes.values())))
    outcomes = result["hybrid_vs_dense"]
    verdict = (f"hybrid against dense on {COMPARED}: fusion helps {outcomes['better']} queries, "
               f"hurts {outcomes['worse']}, leaves {outcomes['equal']} equal")
    if not markdown:
        width = max(len(n) for n in names)
        return (["by mode:", f"  {'':<{width}}" + "".join(f"  {m:>8}" for m in modes)]
                + [f"  {n:<{width}}" + "".join(f"  {modes[m][n]:>8.4f}" for m in modes) for n in names]
                + [verdict])
    lines = ["", "## By mode", "", "| metric | " + " | ".join(modes) + " |", "| --- |" + " --- |" * len(modes)]
    lines += [f"| {n} | " + " | ".join(f"{modes[m][n]:.4f}" for m in modes) + " |" for n in names]
    lines += ["", verdict[0].upper() + verdict[1:] + ".", ""]
    if result.get("pictures"):
        lines += [f"![{name.removesuffix('.png').replace('_', ' ')}]({name})" for name in result["pictures"]]
    else:
        lines += ['No pictures: matplotlib is not installed (`pip install -e ".[map]"` adds them).']
    return lines


