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

# The pins are exact bytes, and float kernels differ in their last bits between hosts: ATen's
# vectorized kernels by CPU capability (torch.backends.cpu.get_cpu_capability()), MKL's and
# oneDNN's by the CPU itself (an AMD AVX512 host gave a third set of digests, neither the earlier
# AVX512 host's nor the AVX2 host's). So each kernel family has its own record, keyed by
# kernel_family(): the capability and a digest of a fixed probe through the kernels the pinned
# runs use. On a host of an unrecorded family the store's figures are still compared (within
# FIGURE_TOLERANCE) and every run's final loss (LOSSES, within 0.01), and the exact digests are
# left out with a warning that says how to record them: run this file, copy the printed values
# into PINS.
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
# - Records were keyed by the capability alone until an AMD AVX512 host matched neither record
#   at unchanged code (its losses and rounded figures did). The two earlier records (an AVX2
#   host: teacher fc131ac0…, store 6ffcd458…, student 5faeff0c…; an AVX512 host: 36b5c0ca…,
#   57e3551c…, 6e4413db…) were taken before kernel_family() existed and their hosts' probe
#   digests are unknown, so they are no longer checked; such a host warns until it is recorded.
# - LOSSES (every family, within 0.01) was recorded on the AVX2 host; the same runs with
#   ATEN_CPU_CAPABILITY=default (the plain kernels, whose random initialization and logits
#   already differ) end 0.002 (teacher) and 0.001 (student) away. A change of what the runs
#   compute moves them further.
LOSSES: dict[str, float] = {"teacher": 2.1615, "student": 3.5493}
"""Each pinned run's last-epoch training loss, within 0.01 on every kernel family."""

PINS: dict[str, dict[str, str]] = {
    "AVX512-85599c107099": {
        "teacher": "5cd9b9450a51b2a8ad9ece220aceee96e367de6bdeaabb1d21b8e481103097c3",
        "store": "ce35365bb642f5fdb28ec7df6104885c40d408ef7ed3b4c9bd4de21bf24ef3fb",
        "student": "02c0bc10e02f81f5b05eb079fdef9e8ec7dc18d629d756b4efbb7cd1e351001f",
        "figures": (
            '{"num_classes": 10, "num_samples": 359, "num_views": 2, "teachers": [{"a'
            'rch": "cnn-nano", "bytes_on_disk": 12551, "bytes_per_sample_view": 17.48'
            '0501, "checkpoint_sha256": "ac9ad5c7dfea6b9b0c6945b60ae7f2f1f8e193362180'
            '11382d9bc8e5bf582321", "mean_entropy": 2.258571, "mean_leftover": 0.3946'
            '93, "name": "cnn", "top1": 0.107242}, {"arch": "inn-nano", "bytes_on_dis'
            'k": 16594, "bytes_per_sample_view": 23.111421, "checkpoint_sha256": "d79'
            '6006cbfd04d86098fb9728a29ccbfdb436ecdc65080ec37922b4a8b543239", "mean_en'
            'tropy": 0.139683, "mean_leftover": 0.012852, "name": "inn", "top1": 0.08'
            '3565}], "topk": 5}'
        ),
    },
}


def kernel_family() -> str:
    """This host's float kernels as a name: the ATen capability and a digest of a fixed probe,
    a tiny convolution, GELU, layer norm, linear layer and log-softmax, forward and backward, on
    one thread (as the pinned runs). Hosts whose probe bits agree are taken to compute the
    pinned runs alike."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        g = torch.Generator().manual_seed(0)
        x = torch.randn(4, 3, 9, 9, generator=g)
        conv = torch.randn(8, 3, 3, 3, generator=g, requires_grad=True)
        linear = torch.randn(10, 8 * 81, generator=g, requires_grad=True)
        h = torch.nn.functional.gelu(torch.nn.functional.conv2d(x, conv, padding=1))
        h = torch.nn.functional.layer_norm(h.flatten(1), (8 * 81,))
        out = torch.log_softmax(h @ linear.T, dim=1)
        out[:, 0].sum().backward()
        digest = hashlib.sha256()
        for tensor in (out, conv.grad, linear.grad):
            assert tensor is not None
            digest.update(tensor.detach().contiguous().numpy().tobytes())
    finally:
        torch.set_num_threads(threads)
    return f"{torch.backends.cpu.get_cpu_capability()}-{digest.hexdigest()[:12]}"


def _exact(name: str) -> str | None:
    """This kernel family's exact pin ``name``; None on a family with no record (then the test
    checks only what holds on every family, and warns how to record the rest)."""
    family = kernel_family()
    if family not in PINS:
        warnings.warn(
            f"no exact pins recorded for CPU kernel family {family}: run "
            "tests/test_behaviour_pins.py and record this family's values in PINS",
            stacklevel=2,
        )
        return None
    return PINS[family][name]


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


FIGURE_TOLERANCE = 0.005
"""How far a store figure may move between kernel families: one image of the 359 is 0.0028 of
top-1. With ATEN_CPU_CAPABILITY=default (the plain kernels, as on a non-x86 host) the dump's
random-init teachers already get other weights, and the figures move by up to one image."""


def _assert_figures_close(figures: str, reference: str) -> None:
    """The store's figures on any kernel family: counts, names and architectures equal, every
    float within FIGURE_TOLERANCE (byte counts and the teachers' checkpoint digests aside: they
    follow the bits)."""
    ours, theirs = json.loads(figures), json.loads(reference)
    ours_teachers, their_teachers = ours.pop("teachers"), theirs.pop("teachers")
    assert len(ours_teachers) == len(their_teachers), figures
    for teacher in (*ours_teachers, *their_teachers):
        for key in ("bytes_on_disk", "bytes_per_sample_view", "checkpoint_sha256"):
            teacher.pop(key)
    for a, b in zip([ours, *ours_teachers], [theirs, *their_teachers], strict=True):
        assert a.keys() == b.keys(), figures
        for key, value in a.items():
            if isinstance(value, float):
                assert value == pytest.approx(b[key], abs=FIGURE_TOLERANCE), (key, figures)
            else:
                assert value == b[key], (key, figures)


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
    # Any host: the store's figures agree within a tolerance, whatever the kernels.
    _assert_figures_close(figures, _any_figures())
    store = _store_digest(pinned["store"])
    if (expected := _exact("store")) is not None:
        assert store == expected, store
        assert figures == _exact("figures"), figures


def test_train_student_weights_are_pinned(pinned: dict[str, Any]) -> None:
    weights = pinned["student"]["weights_sha256"]
    assert _last_epoch_loss(pinned["student_run"]) == pytest.approx(LOSSES["student"], abs=0.01)
    if (expected := _exact("student")) is not None:
        assert weights == expected, weights
