"""From finished runs to numbers: mean ± std over seeds, ``results.json``, ``results.md``.

Pure functions except :func:`write_results` and :func:`draw_plots` (the I/O at the edge).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ...runtime.atomic import atomic_write_bytes, atomic_write_json
from ...runtime.console import warn
from ...runtime.errors import USER_ERRORS
from .config import PLANS
from .plans import Measure, PlanSpec, PointSpec, Records, SeriesSpec, TableSpec
from .runner import COMMAND
from .runs import RUNS
from .stats import LEVEL, format_paired, paired

SCHEMA = 1
RESULTS_JSON = "results.json"
RESULTS_MD = "results.md"
PLOT_DIR = "plots"


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof = 1) of ``values``; the std of one value is 0."""
    if not values:
        raise ValueError("mean_std of no values")
    n = len(values)
    mean = sum(values) / n
    if n == 1:
        return mean, 0.0
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))


def summarize(values: Sequence[float], runs: Sequence[str]) -> dict[str, Any]:
    """A cell or point of results.json: values per seed, their mean, std, n and the runs."""
    mean, std = mean_std(values)
    return {
        "values": [float(v) for v in values],
        "mean": mean,
        "std": std,
        "n": len(values),
        "runs": list(dict.fromkeys(runs)),
    }


def _measured(measures: Sequence[Measure], records: Records) -> dict[str, Any]:
    return summarize([m.read(records) for m in measures], [run for m in measures for run in m.runs])


def comparison_dict(
    label: str, values: Sequence[float], reference: Sequence[float]
) -> dict[str, Any]:
    """One entry of a table's or series' ``paired`` list: the label and :func:`.stats.paired`
    of the per-seed values against the reference's."""
    return {"label": label, **paired(values, reference).to_dict()}


def table_dict(spec: TableSpec, records: Records) -> dict[str, Any]:
    """A table of results.json from its spec and the finished runs, with its paired
    comparisons (``paired``: one entry per :class:`.plans.Comparison`)."""
    by_label = {
        label: {c: _measured(m, records) for c, m in cells.items()} for label, cells in spec.rows
    }
    rows = [{"label": label, "cells": cells} for label, cells in by_label.items()]
    return {
        "id": spec.id,
        "title": spec.title,
        "columns": spec.columns,
        "units": spec.units,
        "rows": rows,
        "paired": [
            {
                **comparison_dict(
                    c.label,
                    by_label[c.row][c.column]["values"],
                    by_label[c.reference_row][c.reference_column]["values"],
                ),
                "row": c.row,
                "column": c.column,
                "reference_row": c.reference_row,
                "reference_column": c.reference_column,
            }
            for c in spec.comparisons
        ],
    }


def _point(spec: PointSpec, records: Records) -> dict[str, Any]:
    point = {"label": spec.label, **_measured(spec.values, records)}
    if isinstance(spec.x, list):
        # A measured x (Figure 3's teacher accuracy): its mean over seeds places the point.
        x = _measured(spec.x, records)
        point["x"] = x["mean"]
        point["x_std"] = x["std"]
        point["runs"] = list(dict.fromkeys([*point["runs"], *x["runs"]]))
    else:
        point["x"] = float(spec.x)
    return point


def series_dict(spec: SeriesSpec, records: Records) -> dict[str, Any]:
    """A series of results.json from its spec and the finished runs."""
    reference = None
    if spec.reference is not None:
        reference = _point(spec.reference, records)
        reference.pop("x")
    points = [_point(p, records) for p in spec.points]
    compared = []
    if spec.baseline is not None:
        base = [m.read(records) for m in spec.baseline.values]
        others = [*spec.points, *([spec.reference] if spec.reference is not None else [])]
        compared = [
            {
                **comparison_dict(
                    f"{p.label} − {spec.baseline.label}", [m.read(records) for m in p.values], base
                ),
                "point": p.label,
                "baseline": spec.baseline.label,
            }
            for p in others
            if p is not spec.baseline
        ]
    return {
        "id": spec.id,
        "title": spec.title,
        "x_label": spec.x_label,
        "y_label": spec.y_label,
        "x_log2": spec.x_log2,
        "points": points,
        "reference": reference,
        "paired": compared,
    }


