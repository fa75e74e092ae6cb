"""The pictures of ``civt-pipe study``: a table as bars, a series as a line, both mean ± std,
and the paired differences of either with their 95 % intervals.

Both take the dicts ``results.json`` holds for each plan (written by the study workflow):

- a *table* ``{"id", "title", "columns": [str], "rows": [{"label", "cells": {column: cell}}]}``
  becomes grouped bars, one group per row and one bar per column, each with its ± std error bar;
- a *series* ``{"id", "title", "x_label", "y_label", "x_log2", "points": [{"x", "label", ...}],
  "reference": None | cell}`` becomes a line through the points' means with ± std error bars
  (x on a log2 axis when ``x_log2``), and the reference, when there is one, a horizontal line at
  its mean inside a ± std band.

A cell is ``{"values": [one per seed], "mean", "std", "n", "runs"}``; std is over seeds (0 with
one seed, drawn as no bar). matplotlib is drawn as everywhere in ``viz/``: Agg canvas, imported
only to draw (:mod:`.figure`), one line naming the ``[plots]`` extra when it is missing.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..runtime.errors import UserError
from .figure import check_png_path, new_figure, save_png

_WIDE_GROUPS = 6
"""Bar groups × bars beyond which a table's figure takes two panel widths (readable labels)."""


def _wrapped(title: str) -> str:
    """A title broken into lines that fit one 480 px panel at font size 10."""
    return textwrap.fill(title, width=58)


def _cell_stats(cell: Mapping[str, Any], where: str) -> tuple[float, float, int]:
    """``(mean, std, n)`` of a cell, or a one-line error naming ``where`` it is."""
    try:
        mean, std, n = float(cell["mean"]), float(cell["std"]), int(cell["n"])
    except (KeyError, TypeError, ValueError):
        raise UserError(f"{where}: a cell needs a numeric mean, std and n") from None
    if not (math.isfinite(mean) and math.isfinite(std)) or std < 0 or n < 1:
        raise UserError(f"{where}: mean {mean}, std {std}, n {n} is not a summary over seeds")
    return mean, std, n


def _seeds_note(counts: Sequence[int]) -> str:
    """``mean ± std over 3 seeds`` (or a range of seed counts when cells differ)."""
    low, high = min(counts), max(counts)
    seeds = f"{low}" if low == high else f"{low}–{high}"
    return f"mean ± std over {seeds} seed{'s' if high > 1 else ''}"


def plot_table(table: Mapping[str, Any], out: Path) -> Path:
    """Draw ``table`` as grouped bars (mean ± std per row and column) and write ``out`` (PNG).

    One quantity per axis: columns of different ``table["units"]`` ({column: unit}, e.g. CPU
    seconds beside top-1 %) get a panel each, side by side; without units every column shares
    one axis. A missing cell leaves its bar out. A table without any cell is a one-line
    :class:`UserError`. Returns ``out``.
    """
    name = str(table.get("id") or table.get("title") or "table")
    columns = [str(c) for c in table.get("columns") or []]
    rows = list(table.get("rows") or [])
    bars = [
        (r, c, _cell_stats(row["cells"][column], f"table {name}, {row.get('label')!r}/{column}"))
        for r, row in enumerate(rows)
        for c, column in enumerate(columns)
        if column in (row.get("cells") or {})
    ]
    if not bars:
        raise UserError(f"table {name} has no cell to plot")
    check_png_path(out)
    units = dict(table.get("units") or {})
    panels: dict[str, list[int]] = {}
    for c, column in enumerate(columns):
        panels.setdefault(str(units.get(column, "")), []).append(c)
    wide = len(panels) == 1 and len(rows) * len(columns) > _WIDE_GROUPS
    fig = new_figure(1, 2 if wide else len(panels))
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (unit, mine) in zip(axes, panels.items(), strict=True):
        _bars(ax, rows, columns, [b for b in bars if b[1] in mine], mine)
        note = _seeds_note([n for _, c, (_, _, n) in bars if c in mine])
        ax.set_ylabel(f"{unit} ({note})" if unit else note)
    title = _wrapped(str(table.get("title") or name))
    if len(panels) == 1:
        axes[0].set_title(title, fontsize=10)
    else:
        fig.suptitle(title, fontsize=10)
    save_png(fig, out)
    return out


def _bars(
    ax: Any,
    rows: Sequence[Mapping[str, Any]],
    columns: Sequence[str],
    bars: Sequence[tuple[int, int, tuple[float, float, int]]],
    mine: Sequence[int],
) -> None:
    """One panel of :func:`plot_table`: the bars of the columns ``mine`` (their indices)."""
    width = 0.8 / len(mine)
    for slot, c in enumerate(mine):
        found = [(r, stats) for r, col, stats in bars if col == c]
        if not found:
            continue
        ax.bar(
            [r - 0.4 + width * (slot + 0.5) for r, _ in found],
            [mean for _, (mean, _, _) in found],
            width,
            yerr=[std for _, (_, std, _) in found],
            capsize=3,
            color=f"C{c % 10}",
            label=columns[c],
        )
    ax.set_xticks(range(len(rows)), [str(row.get("label", "")) for row in rows])
    ax.tick_params(axis="x", labelrotation=15)
    ax.grid(axis="y", alpha=0.3)
    if len(mine) > 1:
        ax.legend(fontsize="small")


