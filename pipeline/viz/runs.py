"""Training curves of ``train-student`` and ``train-teacher`` runs, read from their metric files.

The metric records are written by :func:`..train.loop.fit`, in one format for every trainer
(``train-teacher``, ``train-student``, ``train-cakd``): ``RUN_DIR/metrics.jsonl`` holds
``"kind": "step"`` records every ``--log-every`` steps (``step``, ``lr``, ``images_per_s`` and
the step's terms: ``loss``, ``loss_cls``, ``loss_kd_<teacher>``..., a teacher's training
``top1``) and a ``"kind": "epoch"`` record per epoch (the terms' epoch means and, with ``--val``,
``val_<name>``: each head's top-1, a teacher's ``val_top1``/``val_top5``). Records of earlier
versions still plot: a teacher's had no ``kind`` and named its terms ``train_loss`` and
``train_top1``, and a teacher file (``X.pt``) kept them in ``X.metrics.jsonl`` beside it.

Every curve is drawn against the optimizer step (``step``, counted from 1), which both formats
carry, so runs of different lengths and cadences overlay on one axis. Loss terms and the learning
rate come from the step records when a run has them (finer), else from the epoch records.

Each panel shows one quantity and names it on its y axis: one panel per loss term, the learning
rate, then ONE top-1 panel with every validation head of every run (so heads compare on one
scale) and a teacher's training top-1 beside its validation top-1, in percent; a teacher's
top-5 has its own panel.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..runtime.errors import UserError
from .figure import grid_shape, new_figure, png_size, save_png

RUN_METRICS = "metrics.jsonl"
"""The metric file of every run directory (``runtime/run_layout.METRICS``)."""
TEACHER_METRICS_SUFFIX = ".metrics.jsonl"
"""``X.pt`` → ``X.metrics.jsonl``: the teacher layout of earlier versions."""
DEFAULT_PLOT = "plot.png"
"""The picture of one run: ``RUN_DIR/plot.png``, or ``X.plot.png`` beside a teacher's ``X.pt``."""

_OLD_TEACHER_LOSS = "train_loss"
"""An earlier version's teacher epoch-mean loss, drawn in the ``loss`` panel as ``loss``."""
_OLD_TRAIN_TOP1 = "train_top1"
"""An earlier version's name for a teacher's epoch-mean training top-1 (now ``top1``), drawn
with the validation heads."""
_TOP5 = "top5"
"""A teacher's validation top-5 (``val_top5``): another quantity, so another panel."""
ACCURACY_PANEL = "top-1 accuracy"
TOP5_PANEL = "top-5 accuracy"


@dataclass(frozen=True, slots=True)
class Series:
    """One curve: values against the optimizer step."""

    steps: tuple[int, ...]
    values: tuple[float, ...]


@dataclass(frozen=True, slots=True)
class RunCurves:
    """The curves of one run, as :func:`load_run` read them."""

    name: str
    """Legend label: the run directory's or the teacher checkpoint's name."""
    path: Path
    """What the user named (run directory or teacher checkpoint)."""
    metrics_file: Path
    records: int
    """Records read from the metric file."""
    loss: dict[str, Series]
    """Per loss term (``loss``, ``loss_cls``, ``loss_kd_<teacher>``...), in the file's order."""
    lr: Series | None
    """The learning rate (None when the records carry none, e.g. student epoch records only)."""
    val: dict[str, Series]
    """Validation accuracy per head (``cls``, a teacher token, ``mean``; a teacher's ``top1``
    and ``top5``), one point per epoch."""
    train_top1: Series | None = None
    """A teacher's training top-1 per epoch (students record none)."""

    def top1_curves(self) -> list[tuple[str, Series]]:
        """The curves of the top-1 panel, each with its legend label: ``val <head>`` per
        validation head (a teacher's is ``val``), then ``train`` for a teacher."""
        curves = [
            ("val" if head == "top1" else f"val {head}", series)
            for head, series in self.val.items()
            if head != _TOP5
        ]
        if self.train_top1 is not None:
            curves.append(("train", self.train_top1))
        return curves


