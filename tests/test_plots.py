"""``civt-pipe plot`` and ``inspect-store --plot``: valid PNGs of the right size, the curves and
per-class figures they are drawn from, and one-line errors for bad input."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from toy_shards import dump_toy_store, make_toy_shards, make_toy_teacher
from typer.testing import CliRunner

from civt_pipe.cli.app import app
from civt_pipe.pipeline.models.teacher_spec import TeacherSpec
from civt_pipe.pipeline.runtime.errors import UserError
from civt_pipe.pipeline.runtime.run_layout import METRICS
from civt_pipe.pipeline.stages.dump.config import DumpConfig
from civt_pipe.pipeline.stages.dump.run import run_dump
from civt_pipe.pipeline.stages.inspect_store import InspectStoreConfig, run_inspect_store
from civt_pipe.pipeline.stages.plot import PlotConfig, plot_runs
from civt_pipe.pipeline.stages.student.config import StudentTrainConfig
from civt_pipe.pipeline.stages.student.run import train_student
from civt_pipe.pipeline.viz.figure import INSTALL_HINT, grid_shape, png_size
from civt_pipe.pipeline.viz.runs import (
    RUN_METRICS,
    curves_from_records,
    default_plot_path,
    load_run,
    metrics_file_of,
    panel_titles,
    read_metrics,
)
from civt_pipe.pipeline.viz.store import store_class_stats
from civt_pipe.stores.inspect import inspect_store

runner = CliRunner()

BLUE = (0x1F, 0x77, 0xB4)
"""matplotlib's first cycle colour (C0): the first run's curves."""
ORANGE = (0xFF, 0x7F, 0x0E)
"""The second run's colour (C1)."""


def _student_records(scale: float = 1.0, val: bool = True) -> list[dict[str, Any]]:
    """Records in train-student's format: step records every 2 steps, an epoch record per epoch."""
    records: list[dict[str, Any]] = []
    for epoch in range(2):
        for step in (2 * epoch + 1, 2 * epoch + 2):
            records.append(
                {
                    "kind": "step",
                    "epoch": epoch + 1,
                    "step": step,
                    "lr": 1e-3 / step,
                    "images_per_s": 100.0,
                    "loss": scale * 3.0 / step,
                    "loss_cls": scale * 2.0 / step,
                    "loss_kd_cnn": scale * 1.0 / step,
                }
            )
        epoch_record: dict[str, Any] = {
            "kind": "epoch",
            "epoch": epoch + 1,
            "step": 2 * epoch + 2,
            "lr": 1e-3 / (2 * epoch + 2),
            "loss": scale * 2.0,
            "loss_cls": scale * 1.5,
            "loss_kd_cnn": scale * 0.5,
        }
        if val:
            epoch_record.update(val_cls=0.25 * (epoch + 1), val_mean=0.5 * (epoch + 1))
        records.append(epoch_record)
    return records


def _write_run(run_dir: Path, records: list[dict[str, Any]]) -> Path:
    run_dir.mkdir(parents=True)
    (run_dir / RUN_METRICS).write_text("".join(json.dumps(r) + "\n" for r in records))
    return run_dir


def _legacy_metrics(path: Path) -> Path:
    """``X.pt`` → ``X.metrics.jsonl``: the teacher layout of earlier versions, which still plots."""
    return path.with_name(path.stem + ".metrics.jsonl")


def _teacher(path: Path) -> Path:
    """An earlier train-teacher output: ``X.pt`` (unused by plot) and ``X.metrics.jsonl``."""
    path.write_bytes(b"")
    records = [
        {"epoch": e, "step": 10 * e, "lr": 4e-3, "train_loss": 2.0 / e, "train_top1": 0.1 * e}
        | {"val_top1": 0.2 * e, "val_top5": 0.5 + 0.1 * e, "epoch_seconds": 1.0}
        for e in (1, 2, 3)
    ]
    _legacy_metrics(path).write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def _png(path: Path) -> Image.Image:
    assert path.is_file() and path.stat().st_size > 0
    image = Image.open(path)
    image.load()  # decodes every pixel: a truncated or invalid PNG raises here
    assert image.format == "PNG"
    return image


def _has_colour(image: Image.Image, rgb: tuple[int, int, int]) -> bool:
    pixels = np.asarray(image.convert("RGB")).reshape(-1, 3).astype(int)
    return bool((np.abs(pixels - np.array(rgb)).max(axis=1) <= 2).any())


