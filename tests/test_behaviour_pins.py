"""Behaviour pins: fixed commands whose outputs must not change by accident.

Recorded before the layout refactor (issue 10) and kept through it: the store bytes of a fixed
``dump-logits`` run (every array's content digest plus ``inspect-store --json`` figures), the
weights of a fixed ``train-student`` run, and the weights of a fixed one-epoch ``train-teacher``
run. A deliberate change of behaviour updates the pin in the same commit and says why.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import zarr
from typer.testing import CliRunner

from civt_pipe.cli.app import app
from civt_pipe.pipeline.models.checkpoint import make_checkpoint, save_checkpoint
from civt_pipe.pipeline.models.factory import create_model

pytestmark = pytest.mark.slow

# The pins are exact bytes, and float kernels differ in their last bits between CPU kernel
# families (torch.backends.cpu.get_cpu_capability(): AVX2 and AVX512 hosts pick other ATen and
# oneDNN code paths), so each family has its own record (AVX2 and AVX512 so far). On a host of
# an unrecorded family the store's figures are still compared (rounded) and every run's final
# loss (LOSSES, within 0.01), and the exact digests are left out with a warning that says how to
# record them: run this file, copy the printed values into PINS.
#
# History (why a pin moved; every move kept the other pins):
# - Store format 3 (issue 16) and 4 (issue 14, sharding) moved only byte counts, never the
#   decoded contents the store digest hashes.
# - Issue 10 "one stream" moved both weight pins on purpose (one planner, one keyed_seed).
# - Issue 22 "one training run" moved the teacher pin on purpose, for one meaning only: the one
#   warm-up rule, min(warm-up epochs, a fifth of the run). The nano recipe's 1 warm-up epoch on
#   this 1-epoch run is now 0.2 epoch; before, train-teacher clamped it to the whole run.
#   Per-rank --batch-size (one rank here) and the rate per 512 images (3.2e-2 × 32/512 equals
#   the former 1.6e-2 × 32/256 exactly) leave it unchanged; the new code with the former rule
#   gave the former weights to the bit. Store and student pins held through issue 22.
# - The first record (store 6ffcd458…, student 5faeff0c…, inn bytes_on_disk 16596) was taken on an
#   AVX2 host (confirmed: an AVX2 host at issue 22's code gives exactly these, recorded below with
#   the teacher's weights after issue 22); on an AVX512 host the same commits give the AVX512
#   record (the inn-nano teacher's logits differ in the last bits, so its compressed bytes differ
#   by 2 B).
# - LOSSES (every family, within 0.01) was recorded on the AVX2 host; the same runs with
#   ATEN_CPU_CAPABILITY=default (the plain kernels, whose random initialization and logits
#   already differ) end 0.002 (teacher) and 0.001 (student) away. A change of what the runs
#   compute moves them further.
LOSSES: dict[str, float] = {"teacher": 2.1615, "student": 3.5493}
"""Each pinned run's last-epoch training loss, within 0.01 on every kernel family."""

PINS: dict[str, dict[str, str]] = {
    "AVX512": {
        "teacher": "36b5c0ca17b271bb674c1e9e889de64740eaad9b86c13759b7c926514a614186",
        "store": "57e3551c797a820c04f9edb39e38064a5e13fbe4d68e0bfa78b5b6ca05e79697",
        "student": "6e4413db70fd9bc8514d5183a536b36080d6b6de0278280189327246ea7dab0e",
        "figures": (
            '{"num_classes": 10, "num_samples": 359, "num_views": 2, "teachers": [{'
            '"arch": "cnn-nano", "bytes_on_disk": 12551, "bytes_per_sample_view": 1'
            '7.480501, "checkpoint_sha256": "ac9ad5c7dfea6b9b0c6945b60ae7f2f1f8e193'
            '36218011382d9bc8e5bf582321", "mean_entropy": 2.258571, "mean_leftover"'
            ': 0.394693, "name": "cnn", "top1": 0.107242}, {"arch": "inn-nano", "by'
            'tes_on_disk": 16594, "bytes_per_sample_view": 23.111421, "checkpoint_s'
            'ha256": "d796006cbfd04d86098fb9728a29ccbfdb436ecdc65080ec37922b4a8b543'
            '239", "mean_entropy": 0.139683, "mean_leftover": 0.012852, "name": "in'
            'n", "top1": 0.083565}], "topk": 5}'
        ),
    },
    "AVX2": {
        "teacher": "fc131ac01687e5ba95806a7560e19d66a2fecf9b20ef0d78680c21e238d493f9",
        "store": "6ffcd458965999692e0249bf6d1c69f03009502c9512762a16732b8f137e1aee",
        "student": "5faeff0c84a5afcb1b13b51086be871b45848841650d6e6163212033f7298a6a",
        "figures": (
            '{"num_classes": 10, "num_samples": 359, "num_views": 2, "teachers": [{"a'
            'rch": "cnn-nano", "bytes_on_disk": 12551, "bytes_per_sample_view": 17.48'
            '0501, "checkpoint_sha256": "ac9ad5c7dfea6b9b0c6945b60ae7f2f1f8e193362180'
            '11382d9bc8e5bf582321", "mean_entropy": 2.258571, "mean_leftover": 0.3946'
            '93, "name": "cnn", "top1": 0.107242}, {"arch": "inn-nano", "bytes_on_dis'
            'k": 16596, "bytes_per_sample_view": 23.114206, "checkpoint_sha256": "d79'
            '6006cbfd04d86098fb9728a29ccbfdb436ecdc65080ec37922b4a8b543239", "mean_en'
            'tropy": 0.139683, "mean_leftover": 0.012852, "name": "inn", "top1": 0.08'
            '3565}], "topk": 5}'
        ),
    },
}