def plot_paired(item: Mapping[str, Any], unit: str, out: Path) -> Path:
    """Draw the paired comparisons of a table or series (``item["paired"]``, see
    :mod:`..workflows.study.stats`) and write ``out`` (PNG): per comparison its mean difference
    with the 95 % interval as a horizontal error bar, a line at 0; a filled marker where the
    interval excludes 0 (*separated*), an open one where it does not. ``unit`` names the
    difference's quantity (e.g. ``top-1 (points)``). No comparisons: a one-line
    :class:`UserError`. Returns ``out``.
    """
    name = str(item.get("id") or item.get("title") or "comparisons")
    entries = list(item.get("paired") or [])
    if not entries:
        raise UserError(f"{name} has no paired comparison to plot")
    parsed = []
    for e in entries:
        try:
            mean, n = float(e["mean"]), int(e["n"])
            low = None if e.get("low") is None else float(e["low"])
            high = None if e.get("high") is None else float(e["high"])
        except (KeyError, TypeError, ValueError):
            raise UserError(f"{name}: a comparison needs a numeric mean, n, low and high") from None
        parsed.append((str(e.get("label", "")), mean, low, high, n, bool(e.get("separated"))))
    check_png_path(out)
    fig = new_figure(1, 2)  # two panel widths: the comparisons' labels take a third of it
    ax = fig.subplots()
    ys = list(range(len(parsed)))[::-1]  # the first comparison on top
    for y, (_, mean, low, high, _, separated) in zip(ys, parsed, strict=True):
        err = [[mean - low], [high - mean]] if low is not None and high is not None else None
        ax.errorbar(
            [mean],
            [y],
            xerr=err,
            marker="o",
            markersize=6,
            capsize=3,
            color="C0",
            markerfacecolor="C0" if separated else "white",
        )
    ax.axvline(0.0, color="0.3", linewidth=1)
    ax.set_ylim(-0.75, len(parsed) - 0.25)  # two comparisons sit mid-panel, not at its edges
    ax.set_yticks(ys, [textwrap.shorten(label, 48) for label, *_ in parsed], fontsize=8)
    counts = [n for *_, n, _ in parsed]
    low_n, high_n = min(counts), max(counts)
    seeds = f"{low_n}" if low_n == high_n else f"{low_n}–{high_n}"
    ax.set_xlabel(
        f"paired difference, {unit}: mean, 95 % interval over {seeds} seeds "
        "(filled: the interval excludes 0)",
        fontsize=9,
    )
    ax.set_title(_wrapped(f"{item.get('title') or name}: differences"), fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    save_png(fig, out)
    return out


def plot_series(series: Mapping[str, Any], out: Path) -> Path:
    """Draw ``series`` as a line of means with ± std error bars and write ``out`` (PNG).

    The x axis is log2 when ``series["x_log2"]`` (every x must then be positive) and its ticks
    carry the points' labels; the reference, when given, is a horizontal line at its mean in a
    ± std band. A series without points is a one-line :class:`UserError`. Returns ``out``.
    """
    name = str(series.get("id") or series.get("title") or "series")
    points = sorted(series.get("points") or [], key=lambda p: float(p["x"]))
    if not points:
        raise UserError(f"series {name} has no point to plot")
    xs = [float(p["x"]) for p in points]
    stats = [_cell_stats(p, f"series {name}, point {p.get('label', p['x'])!r}") for p in points]
    log2 = bool(series.get("x_log2"))
    if log2 and min(xs) <= 0:
        raise UserError(f"series {name}: a log2 x axis needs positive x, got {min(xs):g}")
    reference = series.get("reference")
    ref_stats = (
        _cell_stats(reference, f"series {name}, reference") if reference is not None else None
    )
    check_png_path(out)
    fig = new_figure(1, 1)
    ax = fig.subplots()
    ax.errorbar(
        xs,
        [mean for mean, _, _ in stats],
        yerr=[std for _, std, _ in stats],
        marker="o",
        capsize=3,
        color="C0",
        label=str(series.get("y_label") or "mean"),
    )
    counts = [n for _, _, n in stats]
    if reference is not None and ref_stats is not None:
        mean, std, n = ref_stats
        counts.append(n)
        label = str(reference.get("label") or "reference")
        ax.axhline(mean, color="C1", linestyle="--", label=label)
        if std > 0:
            ax.axhspan(mean - std, mean + std, color="C1", alpha=0.15, linewidth=0)
    if log2:
        ax.set_xscale("log", base=2)
    # On a log2 axis neighbours such as 8 and 10 sit close: bare numbers fit, labels collide.
    ticks = [
        f"{x:g}" if series.get("x_log2") else str(p.get("label", f"{x:g}"))
        for p, x in zip(points, xs, strict=True)
    ]
    ax.set_xticks(xs, ticks)
    ax.minorticks_off()
    ax.set_title(_wrapped(str(series.get("title") or name)), fontsize=10)
    ax.set_xlabel(str(series.get("x_label") or "x"))
    ax.set_ylabel(f"{series.get('y_label') or 'value'} ({_seeds_note(counts)})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    save_png(fig, out)
    return out