def metrics_file_of(path: Path) -> Path:
    """The metric file of a run directory (``metrics.jsonl`` in it) or of a teacher checkpoint."""
    if path.is_dir():
        return path / RUN_METRICS
    return path.with_name(path.stem + TEACHER_METRICS_SUFFIX)


def default_plot_path(path: Path) -> Path:
    """Where the picture of the single run ``path`` goes unless ``--out`` says otherwise."""
    if path.is_dir():
        return path / DEFAULT_PLOT
    return path.with_name(f"{path.stem}.{DEFAULT_PLOT}")


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The JSON records of a metric file, in file order.

    A last line without its newline is a record being appended while we read (the run is
    training): it is kept when it parses and skipped when it does not. Any other line that is not
    a JSON object is a one-line :class:`UserError` naming the file and line.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"cannot read {path}: {err}") from None
    lines = text.split("\n")
    records: list[dict[str, Any]] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        torn = number == len(lines)  # no newline after it: possibly half written
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if torn:
                continue
            raise UserError(f"{path} line {number} is not a JSON record") from None
        if not isinstance(record, dict):
            raise UserError(f"{path} line {number} is not a JSON object")
        records.append(record)
    return records


def _number(value: Any) -> float | None:
    # Non-finite figures are written as null (runtime/json_text.py): a gap in the curve.
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def _series(records: Sequence[Mapping[str, Any]], key: str) -> Series | None:
    points = [
        (int(r["step"]), v)
        for r in records
        if isinstance(r.get("step"), int) and (v := _number(r.get(key))) is not None
    ]
    if not points:
        return None
    steps, values = zip(*points, strict=True)
    return Series(steps=steps, values=values)


def _keys(records: Sequence[Mapping[str, Any]], wanted: Any) -> list[str]:
    """Keys of ``records`` for which ``wanted(key)`` holds, in first-seen order."""
    return list(dict.fromkeys(k for r in records for k in r if wanted(k)))


def curves_from_records(
    name: str, path: Path, metrics_file: Path, records: Sequence[Mapping[str, Any]]
) -> RunCurves:
    """The curves of a run from its metric records (pure: no file is read)."""
    steps = [r for r in records if r.get("kind") == "step"]
    # An earlier version's teacher records have no kind; each is an epoch's.
    epochs = [r for r in records if r.get("kind", "epoch") == "epoch"]

    def is_loss(key: str) -> bool:
        return key.startswith("loss") or key == _OLD_TEACHER_LOSS

    loss_source = steps if _keys(steps, is_loss) else epochs
    loss: dict[str, Series] = {}
    for key in _keys(loss_source, is_loss):
        series = _series(loss_source, key)
        if series is not None:
            loss["loss" if key == _OLD_TEACHER_LOSS else key] = series
    lr = _series(steps, "lr") or _series(epochs, "lr")
    val: dict[str, Series] = {}
    for key in _keys(epochs, lambda k: k.startswith("val_")):
        series = _series(epochs, key)
        if series is not None:
            val[key.removeprefix("val_")] = series
    return RunCurves(
        name=name,
        path=path,
        metrics_file=metrics_file,
        records=len(records),
        loss=loss,
        lr=lr,
        val=val,
        train_top1=_series(epochs, "top1") or _series(epochs, _OLD_TRAIN_TOP1),
    )


def load_run(path: Path) -> RunCurves:
    """Read the curves of a ``train-student`` run directory or a ``train-teacher`` checkpoint.

    A missing path, a directory without ``metrics.jsonl`` or a metric file with no records
    is a one-line :class:`UserError`.
    """
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path} does not exist")
    metrics = metrics_file_of(path)
    if not metrics.is_file():
        what = (
            f"{path} has no {RUN_METRICS} (is it a train-student --out directory?)"
            if path.is_dir()
            else f"{path} has no {metrics.name} beside it (is it a train-teacher --out file?)"
        )
        raise UserError(what)
    records = read_metrics(metrics)
    if not records:
        raise UserError(f"{metrics} holds no records yet")
    name = path.name if path.is_dir() else path.stem
    return curves_from_records(name, path, metrics, records)


def _legend_names(runs: Sequence[RunCurves]) -> list[str]:
    """Each run's name, or the path the user gave when two runs share a name."""
    names = [r.name for r in runs]
    return [str(r.path) if names.count(r.name) > 1 else r.name for r in runs]


