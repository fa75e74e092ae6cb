"""``inspect-store``: inspect (and optionally verify) a logit store, then show the report.

The figures and the invariant checks belong to the store (:mod:`civt_pipe.stores.inspect`, which
knows nothing about consoles); this stage only runs them and presents the result.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.table import Table

from ...stores.inspect import inspect_store
from ..runtime.console import console
from ..runtime.errors import UserError
from ..viz.figure import check_png_path, require_matplotlib
from ..viz.store import draw_store, store_class_stats


@dataclass(frozen=True, kw_only=True, slots=True)
class InspectStoreConfig:
    """What ``civt-pipe inspect-store`` was asked."""

    store: str | Path
    """The logit store: a directory or an fsspec URL."""
    verify: bool = False
    """Check every invariant first (a violation is a ``StoreError`` naming it)."""
    data: str | None = None
    """With ``verify``: the shards the store was dumped from; every recorded label is compared
    with theirs (:func:`..replay.store_labels.check_store_labels`)."""
    tables: bool = True
    """Print the human report on stderr (off when the caller prints JSON instead)."""
    plot: Path | None = None
    """Also draw the per-class figures and confusion matrices as this PNG (the [plots] extra)."""


def dataset_name(attrs: dict[str, Any]) -> str | None:
    """``digits (train)``: the source and split make-shards recorded (stores written before
    they were kept have neither: None)."""
    source = attrs.get("dataset_source")
    if not source:
        return None
    split = attrs.get("dataset_split")
    return f"{source} ({split})" if split else str(source)


def run_inspect_store(cfg: InspectStoreConfig) -> dict[str, Any]:
    """Inspect the store, print the report unless ``cfg.tables`` is off, and return it.

    With ``cfg.plot`` the report also names the picture (``"plot"``) that
    :func:`..viz.store.draw_store` wrote; a missing extra or an unwritable path is reported
    before the store is read.
    """
    if cfg.data is not None and not cfg.verify:
        raise UserError("--data needs --verify (it checks the store's labels against the shards)")
    if cfg.plot is not None:
        require_matplotlib()
        check_png_path(cfg.plot)
    report = inspect_store(cfg.store, verify=cfg.verify)
    if cfg.data is not None:
        from ..replay.store_labels import check_store_labels

        report["labels_checked"] = check_store_labels(str(cfg.store), cfg.data)
    if cfg.plot is not None:
        draw_store(store_class_stats(cfg.store), cfg.plot)
        report["plot"] = str(cfg.plot)
    if cfg.tables:
        print_report(report)
    return report


def print_report(report: dict[str, Any]) -> None:
    """The human form of an inspection report (:func:`~civt_pipe.stores.inspect.inspect_store`):
    rich tables on stderr."""
    status = (
        "complete" if report["complete"] else f"{len(report['missing_shards'])} shard(s) missing"
    )
    if report["complete"] and not report["finalized"]:
        status += " (not finalized)"
    summary = Table(title=f"logit store {report['path']}", show_header=False)
    summary.add_column("what")
    summary.add_column("value")
    fingerprint = report["attrs"].get("dataset_fingerprint")
    rows = [
        ("shards", str(report["num_shards"])),
        ("samples", f"{report['num_samples']:,} ({report['num_skipped']} skipped)"),
        ("classes", str(report["num_classes"])),
        ("views (V)", str(report["num_views"])),
        ("top-k (k)", str(report["topk"])),
        ("status", status),
        ("bytes on disk", f"{report['bytes_on_disk']:,}"),
        ("files on disk", f"{report['num_files']:,}"),
        ("bytes / (sample, view)", f"{report['bytes_per_sample_view']:.1f}"),
        ("bytes / (sample, view, teacher)", f"{report['bytes_per_sample_view_teacher']:.1f}"),
        (
            "logits vs dense float32",
            f"{report['ratio_to_dense_float32']:.3f}× of {report['dense_float32_bytes']:,} bytes",
        ),
    ]
    if fingerprint:
        rows.insert(0, ("dataset fingerprint", str(fingerprint)[:16]))
    name = dataset_name(report["attrs"])
    if name:
        rows.insert(0, ("dataset", name))
    for what, value in rows:
        summary.add_row(what, value)
    console.print(summary)

    teachers = Table(title="teachers (over the stored views)")
    for col in ("name", "arch", "checkpoint", "top-1", "entropy (nats)", "leftover", "B/(s·v)"):
        teachers.add_column(col)
    for t in report["teachers"]:
        teachers.add_row(
            t["name"],
            t["arch"],
            t["checkpoint_sha256"][:12],
            f"{100 * t['top1']:.2f}%",
            f"{t['mean_entropy']:.3f}",
            f"{t['mean_leftover']:.4f}",
            f"{t['bytes_per_sample_view']:.1f}",
        )
    console.print(teachers)
    if report["agreement"]:
        pairs = Table(title="teacher agreement (same arg-max)")
        pairs.add_column("pair")
        pairs.add_column("agreement")
        for entry in report["agreement"]:
            pairs.add_row(" / ".join(entry["teachers"]), f"{100 * entry['agreement']:.2f}%")
        console.print(pairs)
    if report["missing_shards"]:
        shown = ", ".join(report["missing_shards"][:10])
        more = len(report["missing_shards"]) - 10
        console.print(f"missing shards: {shown}" + (f" and {more} more" if more > 0 else ""))
    if report.get("plot"):
        console.print(f"per-class figures drawn in {report['plot']}")
    if report.get("verified"):
        console.print(
            f"[green]store OK[/green]: {report['num_shards']} shards, every invariant holds"
        )
