"""Pictures of a logit store: what each teacher says, class by class (``inspect-store --plot``).

The figures are those of :func:`civt_pipe.stores.inspect.inspect_store` (the store's reader, the
statistics of :mod:`civt_pipe.stores.topk`), broken down by class: a view counts for the class of
its *view label* (``view_labels``: the label, or the dominant label of a mixed view — the class
the report's ``top1`` is measured against), over the valid rows of written shards.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ...stores.logit_store import LogitStore
from ...stores.topk import leftover_mass, target_entropy
from ..runtime.errors import UserError
from .figure import grid_shape, new_figure, png_size, save_png

if TYPE_CHECKING:
    from matplotlib.axes import Axes

MAX_TICK_LABELS = 20
"""Class names label the axes up to this many classes; beyond it, class ids by matplotlib."""


@dataclass(frozen=True, slots=True)
class StoreClassStats:
    """Per-class figures of a store's teachers, over every valid (row, view) of written shards.

    Every ``[C]`` array is indexed by class id; a class without a view has ``nan`` means.
    """

    class_names: tuple[str, ...]
    teachers: tuple[str, ...]
    views: np.ndarray
    """``[C]`` int64: valid views of each class."""
    top1: dict[str, np.ndarray]
    """Per teacher, ``[C]``: share of the class's views whose arg-max is the view label."""
    entropy: dict[str, np.ndarray]
    """Per teacher, ``[C]``: mean entropy (nats) of the τ=1 target, leftover spread uniformly."""
    leftover: dict[str, np.ndarray]
    """Per teacher, ``[C]``: mean probability mass outside the stored top k."""
    agreement: dict[tuple[str, str], np.ndarray]
    """Per teacher pair, ``[C]``: share of the class's views on which both arg-maxes agree."""
    confusion: dict[str, np.ndarray]
    """Per teacher, ``[C, C]`` int64 counts: row = view label, column = the teacher's arg-max."""


def store_class_stats(path: str | Path) -> StoreClassStats:
    """Walk the store shard by shard (memory: one shard's block plus ``[C, C]`` per teacher) and
    sum every figure per class. A store without a valid written view is a :class:`UserError`."""
    store = LogitStore.open(path)
    names = tuple(store.teacher_names)
    c = store.num_classes
    views = np.zeros(c, dtype=np.int64)
    hits = {t: np.zeros(c) for t in names}
    entropy = {t: np.zeros(c) for t in names}
    leftover = {t: np.zeros(c) for t in names}
    agree = {pair: np.zeros(c) for pair in itertools.combinations(names, 2)}
    confusion = {t: np.zeros(c * c, dtype=np.int64) for t in names}
    for layout, written in zip(store.shards, store.written_flags(), strict=True):
        if not written:
            continue
        rows = slice(layout.row_offset, layout.row_offset + layout.count)
        valid = store.read("valid", rows).astype(bool)
        labels = store.read("view_labels", rows)[valid].astype(np.int64).ravel()
        views += np.bincount(labels, minlength=c)
        top1: dict[str, np.ndarray] = {}
        for t in names:
            base = f"teachers/{t}"
            logprobs = torch.from_numpy(store.read(f"{base}/logprobs", rows)[valid])
            top1[t] = store.read(f"{base}/indices", rows)[valid][..., 0].astype(np.int64).ravel()
            hits[t] += np.bincount(labels, weights=top1[t] == labels, minlength=c)
            per_view = target_entropy(logprobs, c).numpy().ravel()
            entropy[t] += np.bincount(labels, weights=per_view, minlength=c)
            kept_out = leftover_mass(logprobs).numpy().ravel()
            leftover[t] += np.bincount(labels, weights=kept_out, minlength=c)
            confusion[t] += np.bincount(labels * c + top1[t], minlength=c * c)
        for a, b in agree:
            agree[(a, b)] += np.bincount(labels, weights=top1[a] == top1[b], minlength=c)
    if not views.any():
        raise UserError(f"store {path} has no written view to plot")
    with np.errstate(invalid="ignore", divide="ignore"):  # a class without views: nan

        def mean(total: np.ndarray) -> np.ndarray:
            return total / views

        names_attr = store.user_attrs.get("class_names")
        class_names = (
            tuple(str(n) for n in names_attr)
            if isinstance(names_attr, list) and len(names_attr) == c
            else tuple(str(i) for i in range(c))
        )
        return StoreClassStats(
            class_names=class_names,
            teachers=names,
            views=views,
            top1={t: mean(v) for t, v in hits.items()},
            entropy={t: mean(v) for t, v in entropy.items()},
            leftover={t: mean(v) for t, v in leftover.items()},
            agreement={pair: mean(v) for pair, v in agree.items()},
            confusion={t: v.reshape(c, c) for t, v in confusion.items()},
        )


def _class_ticks(ax: Axes, axis: str, names: tuple[str, ...]) -> None:
    if len(names) > MAX_TICK_LABELS:
        return
    positions = np.arange(len(names))
    if axis == "x":
        ax.set_xticks(positions, names, rotation=90 if len(names) > 10 else 0, fontsize="small")
    else:
        ax.set_yticks(positions, names, fontsize="small")


def draw_store(stats: StoreClassStats, out: Path) -> dict[str, Any]:
    """Draw per-class bars (top-1 against the labels, pairwise agreement when there are two
    teachers or more, mean entropy, mean leftover mass; one bar per teacher or pair) and one
    confusion matrix per teacher (rows normalized: the share of a label's views given to each
    class), then write ``out`` (PNG). Returns ``{"panels", "width", "height"}``."""
    bars: list[tuple[str, str, dict[str, np.ndarray]]] = [
        ("top-1 against the label", "share of views", stats.top1),
    ]
    if stats.agreement:
        pairs = {f"{a} / {b}": v for (a, b), v in stats.agreement.items()}
        bars.append(("teacher agreement (same arg-max)", "share of views", pairs))
    bars += [
        ("mean entropy", "nats", stats.entropy),
        ("mean leftover (non-top-k) mass", "probability", stats.leftover),
    ]
    titles = [title for title, _, _ in bars] + [f"{t}: arg-max vs label" for t in stats.teachers]
    rows, cols = grid_shape(len(titles), columns=2)
    fig = new_figure(rows, cols)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax in axes[len(titles) :]:
        ax.remove()
    classes = np.arange(len(stats.class_names))
    for ax, (title, unit, series) in zip(axes, bars, strict=False):
        width = 0.8 / len(series)
        for i, (name, values) in enumerate(series.items()):
            offset = (i - (len(series) - 1) / 2) * width
            ax.bar(classes + offset, values, width=width, color=f"C{i % 10}", label=name)
        ax.set_title(title)
        ax.set_xlabel("class (view label)")
        ax.set_ylabel(unit)
        _class_ticks(ax, "x", stats.class_names)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize="small")
    for ax, teacher in zip(axes[len(bars) :], stats.teachers, strict=False):
        counts = stats.confusion[teacher].astype(np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            shares = counts / counts.sum(axis=1, keepdims=True)
        image = ax.imshow(shares, cmap="viridis", vmin=0.0, vmax=1.0, interpolation="nearest")
        ax.set_title(f"{teacher}: arg-max vs label")
        ax.set_xlabel("teacher arg-max")
        ax.set_ylabel("view label")
        _class_ticks(ax, "x", stats.class_names)
        _class_ticks(ax, "y", stats.class_names)
        fig.colorbar(image, ax=ax, label="share of the label's views")
    save_png(fig, out)
    width, height = png_size(rows, cols)
    return {"panels": titles, "width": width, "height": height}