@dataclass(frozen=True, slots=True)
class _Panel:
    """One panel of a run figure: its title, the quantity on its y axis and which curves of
    each run it shows."""

    title: str
    ylabel: str
    part: str
    """``"loss"``, ``"lr"``, ``"top1"`` or ``"top5"``."""
    key: str = ""
    """The loss term."""

    def curves(self, run: RunCurves) -> list[tuple[str, Series]]:
        """``(label, series)`` of ``run`` in this panel; accuracy in percent."""
        if self.part == "lr":
            return [("", run.lr)] if run.lr is not None else []
        if self.part == "loss":
            series = run.loss.get(self.key)
            return [("", series)] if series is not None else []
        if self.part == "top1":
            found = run.top1_curves()
        else:
            found = [("val", run.val[_TOP5])] if _TOP5 in run.val else []
        return [(label, _percent(series)) for label, series in found]


def _percent(series: Series) -> Series:
    return Series(series.steps, tuple(100.0 * v for v in series.values))


def _panels(runs: Sequence[RunCurves]) -> list[_Panel]:
    terms = dict.fromkeys(t for r in runs for t in r.loss)
    panels = [_Panel(t, "loss" if t == "loss" else f"{t} (loss term)", "loss", t) for t in terms]
    if any(r.lr is not None for r in runs):
        panels.append(_Panel("learning rate", "learning rate", "lr"))
    if any(r.top1_curves() for r in runs):
        panels.append(_Panel(ACCURACY_PANEL, "top-1 (%)", "top1"))
    if any(_TOP5 in r.val for r in runs):
        panels.append(_Panel(TOP5_PANEL, "top-5 (%)", "top5"))
    return panels


def panel_titles(runs: Sequence[RunCurves]) -> list[str]:
    """The panels a figure of ``runs`` has, in order: each loss term, the learning rate when any
    run logged it, then top-1 accuracy (every head, train and val) and a teacher's top-5."""
    return [panel.title for panel in _panels(runs)]


_STYLES = ("-", "--", ":", "-.")


def draw_runs(runs: Sequence[RunCurves], out: Path) -> dict[str, Any]:
    """Draw ``runs`` overlaid and write ``out`` (PNG).

    One panel per loss term, one for the learning rate, one for top-1 (every head) and one for
    top-5 when a teacher has it (see :func:`panel_titles`); three panels a row, every axis
    labelled. With one run each curve of a panel has its own colour; with several, each run has
    its colour and its curves differ by line style. Returns ``{"panels", "width", "height"}``.
    """
    panels = _panels(runs)
    if not panels:
        raise UserError("the runs' metric records hold no loss, learning rate or validation figure")
    rows, cols = grid_shape(len(panels))
    fig = new_figure(rows, cols)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax in axes[len(panels) :]:
        ax.remove()
    from matplotlib.ticker import MaxNLocator

    names = _legend_names(runs)
    for ax, panel in zip(axes, panels, strict=False):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps are whole numbers
        for i, (run, name) in enumerate(zip(runs, names, strict=True)):
            for j, (label, series) in enumerate(panel.curves(run)):
                colour, style = (
                    (f"C{j % 10}", "-")
                    if len(runs) == 1
                    else (f"C{i % 10}", _STYLES[j % len(_STYLES)])
                )
                legend = name if not label else label if len(runs) == 1 else f"{name}: {label}"
                # A run's single point (one epoch) would be invisible as a line: mark every
                # point of short curves.
                marker = "o" if len(series.steps) <= 20 else None
                ax.plot(
                    series.steps,
                    series.values,
                    color=colour,
                    linestyle=style,
                    marker=marker,
                    label=legend,
                )
        ax.set_title(panel.title)
        ax.set_xlabel("optimizer step")
        ax.set_ylabel(panel.ylabel)
        ax.grid(alpha=0.3)
        if panel.part == "lr":
            ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
        ax.legend(fontsize="small")  # every panel has a curve: it exists because a run has it
    save_png(fig, out)
    width, height = png_size(rows, cols)
    return {"panels": [panel.title for panel in panels], "width": width, "height": height}
