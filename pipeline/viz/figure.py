"""The figure every picture is drawn on: matplotlib's object API on the Agg canvas, saved as PNG.

matplotlib is the optional ``[plots]`` extra, so it is imported here, inside the functions that
draw, never at module level: ``civt-pipe --help`` and every other command work without it, and
a missing extra is one line naming the install command. ``pyplot`` is never used: a
:class:`~matplotlib.figure.Figure` on its own Agg canvas draws off-screen without touching
matplotlib's global backend or figure registry, so the library can be called from a notebook or
a server without side effects.
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import TYPE_CHECKING

from ..runtime.atomic import atomic_write_bytes, check_output_file
from ..runtime.errors import UserError

if TYPE_CHECKING:
    from matplotlib.figure import Figure

DPI = 100
"""Pixels per inch of every PNG; a panel of ``PANEL_INCHES`` is then 480×320 pixels."""
PANEL_INCHES = (4.8, 3.2)
"""Width and height of one panel (inches)."""
INSTALL_HINT = "pip install 'civt-pipe[plots]'"
"""What a user without matplotlib runs (named by the one-line error)."""


def require_matplotlib() -> None:
    """Raise a one-line :class:`UserError` naming the install command unless matplotlib imports.

    Commands call it before any slow work, so a missing extra is reported at once.
    """
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise UserError(f"plots need matplotlib, the [plots] extra: {INSTALL_HINT}") from None


def check_png_path(path: Path) -> None:
    """Before any work: ``path`` ends in ``.png`` and can be written (one line otherwise)."""
    if path.suffix.lower() != ".png":
        raise UserError(f"{path}: the picture is written as PNG; give a file name ending in .png")
    check_output_file(path)


def grid_shape(panels: int, *, columns: int = 3) -> tuple[int, int]:
    """``(rows, columns)`` of a grid holding ``panels`` panels, at most ``columns`` wide."""
    if panels < 1:
        raise ValueError("a figure needs at least one panel")
    cols = min(panels, columns)
    return math.ceil(panels / cols), cols


def png_size(rows: int, cols: int) -> tuple[int, int]:
    """``(width, height)`` in pixels of the PNG of a ``rows`` × ``cols`` panel grid."""
    return round(cols * PANEL_INCHES[0] * DPI), round(rows * PANEL_INCHES[1] * DPI)


def new_figure(rows: int, cols: int) -> Figure:
    """A figure sized for a ``rows`` × ``cols`` panel grid (:func:`png_size`), on an Agg canvas."""
    require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    # Constrained layout from the start: colorbars added later then take room from their panel.
    fig = Figure(
        figsize=(cols * PANEL_INCHES[0], rows * PANEL_INCHES[1]), dpi=DPI, layout="constrained"
    )
    FigureCanvasAgg(fig)
    return fig


def save_png(fig: Figure, path: Path) -> None:
    """Write ``fig`` to ``path`` as PNG, atomically, at exactly :func:`png_size` pixels.

    No ``bbox_inches="tight"``: it would crop the canvas to its contents and change the size.
    """
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    atomic_write_bytes(path, buffer.getvalue())