# --- curves from metric records -------------------------------------------------------------


def test_student_curves_take_losses_and_lr_from_step_records_and_val_from_epochs() -> None:
    run = curves_from_records("r", Path("r"), Path("r/metrics.jsonl"), _student_records())
    assert list(run.loss) == ["loss", "loss_cls", "loss_kd_cnn"]
    assert run.loss["loss"].steps == (1, 2, 3, 4)
    assert run.loss["loss_cls"].values == (2.0, 1.0, 2.0 / 3, 0.5)
    assert run.lr is not None and run.lr.values[0] == 1e-3
    assert run.val["cls"].steps == (2, 4) and run.val["mean"].values == (0.5, 1.0)


def test_student_curves_fall_back_to_epoch_records_without_step_records() -> None:
    epochs_only = [r for r in _student_records() if r["kind"] == "epoch"]
    run = curves_from_records("r", Path("r"), Path("r/m"), epochs_only)
    assert run.loss["loss"].steps == (2, 4) and run.loss["loss"].values == (2.0, 2.0)
    assert run.lr is not None and run.lr.steps == (2, 4)  # every epoch record carries its rate


def test_teacher_curves_read_train_loss_lr_and_val_top1_top5(tmp_path: Path) -> None:
    run = load_run(_teacher(tmp_path / "cnn.pt"))
    assert run.name == "cnn" and list(run.loss) == ["loss"]
    assert run.loss["loss"].values == (2.0, 1.0, 2.0 / 3) and run.loss["loss"].steps == (10, 20, 30)
    assert run.lr is not None and run.lr.values == (4e-3,) * 3
    assert set(run.val) == {"top1", "top5"}
    # Training and validation top-1 share the accuracy panel; top-5 is another quantity.
    assert [label for label, _ in run.top1_curves()] == ["val", "train"]
    assert run.train_top1 is not None and run.train_top1.values == pytest.approx((0.1, 0.2, 0.3))


def test_a_teacher_run_directory_plots_from_the_one_record_format(tmp_path: Path) -> None:
    """train-teacher now writes the records every trainer writes: its training top-1 is the
    epoch record's ``top1``, its loss ``loss``."""
    records = [
        {"kind": "epoch", "epoch": e, "step": 10 * e, "lr": 4e-3, "images_per_s": 50.0}
        | {"epoch_seconds": 1.0, "loss": 2.0 / e, "top1": 0.1 * e, "val_top1": 0.2 * e}
        for e in (1, 2, 3)
    ]
    run = load_run(_write_run(tmp_path / "teacher", records))
    assert list(run.loss) == ["loss"] and run.loss["loss"].steps == (10, 20, 30)
    assert run.train_top1 is not None and run.train_top1.values == pytest.approx((0.1, 0.2, 0.3))
    assert [label for label, _ in run.top1_curves()] == ["val", "train"]


def test_every_head_of_a_student_is_one_curve_of_the_one_accuracy_panel() -> None:
    run = curves_from_records("r", Path("r"), Path("r/metrics.jsonl"), _student_records())
    assert [label for label, _ in run.top1_curves()] == ["val cls", "val mean"]
    assert panel_titles([run]).count("top-1 accuracy") == 1
    assert not any(t.startswith("validation accuracy") for t in panel_titles([run]))


def test_null_figures_are_gaps_not_points() -> None:
    records = _student_records()
    records[0]["loss_cls"] = None  # a non-finite figure, as runtime/json_text writes it
    run = curves_from_records("r", Path("r"), Path("r/m"), records)
    assert run.loss["loss_cls"].steps == (2, 3, 4)


def test_metric_file_names_match_the_stages_that_write_them(tmp_path: Path) -> None:
    assert RUN_METRICS == METRICS
    teacher = tmp_path / "cnn.pt"
    teacher.write_bytes(b"")
    assert metrics_file_of(teacher) == _legacy_metrics(teacher)
    assert metrics_file_of(tmp_path) == tmp_path / METRICS
    assert default_plot_path(teacher) == tmp_path / "cnn.plot.png"
    assert default_plot_path(tmp_path) == tmp_path / "plot.png"