def _exact(name: str) -> str | None:
    """This kernel family's exact pin ``name``; None on a family with no record (then the test
    checks only what holds on every family, and warns how to record the rest)."""
    capability = torch.backends.cpu.get_cpu_capability()
    if capability not in PINS:
        warnings.warn(
            f"no exact pins recorded for CPU kernel family {capability}: run "
            "tests/test_behaviour_pins.py and record this family's values in PINS",
            stacklevel=2,
        )
        return None
    return PINS[capability][name]


def _cli(*args: str) -> dict[str, Any]:
    result = CliRunner().invoke(app, [*args, "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def _arrays(group: Any, prefix: str = "") -> Any:
    for name, array in group.arrays():
        yield prefix + name, array
    for name, sub in group.groups():
        yield from _arrays(sub, f"{prefix}{name}/")


def _store_digest(path: Path) -> str:
    digest = hashlib.sha256()
    for name, array in sorted(_arrays(zarr.open_group(str(path), mode="r"))):
        digest.update(f"{name}{array.shape}{array.dtype}".encode())
        values = np.asarray(array[...])
        if values.dtype.kind in "OTU":  # strings: hash the text, not object pointers
            digest.update("\n".join(str(v) for v in values.tolist()).encode())
        else:
            digest.update(np.ascontiguousarray(values).tobytes())
    return digest.hexdigest()


@pytest.fixture(scope="module")
def pinned(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("pins")
    data = root / "data"
    _cli("make-shards", "digits", str(data), "--split", "test", "--shard-size", "100")
    common = ["--device", "cpu", "--workers", "0", "--threads", "1"]
    trained = root / "trained-cnn"  # a run directory, as every trainer writes
    _cli(
        "train-teacher", "--arch", "cnn-nano", "--data", str(data), "--out", str(trained),
        "--epochs", "1", "--batch-size", "32", "--seed", "3", *common,
    )  # fmt: skip
    # The dump's teachers are fixed random weights, so the store pin does not move with
    # teacher training.
    store = root / "store.zarr"
    dump_args = ["dump-logits", "--data", str(data), "--out", str(store)]
    for i, (name, arch) in enumerate((("cnn", "cnn-nano"), ("inn", "inn-nano"))):
        torch.manual_seed(100 + i)
        model = create_model(arch, num_classes=10, in_chans=1, image_size=16)
        save_checkpoint(root / f"{name}.pt", make_checkpoint(model))
        dump_args += ["--teacher", f"{name}={arch}:{root / name}.pt"]
    _cli(*dump_args, "--views", "2", "--topk", "5", "--seed", "7", "--batch-size", "64", *common)
    report = _cli("inspect-store", str(store))
    student = _cli(
        "train-student", "--data", str(data), "--store", str(store), "--model", "civt-nano",
        "--out", str(root / "run"), "--epochs", "2", "--batch-size", "32", *common,
    )  # fmt: skip
    return {
        "teacher": trained,
        "store": store,
        "report": report,
        "student": student,
        "student_run": root / "run",
    }


def _figures(report: dict[str, Any]) -> str:
    keep = {k: report[k] for k in ("num_samples", "num_views", "topk", "num_classes")}
    keep["teachers"] = [
        {k: round(v, 6) if isinstance(v, float) else v for k, v in sorted(t.items())}
        for t in report["teachers"]
    ]
    return json.dumps(keep, sort_keys=True)


def _any_figures() -> str:
    return next(iter(PINS.values()))["figures"]


def _rounded(figures: str) -> str:
    """The figures at 3 decimals without byte counts: equal on every CPU kernel family."""
    report = json.loads(figures)
    for teacher in report["teachers"]:
        for key in ("bytes_on_disk", "bytes_per_sample_view"):
            teacher.pop(key)
        for key, value in teacher.items():
            if isinstance(value, float):
                teacher[key] = round(value, 3)
    return json.dumps(report, sort_keys=True)


def _last_epoch_loss(run_dir: Path) -> float:
    """The training loss of a run's last epoch, from its ``metrics.jsonl`` (train-teacher
    writes one record an epoch with ``train_loss``; train-student also step records, and its
    epoch records say ``"kind": "epoch"`` and ``loss``)."""
    lines = (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    records = [json.loads(line) for line in lines]
    last = [r for r in records if r.get("kind", "epoch") == "epoch"][-1]
    return float(last["loss"] if "loss" in last else last["train_loss"])


def test_train_teacher_weights_are_pinned(pinned: dict[str, Any]) -> None:
    final = pinned["teacher"] / "final.pt"
    state = torch.load(final, map_location="cpu", weights_only=True)["state_dict"]
    digest = hashlib.sha256()
    for name, tensor in sorted(state.items()):
        digest.update(name.encode())
        digest.update(tensor.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    assert _last_epoch_loss(pinned["teacher"]) == pytest.approx(LOSSES["teacher"], abs=0.01)
    expected = _exact("teacher")
    if expected is not None:
        assert digest.hexdigest() == expected, digest.hexdigest()


def test_dump_logits_store_bytes_are_pinned(pinned: dict[str, Any]) -> None:
    figures = _figures(pinned["report"])
    # Any host: the store's figures agree to 3 decimals (bytes on disk aside), whatever the kernels.
    assert _rounded(figures) == _rounded(_any_figures()), figures
    store = _store_digest(pinned["store"])
    if (expected := _exact("store")) is not None:
        assert store == expected, store
        assert figures == _exact("figures"), figures


def test_train_student_weights_are_pinned(pinned: dict[str, Any]) -> None:
    weights = pinned["student"]["weights_sha256"]
    assert _last_epoch_loss(pinned["student_run"]) == pytest.approx(LOSSES["student"], abs=0.01)
    if (expected := _exact("student")) is not None:
        assert weights == expected, weights
