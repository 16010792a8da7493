"""Pictures drawn off screen: the map of a collection and the pictures of an evaluation report share
this one way of making a matplotlib figure (an optional extra)."""

from __future__ import annotations

import io
from typing import TYPE_CHECKING, Any

from rag.errors import ConfigError

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def agg_figure(width: int, height: int, *, dpi: int = 100, what: str = "this picture", **options: Any) -> Figure:
    """A Figure of ``width`` x ``height`` pixels on the Agg canvas of its own: no pyplot, no global
    backend, nothing left open, no display needed. Without matplotlib, one line naming the extra."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise ConfigError(f'{what} needs matplotlib, which is not installed: pip install -e ".[map]"') from None
    figure = Figure(figsize=(width / dpi, height / dpi), dpi=dpi, **options)
    FigureCanvasAgg(figure)
    return figure


def png_bytes(figure: Figure) -> bytes:
    """The figure as PNG, at the pixel size it was made with."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=figure.dpi)
    return buffer.getvalue()