def test_a_torn_last_line_is_skipped_but_a_bad_middle_line_is_named(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"kind": "step", "step": 1, "loss": 1.0}\n{"kind": "st')
    assert read_metrics(path) == [{"kind": "step", "step": 1, "loss": 1.0}]
    path.write_text('{"step": 1}\n{"kind": "st\n{"step": 2}\n')
    with pytest.raises(UserError, match=r"metrics.jsonl line 2 is not a JSON record"):
        read_metrics(path)


# --- civt-pipe plot --------------------------------------------------------------------------


def test_plot_of_one_run_writes_run_dir_plot_png_of_the_grid_size(tmp_path: Path) -> None:
    run_dir = _write_run(tmp_path / "civt", _student_records())
    result = plot_runs(PlotConfig(run_dirs=(run_dir,)))
    panels = ["loss", "loss_cls", "loss_kd_cnn", "learning rate", "top-1 accuracy"]
    assert result["panels"] == panels
    assert result["out"] == str(run_dir / "plot.png")
    image = _png(run_dir / "plot.png")
    assert image.size == png_size(*grid_shape(5)) == (1440, 640)
    assert (result["width"], result["height"]) == image.size
    # One run: the second head's curve (val mean) takes the second colour.
    assert _has_colour(image, BLUE) and _has_colour(image, ORANGE)
    without_val = _write_run(tmp_path / "noval", _student_records(val=False))
    plot_runs(PlotConfig(run_dirs=(without_val,)))
    assert not _has_colour(_png(without_val / "plot.png"), ORANGE)


def test_plot_overlays_several_runs_in_their_own_colours(tmp_path: Path) -> None:
    first = _write_run(tmp_path / "a" / "civt", _student_records())
    second = _write_run(tmp_path / "b" / "civt", _student_records(scale=2.0, val=False))
    teacher = _teacher(tmp_path / "cnn.pt")
    out = tmp_path / "pictures" / "runs.png"
    result = runner.invoke(
        app, ["plot", str(first), str(second), str(teacher), "--out", str(out), "--json"]
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    # Two runs called "civt": the legend names them by the paths given instead.
    assert [r["name"] for r in report["runs"]] == ["civt", "civt", "cnn"]
    assert report["panels"][-2:] == ["top-1 accuracy", "top-5 accuracy"]
    image = _png(out)
    assert image.size == png_size(*grid_shape(len(report["panels"])))
    assert _has_colour(image, BLUE) and _has_colour(image, ORANGE)


@pytest.mark.slow  # a real two-epoch train-student run: ~8 s on a busy 2-core machine
def test_plot_of_a_real_train_student_run(tmp_path: Path) -> None:
    root = tmp_path
    train = make_toy_shards(root, "train", per_class=8)
    val = make_toy_shards(root / "val", "test", per_class=4, seed=1)
    store = dump_toy_store(train, make_toy_teacher(root / "cnn.pt"), root / "store.zarr", views=1)
    run_dir = root / "run"
    train_student(
        StudentTrainConfig(
            data=str(train),
            store=str(store),
            out=str(run_dir),
            model="civt-nano",
            epochs=2,
            batch_size=8,
            val=str(val),
            log_every=1,
            device="cpu",
            workers=0,
            progress=False,
            shuffle_buffer=8,
        )
    )
    result = plot_runs(PlotConfig(run_dirs=(run_dir,)))
    assert result["panels"][:4] == ["loss", "loss_cls", "loss_kd_cnn", "learning rate"]
    assert "top-1 accuracy" in result["panels"]
    assert _png(run_dir / "plot.png").size == (result["width"], result["height"])


@pytest.mark.parametrize(
    ("setup", "args", "message"),
    [
        ("empty_dir", ["{d}"], "has no metrics.jsonl (is it a train-student --out directory?)"),
        ("teacher_no_metrics", ["{d}/cnn.pt"], "has no cnn.metrics.jsonl beside it"),
        ("empty_metrics", ["{d}"], "metrics.jsonl holds no records yet"),
        ("run", ["{d}", "{d}"], "plotting 2 runs together needs --out FILE.png"),
        ("run", ["{d}", "--out", "{d}/plot.svg"], "give a file name ending in .png"),
        ("run", ["{d}/missing"], "missing does not exist"),
        ("no_figures", ["{d}"], "hold no loss, learning rate or validation figure"),
    ],
)
def test_plot_bad_input_is_one_line(
    tmp_path: Path, setup: str, args: list[str], message: str
) -> None:
    d = tmp_path / "run"
    if setup == "run":
        _write_run(d, _student_records())
    else:
        d.mkdir()
    if setup == "teacher_no_metrics":
        (d / "cnn.pt").write_bytes(b"")
    if setup == "empty_metrics":
        (d / "metrics.jsonl").write_text("")
    if setup == "no_figures":
        (d / "metrics.jsonl").write_text('{"kind": "step", "step": 1, "images_per_s": 9.0}\n')
    result = runner.invoke(app, ["plot", *(a.format(d=d) for a in args)])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("civt-pipe: error: ")
    assert message in lines[0]
    assert not list(tmp_path.rglob("*.png"))


@pytest.mark.parametrize("command", ["plot", "inspect-store"])
def test_missing_plots_extra_is_one_line_naming_the_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: str
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` raises ImportError
    run_dir = _write_run(tmp_path / "run", _student_records())
    # inspect-store checks for the extra before it opens the store, so any path shows it.
    args = (
        ["plot", str(run_dir)]
        if command == "plot"
        else ["inspect-store", str(tmp_path / "store.zarr"), "--plot", str(tmp_path / "s.png")]
    )
    result = runner.invoke(app, args)
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and INSTALL_HINT in lines[0]
    assert not list(tmp_path.rglob("*.png"))


# --- inspect-store --plot --------------------------------------------------------------------


@pytest.fixture(scope="module")
def two_teacher_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Toy shards (3 classes) dumped with the same untrained teacher under two names: the two
    always agree, so every per-class agreement is exactly 1."""
    root = tmp_path_factory.mktemp("plot_store")
    data = make_toy_shards(root, "train", per_class=6)
    ckpt = make_toy_teacher(root / "cnn.pt")
    teachers = tuple(TeacherSpec.parse(f"{n}=cnn-nano:{ckpt}") for n in ("cnn", "twin"))
    out = root / "store.zarr"
    config = DumpConfig(
        data=str(data), teachers=teachers, out=out, topk=2, views=2, workers=0, device="cpu"
    )
    run_dump(config)
    return out


def test_store_class_stats_agree_with_the_inspection_report(two_teacher_store: Path) -> None:
    stats = store_class_stats(two_teacher_store)
    report = inspect_store(two_teacher_store)
    assert stats.class_names == ("bright", "dark", "mid")
    assert stats.views.sum() == 3 * 6 * 2
    weights = stats.views / stats.views.sum()
    for t in report["teachers"]:
        name = t["name"]
        confusion = stats.confusion[name]
        assert confusion.sum() == stats.views.sum()
        assert (confusion.sum(axis=1) == stats.views).all()
        assert np.trace(confusion) / confusion.sum() == pytest.approx(t["top1"])
        assert (weights * stats.top1[name]).sum() == pytest.approx(t["top1"])
        assert (weights * stats.entropy[name]).sum() == pytest.approx(t["mean_entropy"])
        assert (weights * stats.leftover[name]).sum() == pytest.approx(t["mean_leftover"])
    assert list(stats.agreement) == [("cnn", "twin")]
    assert (stats.agreement[("cnn", "twin")] == 1.0).all()


def test_inspect_store_plot_writes_the_png_and_names_it(
    two_teacher_store: Path, tmp_path: Path
) -> None:
    out = tmp_path / "store.png"
    result = runner.invoke(
        app, ["inspect-store", str(two_teacher_store), "--plot", str(out), "--json"]
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["plot"] == str(out)
    # top-1, agreement, entropy, leftover and one confusion matrix per teacher: 3 rows of 2.
    assert _png(out).size == png_size(3, 2)


def test_inspect_store_plot_of_one_teacher_has_no_agreement_panel(tmp_path: Path) -> None:
    data = make_toy_shards(tmp_path, "train", per_class=4)
    store = dump_toy_store(data, make_toy_teacher(tmp_path / "cnn.pt"), tmp_path / "s.zarr")
    out = tmp_path / "one.png"
    report = run_inspect_store(InspectStoreConfig(store=store, tables=False, plot=out))
    assert report["plot"] == str(out)
    assert _png(out).size == png_size(2, 2)  # top-1, entropy, leftover, one confusion matrix
