"""The study's pictures (pipeline/viz/study.py): PNGs of the right size from results.json's
table and series dicts, one seed or three, with or without a reference line; one-line errors."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from civt_pipe.pipeline.runtime.errors import UserError
from civt_pipe.pipeline.viz.figure import INSTALL_HINT, png_size
from civt_pipe.pipeline.viz.study import plot_paired, plot_series, plot_table
from civt_pipe.pipeline.workflows.study.stats import paired

ORANGE = (0xFF, 0x7F, 0x0E)
"""matplotlib's second cycle colour (C1): the reference line."""


def _cell(values: list[float]) -> dict[str, Any]:
    mean = float(np.mean(values))
    std = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
    return {"values": values, "mean": mean, "std": std, "n": len(values), "runs": ["r"]}


def _table(seeds: int, columns: tuple[str, ...] = ("top1",)) -> dict[str, Any]:
    rows = []
    for i, label in enumerate(["none", "CNN", "INN", "CNN + INN"]):
        values = [60.0 + 5 * i + s for s in range(seeds)]
        rows.append({"label": label, "cells": {c: _cell(values) for c in columns}})
    return {"id": "table5", "title": "Teacher sets", "columns": list(columns), "rows": rows}


def _series(seeds: int, reference: bool = True) -> dict[str, Any]:
    points = [
        {"x": float(v), "label": f"V={v}", **_cell([70.0 + v + s for s in range(seeds)])}
        for v in (1, 2, 4, 8)
    ]
    return {
        "id": "views",
        "title": "Accuracy vs stored views",
        "x_label": "stored views V",
        "y_label": "top-1 (%)",
        "x_log2": True,
        "points": points,
        "reference": {"label": "online", **_cell([80.0 + s for s in range(seeds)])}
        if reference
        else None,
    }


def _png(path: Path) -> np.ndarray:
    assert path.is_file() and path.stat().st_size > 1000
    with Image.open(path) as image:
        assert image.format == "PNG"
        return np.asarray(image.convert("RGB"))


def _has_colour(pixels: np.ndarray, rgb: tuple[int, int, int]) -> bool:
    return bool((np.abs(pixels.astype(int) - rgb).sum(-1) < 10).any())


@pytest.mark.parametrize("seeds", [1, 3])
def test_table_is_a_png_of_one_panel(tmp_path: Path, seeds: int) -> None:
    out = plot_table(_table(seeds), tmp_path / "table5.png")
    assert out == tmp_path / "table5.png"
    pixels = _png(out)
    assert pixels.shape[:2] == png_size(1, 1)[::-1]


def test_a_wide_table_takes_two_panel_widths_and_skips_missing_cells(tmp_path: Path) -> None:
    table = _table(3, columns=("cls", "mean"))
    del table["rows"][0]["cells"]["mean"]
    pixels = _png(plot_table(table, tmp_path / "t.png"))
    assert pixels.shape[:2] == png_size(1, 2)[::-1]


@pytest.mark.parametrize("seeds", [1, 3])
def test_series_draws_the_reference_line(tmp_path: Path, seeds: int) -> None:
    with_ref = _png(plot_series(_series(seeds), tmp_path / "with.png"))
    without = _png(plot_series(_series(seeds, reference=False), tmp_path / "without.png"))
    assert with_ref.shape[:2] == png_size(1, 1)[::-1]
    assert _has_colour(with_ref, ORANGE) and not _has_colour(without, ORANGE)


def test_a_table_of_two_quantities_gets_an_axis_each(tmp_path: Path) -> None:
    table = _table(3, columns=("CPU s", "wall s", "top-1"))
    one_axis = _png(plot_table(table, tmp_path / "one.png"))
    units = {"CPU s": "seconds", "wall s": "seconds", "top-1": "top-1 (%)"}
    two = _png(plot_table({**table, "units": units}, tmp_path / "two.png"))
    # Seconds and top-1 side by side, one panel each; without units one (wide) panel.
    assert two.shape[:2] == png_size(1, 2)[::-1]
    assert not np.array_equal(one_axis, two)


def _comparisons(separated: bool) -> dict[str, Any]:
    spread = [1.0, 1.1, 1.2] if separated else [-2.0, 1.0, 4.0]
    entries = [
        {"label": f"{row} − none", **paired([60 + d for d in spread], [60.0] * 3).to_dict()}
        for row in ("CNN", "INN")
    ]
    return {"id": "table5", "title": "Teacher sets", "paired": entries}


def test_paired_differences_draw_their_intervals_filled_where_separated(tmp_path: Path) -> None:
    separated = _png(plot_paired(_comparisons(True), "top-1 (%), points", tmp_path / "s.png"))
    within = _png(plot_paired(_comparisons(False), "top-1 (%), points", tmp_path / "w.png"))
    assert separated.shape[:2] == within.shape[:2] == png_size(1, 2)[::-1]
    blue = (0x1F, 0x77, 0xB4)  # C0: the markers and interval bars
    assert _has_colour(separated, blue) and _has_colour(within, blue)
    # The same comparisons marked not separated draw open markers: fewer C0 pixels.
    opened = _comparisons(True)
    assert all(e["separated"] for e in opened["paired"])
    opened["paired"] = [{**e, "separated": False} for e in opened["paired"]]
    hollow = _png(plot_paired(opened, "top-1 (%), points", tmp_path / "o.png"))

    def c0(pixels: np.ndarray) -> int:
        return int((np.abs(pixels.astype(int) - blue).sum(-1) < 10).sum())

    assert c0(separated) > c0(hollow) > 0
    one_seed = {"id": "t", "paired": [{"label": "a", **paired([1.0], [0.0]).to_dict()}]}
    _png(plot_paired(one_seed, "top-1 (%), points", tmp_path / "one.png"))  # no interval: a dot


def test_series_on_a_linear_axis(tmp_path: Path) -> None:
    series = {**_series(2), "x_log2": False}
    series["points"][0]["x"] = 0.0
    _png(plot_series(series, tmp_path / "k.png"))


@pytest.mark.parametrize(
    ("draw", "message"),
    [
        (lambda out: plot_table({**_table(1), "rows": []}, out), "table table5 has no cell"),
        (lambda out: plot_table({"id": "t", "columns": [], "rows": []}, out), "table t has no"),
        (lambda out: plot_series({**_series(1), "points": []}, out), "series views has no point"),
        (
            lambda out: plot_series(
                {**_series(1), "points": [{**_series(1)["points"][0], "x": 0.0}]}, out
            ),
            "log2 x axis needs positive x",
        ),
        (
            lambda out: plot_table(
                {"id": "t", "columns": ["a"], "rows": [{"label": "x", "cells": {"a": {}}}]}, out
            ),
            "needs a numeric mean",
        ),
        (lambda out: plot_paired({"id": "t", "paired": []}, "x", out), "t has no paired"),
        (
            lambda out: plot_paired({"id": "t", "paired": [{"label": "a"}]}, "x", out),
            "needs a numeric mean",
        ),
    ],
)
def test_bad_input_is_one_line(tmp_path: Path, draw: Any, message: str) -> None:
    with pytest.raises(UserError, match=message):
        draw(tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def test_the_picture_must_be_a_png(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"ending in \.png"):
        plot_table(_table(1), tmp_path / "table.jpg")


def test_missing_matplotlib_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` raises ImportError
    with pytest.raises(UserError, match="matplotlib") as caught:
        plot_series(_series(1), tmp_path / "x.png")
    assert INSTALL_HINT in str(caught.value)