def break_even(dump_cpu: float, store_cpu: float, online_cpu: float) -> int | None:
    """Student runs n* after which the store has paid for itself: ⌈dump / (online − store)⌉;
    None ("never") when a store student costs at least as much as an online one."""
    saving = online_cpu - store_cpu
    if saving <= 0:
        return None
    return max(1, math.ceil(dump_cpu / saving))


def stopped_epochs(results: Sequence[Mapping[str, Any]], epochs: int) -> dict[str, Any]:
    """How long the students of a ``--until-plateau`` plan trained: the epochs of each (its
    ``stopped_at``, or all ``epochs`` when it never stopped), with their mean, min and max and
    how many stopped early."""
    trained = [int(r.get("stopped_at") or epochs) for r in results]
    return {
        "epochs": trained,
        "mean": sum(trained) / len(trained) if trained else None,
        "min": min(trained, default=None),
        "max": max(trained, default=None),
        "stopped_early": sum(e < epochs for e in trained),
    }


def plan_dict(spec: PlanSpec, settings: Mapping[str, Any], records: Records) -> dict[str, Any]:
    """The ``plans[<plan>]`` entry of results.json. Its seconds are the sum over its runs (what
    the plan costs from scratch, also when this invocation reused them); its ``plots`` are empty
    until :func:`draw_plots` has drawn them."""
    ids = [run.id for run in spec.runs]
    plan: dict[str, Any] = {
        "settings": dict(settings),
        "seeds": spec.seeds,
        "seconds": round(sum(records[i]["seconds"] for i in ids), 3),
        "cpu_seconds": round(sum(records[i]["cpu_seconds"] for i in ids), 3),
        "tables": [table_dict(t, records) for t in spec.tables],
        "series": [series_dict(s, records) for s in spec.series],
        "plots": [],
    }
    if settings.get("until_plateau") is not None:
        plan["stopped_at"] = stopped_epochs(
            [records[run.id]["result"] for run in spec.runs if run.kind == "student"],
            int(settings["epochs"]),
        )
    if spec.break_even is not None:
        table = plan["tables"][0]
        cpu = {row["label"]: row["cells"]["CPU s"]["mean"] for row in table["rows"]}
        dump, store, online = (cpu[label] for label in spec.break_even)
        plan["break_even"] = break_even(dump, store, online)
    return plan


def run_entries(spec: PlanSpec, records: Records) -> dict[str, dict[str, Any]]:
    """The ``runs`` entries of results.json for a plan's runs."""
    return {
        run.id: {
            "kind": run.kind,
            "command": run.command,
            "dir": f"{RUNS}/{run.id}",
            "seconds": records[run.id]["seconds"],
            "cpu_seconds": records[run.id]["cpu_seconds"],
            "result": records[run.id]["result"],
        }
        for run in spec.runs
    }


def merge_results(
    earlier: Mapping[str, Any] | None,
    *,
    out: str,
    name: str,
    plan: dict[str, Any],
    runs: Mapping[str, dict[str, Any]],
) -> dict[str, Any]:
    """results.json with ``plan`` (re)placed beside the plans of earlier invocations."""
    plans: dict[str, Any] = {}
    all_runs: dict[str, Any] = {}
    if earlier is not None and earlier.get("schema") == SCHEMA:
        plans.update(earlier.get("plans", {}))
        all_runs.update(earlier.get("runs", {}))
    plans[name] = plan
    all_runs.update(runs)
    return {
        "schema": SCHEMA,
        "out": out,
        "seconds": round(sum(p["seconds"] for p in plans.values()), 3),
        "cpu_seconds": round(sum(r["cpu_seconds"] for r in all_runs.values()), 3),
        "plans": plans,
        "runs": all_runs,
    }


