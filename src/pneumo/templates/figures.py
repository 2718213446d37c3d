"""The one figure style of the reports: pyplot-free (thread-safe) matplotlib figures at one DPI, saved atomically."""

from __future__ import annotations

import io
import os
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from pneumo import atomic

DPI = 100


def new_figure(width: float = 5.0, height: float = 4.0) -> Figure:
    """A figure of ``width`` x ``height`` inches with constrained layout, on its own Agg canvas (no pyplot)."""
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def png_bytes(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()


def save_png(fig: Figure, path: str | os.PathLike) -> Path:
    """Write ``fig`` as a PNG to ``path`` atomically; returns the path."""
    return atomic.write_bytes(path, png_bytes(fig))