def read_results(root: Path) -> dict[str, Any] | None:
    """An earlier results.json in ``root``, or None."""
    try:
        found = json.loads((root / RESULTS_JSON).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return found if isinstance(found, dict) else None


# -------------------------------------------------------------------------------- markdown


def format_cell(cell: Mapping[str, Any], digits: int = 2) -> str:
    """``mean ± std``, or the mean alone for one seed."""
    if cell["n"] == 1:
        return f"{cell['mean']:.{digits}f}"
    return f"{cell['mean']:.{digits}f} ± {cell['std']:.{digits}f}"


def _links(cell: Mapping[str, Any], runs: Mapping[str, Mapping[str, Any]]) -> str:
    # Link the runs that make a model (or a store), not their evaluations.
    made = [r for r in cell["runs"] if runs.get(r, {}).get("kind") != "evaluate"]
    made = made or list(cell["runs"])
    return " ".join(
        f"[{number}]({RUNS}/{run}/{COMMAND})" for number, run in enumerate(made, start=1)
    )


def paired_heading(entry: Mapping[str, Any]) -> str:
    """The results.md column of a comparison: ``− none`` against another row, ``CNN + INN −
    no teacher`` against another column of the same row."""
    if entry["row"] == entry["reference_row"]:
        return f"{entry['column']} − {entry['reference_column']}"
    return f"− {entry['reference_row']}"


def _table_md(table: Mapping[str, Any], runs: Mapping[str, Mapping[str, Any]]) -> list[str]:
    digits = 4 if table["id"] == "table4" else 2
    compared = table.get("paired", [])
    headings = list(dict.fromkeys(paired_heading(e) for e in compared))
    found = {(e["row"], paired_heading(e)): e for e in compared}
    lines = [
        f"**{table['title']}**",
        "",
        "| | " + " | ".join([*table["columns"], *headings]) + " |",
        "|---|" + "---|" * (len(table["columns"]) + len(headings)),
    ]
    for row in table["rows"]:
        cells = []
        for column in table["columns"]:
            cell = row["cells"].get(column)
            cells.append(
                "—"
                if cell is None
                else f"{format_cell(cell, digits)} <sub>{_links(cell, runs)}</sub>"
            )
        for heading in headings:
            entry = found.get((row["label"], heading))
            cells.append("" if entry is None else format_paired(entry, digits))
        lines.append(f"| {row['label']} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def _series_md(series: Mapping[str, Any], runs: Mapping[str, Mapping[str, Any]]) -> list[str]:
    compared = {e["point"]: e for e in series.get("paired", [])}
    baseline = next(iter(compared.values()))["baseline"] if compared else None
    extra = f" − {baseline} |" if baseline is not None else ""
    lines = [
        f"**{series['title']}**",
        "",
        f"| point | {series['x_label']} | {series['y_label']} |{extra} runs |",
        "|---|---|---|---|" + ("---|" if extra else ""),
    ]

    def diff(label: str) -> str:
        if baseline is None:
            return ""
        entry = compared.get(label)
        return f" {'' if entry is None else format_paired(entry)} |"

    for point in series["points"]:
        x = point["x"]
        x_text = (
            f"{x:g}"
            if "x_std" not in point
            else format_cell({"mean": x, "std": point["x_std"], "n": point["n"]})
        )
        lines.append(
            f"| {point['label']} | {x_text} | {format_cell(point)} |{diff(point['label'])} "
            f"{_links(point, runs)} |"
        )
    reference = series.get("reference")
    if reference is not None:
        lines.append(
            f"| {reference['label']} (reference) | — | {format_cell(reference)} |"
            f"{diff(reference['label'])} {_links(reference, runs)} |"
        )
    return [*lines, ""]


def results_markdown(results: Mapping[str, Any]) -> str:
    """results.md: per plan its settings, tables, series, plots and CPU time."""
    runs = results["runs"]
    lines = [
        "# Study results",
        "",
        "Written by `civt-pipe study`. Accuracies are top-1 % on --val; a cell is the mean ± "
        "sample standard deviation over the seeds, and its numbered links open the exact "
        "command of each run behind it (run from this directory).",
        "",
        "A `− REF` column is the paired comparison with the row (or point) REF over the same "
        "seeds: the mean per-seed difference, its "
        f"{LEVEL * 100:.0f} % Student-t interval over seeds [low, high], and how many seeds were "
        "higher than REF (`k/n up`); ✓ marks a *separated* difference, whose interval "
        "excludes 0. One seed gives no interval and no claim.",
        "",
    ]
    plans = results["plans"]
    # The plans in their documented order (results.json keeps its keys sorted).
    for name in sorted(plans, key=lambda n: (PLANS.index(n) if n in PLANS else len(PLANS), n)):
        plan = plans[name]
        settings = ", ".join(f"{k} {v}" for k, v in sorted(plan["settings"].items()))
        lines += [
            f"## Plan `{name}`",
            "",
            f"Settings: {settings}; seeds {', '.join(str(s) for s in plan['seeds'])}.",
            "",
            f"Total: {plan['cpu_seconds'] / 60:.1f} CPU minutes, {plan['seconds'] / 60:.1f} "
            "minutes of wall time (the sum over the plan's runs).",
            "",
        ]
        stopped = plan.get("stopped_at")
        if stopped is not None and stopped["epochs"]:
            lines += [
                f"Students with --until-plateau {plan['settings']['until_plateau']} trained "
                f"{stopped['mean']:.1f} epochs on average ({stopped['min']}–{stopped['max']}); "
                f"{stopped['stopped_early']} of {len(stopped['epochs'])} stopped before "
                f"--epochs {plan['settings']['epochs']}.",
                "",
            ]
        for table in plan["tables"]:
            lines += _table_md(table, runs)
        if "break_even" in plan:
            n = plan["break_even"]
            verdict = (
                "never: a student from the store costs no less CPU than an online one"
                if n is None
                else f"the store has paid for itself after n* = {n} student runs"
            )
            lines += [
                f"Break-even: {verdict} (n* = ⌈dump CPU / (online CPU − store student CPU)⌉, "
                "on the means over seeds).",
                "",
            ]
        for series in plan["series"]:
            lines += _series_md(series, runs)
        lines += [f"![{Path(p).stem}]({p})" for p in plan["plots"]]
        lines.append("")
    return "\n".join(lines)


def write_results(root: Path, results: Mapping[str, Any]) -> None:
    """results.json and results.md in ``root``, each written atomically."""
    atomic_write_json(root / RESULTS_JSON, results)
    atomic_write_bytes(root / RESULTS_MD, results_markdown(results).encode())


def draw_plots(root: Path, name: str, plan: Mapping[str, Any]) -> list[str]:
    """A PNG per table and series of ``plan`` in ``root/plots``; their paths relative to root.

    Without matplotlib (the [plots] extra) the plots are skipped with a warning.
    """
    from ...viz.study import plot_paired, plot_series, plot_table

    made = []
    try:
        for table in plan["tables"]:
            path = root / PLOT_DIR / f"{name}-{table['id']}.png"
            made.append(plot_table(dict(table), path))
            if table.get("paired"):
                column = table["paired"][0]["column"]
                unit = table.get("units", {}).get(column, "top-1 (%)")
                path = root / PLOT_DIR / f"{name}-{table['id']}-paired.png"
                made.append(plot_paired(dict(table), f"{unit}, points", path))
        for series in plan["series"]:
            path = root / PLOT_DIR / f"{name}-{series['id']}.png"
            made.append(plot_series(dict(series), path))
            if series.get("paired"):
                path = root / PLOT_DIR / f"{name}-{series['id']}-paired.png"
                made.append(plot_paired(dict(series), f"{series['y_label']}, points", path))
    except USER_ERRORS as err:
        warn(f"plots skipped: {err}")
        return []
    return [str(Path(p).relative_to(root)) for p in made]
