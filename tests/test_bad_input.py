"""The bad-input battery: every command, given what a careless or hostile user gives it.

Each case runs the command line in-process and asserts the contract of docs/architecture.md ("Errors
a user can cause") / issue 16: exit code 2, exactly one stderr line starting with ``civt-pipe:
error:``, no traceback, and — when the run is refused before any work — the files it was pointed at
unchanged (the case's own directory and the shared fixtures, compared byte for byte before and
after).

The fixtures (toy shards, an untrained teacher, a store, a short student run) are built once
for the module; a case that damages something copies it into its own directory first.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from civt_pipe.cli.app import app
from civt_pipe.pipeline.models.checkpoint import load_checkpoint, save_checkpoint

SIZE = 16


@pytest.fixture(scope="module")
def world(toy_world: dict[str, Path]) -> dict[str, Path]:
    """The shared toy run (tests/conftest.py ``toy_world``): toy shards, a cnn-nano teacher
    (``ckpt``: its final.pt), a store of the train shards (V = 2, k = 3) and a one-epoch student
    run from it."""
    return toy_world


# ------------------------------------------------------------------------------- damage kits


def _copy(src: Path, dst: Path) -> Path:
    if src.is_dir():
        shutil.copytree(src, dst)
    else:
        shutil.copyfile(src, dst)
    return dst


def _flip_bytes(path: Path, at: float = 0.5) -> None:
    data = bytearray(path.read_bytes())
    i = int(len(data) * at)
    data[i : i + 8] = bytes(b ^ 0xFF for b in data[i : i + 8])
    path.write_bytes(bytes(data))


def _chunks(array: Path) -> list[Path]:
    """The chunk files of a zarr v3 array directory (everything but its metadata)."""
    return sorted(p for p in array.rglob("*") if p.is_file() and p.name != "zarr.json")


def truncated_tar(tmp: Path, w: dict[str, Path]) -> None:
    shards = _copy(w["train"], tmp / "shards")
    tar = shards / "train-000000.tar"
    tar.write_bytes(tar.read_bytes()[: tar.stat().st_size // 2])


def duplicate_keys(tmp: Path, w: dict[str, Path]) -> None:
    """A shard set whose third tar is a copy of the second: its keys occur twice."""
    shards = _copy(w["test"], tmp / "shards")
    index = json.loads((shards / "index.json").read_text())
    first = index["shards"][0]
    _copy(shards / first["name"], shards / "test-000009.tar")
    index["shards"].append({**first, "name": "test-000009.tar"})
    index["num_samples"] += first["num_samples"]
    (shards / "index.json").write_text(json.dumps(index))


def corrupt_png(tmp: Path, w: dict[str, Path]) -> None:
    """Flip bytes inside the image data of the first sample (the tar itself stays whole)."""
    shards = _copy(w["train"], tmp / "shards")
    tar = shards / "train-000000.tar"
    with tarfile.open(tar) as tf:
        member = next(m for m in tf.getmembers() if m.name.endswith(".png"))
    data = bytearray(tar.read_bytes())
    start = member.offset_data + 16  # past the PNG signature and IHDR length
    data[start : start + member.size - 16] = bytes(len(data[start : start + member.size - 16]))
    tar.write_bytes(bytes(data))


def garbage_checkpoint(tmp: Path, w: dict[str, Path]) -> None:
    (tmp / "ckpt.pt").write_bytes(b"this is not a checkpoint" * 10)


def truncated_checkpoint(tmp: Path, w: dict[str, Path]) -> None:
    data = w["ckpt"].read_bytes()
    (tmp / "ckpt.pt").write_bytes(data[: len(data) // 2])


def pickled_code(tmp: Path, w: dict[str, Path]) -> None:
    """A checkpoint whose pickle names a class to build (code run at load time)."""
    ckpt = load_checkpoint(w["ckpt"])
    ckpt["extra"] = argparse.Namespace(payload="import os")
    torch.save(ckpt, tmp / "ckpt.pt")


def directory_checkpoint(tmp: Path, w: dict[str, Path]) -> None:
    (tmp / "ckpt.pt").mkdir()


def nan_teacher(tmp: Path, w: dict[str, Path]) -> None:
    ckpt = load_checkpoint(w["ckpt"])
    for tensor in ckpt["state_dict"].values():
        if tensor.is_floating_point():
            tensor.fill_(float("nan"))
    save_checkpoint(tmp / "ckpt.pt", ckpt)


def store_copy(tmp: Path, w: dict[str, Path]) -> Path:
    return _copy(w["store"], tmp / "store.zarr")


def store_missing_teacher(tmp: Path, w: dict[str, Path]) -> None:
    shutil.rmtree(store_copy(tmp, w) / "teachers" / "cnn")


def store_missing_chunk(tmp: Path, w: dict[str, Path]) -> None:
    _chunks(store_copy(tmp, w) / "teachers" / "cnn" / "logprobs")[0].unlink()


def store_flipped_aug(tmp: Path, w: dict[str, Path]) -> None:
    aug = store_copy(tmp, w) / "aug"
    _flip_bytes(next(p for a in sorted(aug.iterdir()) if a.is_dir() for p in _chunks(a)))


def store_flipped_lse(tmp: Path, w: dict[str, Path]) -> None:
    _flip_bytes(_chunks(store_copy(tmp, w) / "teachers" / "cnn" / "lse")[0])


def run_copy(tmp: Path, w: dict[str, Path]) -> None:
    _copy(w["run"], tmp / "run")


def a_file(tmp: Path, w: dict[str, Path]) -> None:
    (tmp / "file").write_text("not a directory\n")


def a_csv(tmp: Path, w: dict[str, Path]) -> None:
    (tmp / "file.csv").write_text("key,label\n")


def a_directory(tmp: Path, w: dict[str, Path]) -> None:
    (tmp / "dir").mkdir()


def a_run_dir(tmp: Path, w: dict[str, Path]) -> None:
    _copy(w["run"], tmp / "dir")


def teacher_out_exists(tmp: Path, w: dict[str, Path]) -> None:
    _copy(w["ckpt"], tmp / "teacher.pt")


def config_typo(tmp: Path, w: dict[str, Path]) -> None:
    (tmp / "run.toml").write_text("epochs = 1\nbatch_sise = 8\n")


def config_wrong_type(tmp: Path, w: dict[str, Path]) -> None:
    (tmp / "run.toml").write_text('epochs = "two"\n')


# ------------------------------------------------------------------------------------ cases


@dataclass(frozen=True)
class Case:
    id: str
    args: list[str]
    """Command line; ``{train} {test} {ckpt} {store} {run}`` name the fixtures, ``{tmp}`` the
    case's own directory."""
    expect: str
    """A piece of the error line (case-insensitive; ``{tmp}`` and the fixtures as in args)."""
    setup: Callable[[Path, dict[str, Path]], Any] | None = None
    refused: bool = True
    """False: the mistake shows only once work has begun, so files may have been written."""
    pending: str | None = None
    """Why the case still fails (another part of issue 16): expected to fail, strictly."""


def tt(
    *extra: str, data: str = "{train}", out: str = "{tmp}/t.pt", arch: str = "cnn-nano"
) -> list[str]:
    return ["train-teacher", "--arch", arch, "--data", data, "--out", out, *extra]


def dl(*extra: str, data: str = "{train}", ckpt: str = "{ckpt}", out: str = "{tmp}/s") -> list[str]:
    return [
        "dump-logits",
        "--data",
        data,
        "--teacher",
        f"cnn=cnn-nano:{ckpt}",
        "--out",
        out,
        *extra,
    ]


def ts(
    *extra: str, data: str = "{train}", store: str = "{store}", out: str = "{tmp}/out"
) -> list[str]:
    # Epochs = V and a batch the 24 samples fill: a case's own option comes later and wins.
    head = ["train-student", "--data", data, "--store", store, "--out", out]
    return [*head, "--epochs", "2", "--batch-size", "8", "--warmup-epochs", "0", *extra]


def ev(*extra: str, ckpt: str = "{run}/final.pt", data: str = "{test}") -> list[str]:
    return ["evaluate", "--checkpoint", ckpt, "--data", data, *extra]


def pr(*extra: str, ckpt: str = "{run}/final.pt") -> list[str]:
    # The last --out wins: a case's own replaces this default.
    return ["predict", "--checkpoint", ckpt, "--data", "{test}", "--out", "{tmp}/p.jsonl", *extra]


def ms(*extra: str, source: str = "digits", out: str = "{tmp}/shards") -> list[str]:
    return ["make-shards", source, out, *extra]


def qs(*extra: str, out: str = "{tmp}/q") -> list[str]:
    return ["quickstart", "--out", out, *extra]


BAD = "{tmp}/ckpt.pt"

CASES = [
    # make-shards
    Case("shards-size-0", ms("--shard-size", "0"), "--shard-size must be at least 1"),
    Case("shards-size-text", ms("--shard-size", "abc"), "--shard-size"),
    Case("shards-split", ms("--split", "val"), "--split must be one of"),
    Case("shards-quality", ms("--format", "jpg", "--jpeg-quality", "101"), "--jpeg-quality"),
    Case("shards-source", ms(source="nosuch:x"), "nosuch"),
    Case("shards-folder", ms(source="folder:{tmp}/none"), "none"),
    Case("shards-no-outdir", ["make-shards", "digits"], "missing argument"),
    Case("shards-into-used", ms(out="{train}"), "--overwrite"),
    # train-teacher
    Case("teacher-epochs-neg", tt("--epochs", "-1"), "--epochs must be at least 1"),
    Case("teacher-epochs-text", tt("--epochs", "abc"), "--epochs"),
    Case("teacher-lr-inf", tt("--lr", "inf"), "--lr must be a finite number"),
    Case("teacher-wd-nan", tt("--weight-decay", "nan"), "--weight-decay must be a finite"),
    Case("teacher-warmup-nan", tt("--warmup-epochs", "nan"), "--warmup-epochs must be a"),
    Case("teacher-threads-huge", tt("--threads", "99999999999999999999"), "--threads"),
    Case("teacher-workers-huge", tt("--workers", "100000"), "--workers must be at most"),
    Case("teacher-unknown-option", tt("--bogus", "1"), "no such option: --bogus"),
    Case("teacher-missing-arch", ["train-teacher", "--data", "{train}"], "missing option"),
    Case("teacher-arch", tt(arch="nosuch-arch"), "nosuch-arch"),
    Case("teacher-data-missing", tt(data="{tmp}/none"), "none"),
    Case("teacher-resume-overwrite", tt("--resume", "--overwrite"), "contradict"),
    Case("teacher-out-exists", tt(out="{tmp}/teacher.pt"), "exists", teacher_out_exists),
    Case("teacher-out-holds-a-run", tt(out="{tmp}/dir"), "already holds a run", a_run_dir),
    Case("teacher-init-garbage", tt("--init", BAD), "ckpt.pt", garbage_checkpoint),
    # dump-logits
    Case("dump-topk-0", dl("--topk", "0"), "--topk must be at least 1"),
    Case("dump-views-0", dl("--views", "0"), "--views must be at least 1"),
    Case("dump-views-text", dl("--views", "two"), "--views"),
    Case("dump-topk-over-classes", dl("--topk", "4"), "--topk"),
    Case(
        "dump-spec",
        ["dump-logits", "--data", "{train}", "--teacher", "cnn-nano", "--out", "{tmp}/s"],
        "NAME=ARCH:CHECKPOINT",
    ),
    Case("dump-same-name", dl("--teacher", "cnn=cnn-nano:{ckpt}"), "given twice"),
    Case("dump-ckpt-missing", dl(ckpt="{tmp}/none.pt"), "none.pt"),
    Case("dump-ckpt-garbage", dl(ckpt=BAD), "ckpt.pt", garbage_checkpoint),
    Case("dump-ckpt-truncated", dl(ckpt=BAD), "ckpt.pt", truncated_checkpoint),
    Case("dump-ckpt-pickled-code", dl(ckpt=BAD), "pickled code", pickled_code),
    Case("dump-ckpt-directory", dl(ckpt=BAD), "directory", directory_checkpoint),
    Case("dump-truncated-tar", dl(data="{tmp}/shards"), "train-000000.tar", truncated_tar),
    Case("dump-nan-teacher", dl("--topk", "3", ckpt=BAD), "cnn", nan_teacher, refused=False),
    # inspect-store
    Case("inspect-missing", ["inspect-store", "{tmp}/none.zarr"], "none.zarr"),
    Case("inspect-not-a-store", ["inspect-store", "{tmp}/dir"], "dir", a_directory),
    Case("inspect-unknown-option", ["inspect-store", "{store}", "--deep"], "--deep"),
    Case(
        "inspect-missing-teacher",
        ["inspect-store", "{tmp}/store.zarr"],
        "teachers/cnn",
        store_missing_teacher,
    ),
    Case(
        "inspect-verify-missing-chunk",
        ["inspect-store", "{tmp}/store.zarr", "--verify"],
        "logprobs",
        store_missing_chunk,
    ),
    Case(
        "inspect-verify-flipped-aug",
        ["inspect-store", "{tmp}/store.zarr", "--verify"],
        "aug/",
        store_flipped_aug,
    ),
    Case(
        "inspect-verify-flipped-lse",
        ["inspect-store", "{tmp}/store.zarr", "--verify"],
        "lse",
        store_flipped_lse,
    ),
    # train-student
    Case("student-lr-inf", ts("--lr", "inf"), "--lr must be a finite number"),
    Case("student-lambda-cls-nan", ts("--lambda-cls", "nan"), "--lambda-cls must be a"),
    Case("student-warmup-nan", ts("--warmup-epochs", "nan"), "--warmup-epochs must be a"),
    Case("student-wd-nan", ts("--weight-decay", "nan"), "--weight-decay must be a finite"),
    Case("student-tau-nan", ts("--tau", "nan"), "--tau 'nan' is not a finite number"),
    Case("student-tau-negative", ts("--tau", "cnn=-1"), "--tau cnn must be at least 0.1, got -1"),
    Case("student-lambda-text", ts("--lambda", "cnn=abc"), "--lambda 'cnn=abc'"),
    Case("student-tau-unknown-teacher", ts("--tau", "rnn=2"), "rnn"),
    Case("student-batch-0", ts("--batch-size", "0"), "--batch-size must be at least 1"),
    Case("student-epochs-neg", ts("--epochs", "-1"), "--epochs must be at least 1"),
    Case("student-views-0", ts("--views", "0"), "--views must be at least 1"),
    Case("student-decoder-mismatch", ts("--decoder", "pil"), "use --decoder auto"),
    Case("dump-nvjpeg-on-cpu", dl("--decoder", "nvjpeg"), "needs a cuda device"),
    Case(
        "student-config-unknown-key",
        ts("--config", "{tmp}/run.toml"),
        "train-student has no option 'batch_sise' (did you mean 'batch_size'?)",
        config_typo,
    ),
    Case(
        "teacher-config-wrong-type",
        tt("--config", "{tmp}/run.toml"),
        "'epochs' must be an integer, got string 'two'",
        config_wrong_type,
    ),
    Case("dump-config-missing", dl("--config", "{tmp}/none.toml"), "none.toml does not exist"),
    Case("student-store-and-teacher", ts("--teacher", "cnn=cnn-nano:{ckpt}"), "not both"),
    Case(
        "student-store-typo-overwrite",
        ts("--overwrite", store="{tmp}/stroe.zarr", out="{tmp}/run"),
        "stroe.zarr",
        run_copy,
    ),
    Case("student-batch-over-data", ts("--batch-size", "32", "--epochs", "10"), "lower --batch"),
    Case("student-store-other-shards", ts(data="{test}"), "shard"),
    Case("student-resume-nothing", ts("--resume"), "does not exist"),
    Case("student-run-exists", ts(out="{tmp}/run"), "--overwrite", run_copy),
    Case(
        "student-resume-changed",
        ts("--resume", "--epochs", "1", "--lambda-cls", "0.5", out="{tmp}/run"),
        "lambda_cls",
        run_copy,
    ),
    Case("student-truncated-tar", ts(data="{tmp}/shards"), "train-000000", truncated_tar),
    Case(
        "student-store-missing-teacher",
        ts(store="{tmp}/store.zarr"),
        "teachers/cnn",
        store_missing_teacher,
    ),
    Case(
        "student-store-flipped-aug",
        ts("--verify-replay", "off", store="{tmp}/store.zarr"),
        "aug/",
        store_flipped_aug,
        refused=False,  # found when the chunk is read, in the first epoch
    ),
    Case(
        "student-corrupt-png",
        ts(data="{tmp}/shards"),
        "decod",
        corrupt_png,
        refused=False,
    ),
    # evaluate
    Case("evaluate-batch-0", ev("--batch-size", "0"), "--batch-size must be at least 1"),
    Case(
        "evaluate-store-views-0",
        ev("--store", "{store}", "--store-views", "0"),
        "--store-views must be at least 1",
    ),
    Case(
        "evaluate-store-views-over",
        ev("--store", "{store}", "--store-views", "5", data="{train}"),
        "--store-views",
    ),
    Case("evaluate-store-views-alone", ev("--store-views", "1"), "--store-views needs"),
    Case("evaluate-ckpt-missing", ev(ckpt="{tmp}/none.pt"), "none.pt"),
    Case("evaluate-ckpt-garbage", ev(ckpt=BAD), "ckpt.pt", garbage_checkpoint),
    Case("evaluate-ckpt-pickled-code", ev(ckpt=BAD), "pickled code", pickled_code),
    Case("evaluate-ckpt-directory", ev(ckpt=BAD), "directory", directory_checkpoint),
    Case(
        "evaluate-duplicate-keys", ev(data="{tmp}/shards"), "occurs in two shards", duplicate_keys
    ),
    Case("evaluate-store-of-other-shards", ev("--store", "{store}"), "store"),
    # predict (more cases in test_predict.py)
    Case("predict-suffix", pr("--out", "{tmp}/p.txt"), "predict writes .jsonl, .csv, .npz, .npy"),
    Case("predict-topk-0", pr("--topk", "0"), "--topk must be at least 1"),
    Case("predict-unknown-head", pr("--head", "x"), "unknown head 'x'"),
    Case("predict-ckpt-missing", pr(ckpt="{tmp}/none.pt"), "none.pt"),
    Case("predict-out-exists", pr("--out", "{tmp}/file.csv"), "--overwrite", a_csv),
    # quickstart
    Case("quickstart-topk", qs("--topk", "11"), "--topk must be at most 10"),
    Case("quickstart-epochs-0", qs("--epochs", "0"), "--epochs must be at least 1"),
    Case("quickstart-lr-nan", qs("--lr", "nan"), "--lr must be a finite number"),
    Case("quickstart-views-text", qs("--views", "x"), "--views"),
    Case("quickstart-out-file", qs(out="{tmp}/file"), "file", a_file),
    # export (more cases in test_export.py)
    Case(
        "export-teacher-timm-mean",
        ["export", "{ckpt}", "{tmp}/o.pth", "--format", "timm", "--head", "mean"],
        "is a teacher with one output",
    ),
    Case("export-unknown-head", ["export", "{run}/final.pt", "{tmp}/o.pth", "--head", "x"], "'x'"),
    Case("export-out-exists", ["export", "{run}/final.pt", "{tmp}/file"], "--overwrite", a_file),
    # train-cakd, evaluate --noise (more cases in test_train_cakd.py)
    Case(
        "cakd-teacher-not-vit",
        ["train-cakd", "--data", "{train}", "--teacher", "cnn=cnn-nano:{ckpt}", "--out", "{tmp}/c"],
        "is not a vision transformer",
    ),
    Case(
        "cakd-method",
        ["train-cakd", "--data", "{train}", "--teacher", "t=a:b", "--out", "o", "--method", "x"],
        "--method must be one of",
    ),
    Case("evaluate-noise-negative", ev("--noise", "-0.1"), "--noise must be at least 0"),
    # plot, inspect-store --plot (more cases in test_plots.py)
    Case("plot-no-metrics", ["plot", "{tmp}/dir"], "has no metrics.jsonl", a_directory),
    Case("plot-several-no-out", ["plot", "{run}", "{run}"], "needs --out FILE.png"),
    Case("inspect-plot-not-png", ["inspect-store", "{store}", "--plot", "{tmp}/s.jpg"], ".png"),
    # study (more cases in test_study.py)
    Case(
        "study-unknown-plan",
        ["study", "--data", "{train}", "--val", "{test}", "--out", "{tmp}/s", "--plan", "x"],
        "--plan must be one of",
    ),
    Case(
        "study-seeds-0",
        ["study", "--data", "{train}", "--val", "{test}", "--out", "{tmp}/s", "--seeds", "0"],
        "--seeds must be at least 1",
    ),
    Case(
        "study-subset-too-large",
        ["study", "--data", "{train}", "--val", "{test}", "--out", "{tmp}/s", "--subset", "99"],
        "--subset",
    ),
    # models, and the program itself
    Case("models-unknown-option", ["models", "--all"], "no such option: --all"),
    Case("models-extra-argument", ["models", "resnet18"], "unexpected extra argument"),
    Case("unknown-command", ["train"], "no such command 'train'"),
    # ---- issue 24
    # item 5: one writer rule, "cannot write PATH: REASON", for every output path: below a
    # regular file, and under /proc (root may "write" there by its bits; it refuses entries).
    *[
        Case(f"{name}-out-{where}", args(out), "cannot write", a_file)
        for name, args in {
            "shards": lambda out: ms(out=out),
            "teacher": lambda out: tt(out=f"{out}/t.pt"),
            "student": lambda out: ts(out=out),
            "export": lambda out: ["export", "{run}/final.pt", f"{out}/o.safetensors"],
            "quickstart": lambda out: qs(out=out),
            "inspect-plot": lambda out: ["inspect-store", "{store}", "--plot", f"{out}/s.png"],
            "plot": lambda out: ["plot", "{run}", "--out", f"{out}/p.png"],
        }.items()
        for where, out in (("below-file", "{tmp}/file/sub"), ("proc", "/proc/civt-pipe/sub"))
    ],
    # item 7: --head on a teacher is refused in every format.
    *[
        Case(
            f"export-teacher-head-cls-{form}",
            ["export", "{ckpt}", "{tmp}/o.pt", "--format", form, "--head", "cls"],
            "is a teacher with one output",
        )
        for form in ("safetensors", "timm", "torchscript")
    ],
    # item 8: messages that name what the user typed.
    Case(
        "dump-spec-unknown-arch",
        dl("--teacher", "nn=nosuch:{ckpt}"),
        "unknown architecture 'nosuch'",
    ),
    Case(
        "dump-spec-other-arch",
        ["dump-logits", "--data", "{train}", "--teacher", "cnn=inn-nano:{ckpt}", "--out", "o"],
        "holds a cnn-nano, not an inn-nano",
    ),
    Case("teacher-image-size-2", tt("--image-size", "2"), "--image-size must be at least 4, got 2"),
    Case("student-image-size-3", ts("--image-size", "3"), "--image-size must be at least 4, got 3"),
    Case(
        "teacher-epochs-huge-negative",
        tt("--epochs", "-99999999999999999999"),
        "--epochs must be at least 1, got -99999999999999999999",
    ),
    Case(
        "student-batch-huge",
        ts("--batch-size", "99999999999999999999"),
        "--batch-size must be at most 9223372036854775807",
    ),
    # item 9: one rule for a τ too small to matter, one for --resume with nothing to resume.
    Case("student-tau-tiny", ts("--tau", "1e-30"), "--tau must be at least 0.1, got 1e-30"),
    Case("student-tau-tiny-named", ts("--tau", "cnn=0.01"), "--tau cnn must be at least 0.1"),
    Case(
        "cakd-tau-tiny",
        [
            *("train-cakd", "--data", "{train}", "--teacher", "t=vit-nano:{ckpt}"),
            *("--out", "{tmp}/c", "--tau", "1e-30"),
        ],
        "--tau must be at least 0.1, got 1e-30",
    ),
    Case("teacher-resume-nothing", tt("--resume"), "--resume: {tmp}/t.pt/last.pt does not exist"),
]


def _tree(root: Path) -> dict[str, str]:
    """Every file (by content digest) and folder under ``root``."""
    return {
        str(p.relative_to(root)): "dir"
        if p.is_dir()
        else hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
    }


def _params() -> list[Any]:
    marks: dict[str, list[Any]] = {}
    for case in CASES:
        if case.pending:
            marks[case.id] = [pytest.mark.xfail(strict=True, reason=case.pending)]
    return [pytest.param(c, id=c.id, marks=marks.get(c.id, [])) for c in CASES]


def test_the_battery_covers_every_command_with_forty_cases() -> None:
    commands = {c.args[0] for c in CASES}
    registered = {cmd.name for cmd in app.registered_commands}
    assert registered <= commands, registered - commands
    assert len(CASES) >= 40 and len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", _params())
def test_bad_input_is_one_line_exit_2_and_touches_nothing(
    case: Case, world: dict[str, Path], tmp_path: Path
) -> None:
    if case.setup is not None:
        case.setup(tmp_path, world)
    names = {k: str(v) for k, v in world.items()}
    args = [a.format(tmp=tmp_path, **names) for a in case.args]
    before = (_tree(tmp_path), _tree(world["root"]))

    result = CliRunner().invoke(app, args)

    lines = result.stderr.strip().splitlines()
    assert "Traceback" not in result.output, result.output
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    if not case.refused:  # the run had started: its progress lines come before the error
        assert sum("error:" in line for line in lines) == 1, result.stderr
        lines = lines[-1:]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("civt-pipe: error: "), lines[0]
    expect = case.expect.format(tmp=tmp_path, **names)
    assert expect.lower() in lines[0].lower(), lines[0]
    assert result.stdout == ""
    assert _tree(world["root"]) == before[1], "a shared fixture changed"
    if case.refused:
        assert _tree(tmp_path) == before[0], "a refused run changed its files"


# --------------------------------------------------------- issue 24: refusals before torch


_WATCH_TORCH = """
import contextlib, io, json, os, sys
from civt_pipe.cli.app import app
results = {}
for case, where, args in json.loads(sys.argv[1]):
    os.chdir(where)
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            app(args=args, prog_name="civt-pipe")
        except SystemExit as stop:
            code = stop.code
        else:
            code = 0
    results[case] = {"exit": code, "torch": "torch" in sys.modules, "stderr": err.getvalue()}
print(json.dumps(results))
"""
"""Runs command lines one after another in one fresh interpreter and says, after each, whether
torch was ever imported: a case that imports torch shows in its own result (every case after
it would too, so the cases that may import torch run in processes of their own)."""


def _cli_processes(cases: list[tuple[str, Path, list[str]]]) -> dict[str, dict[str, Any]]:
    """``{case: {"exit", "torch", "stderr"}}`` for ``(case, working directory, args)``, and under
    ``""`` what the process itself wrote to its stderr (C libraries write there directly)."""
    env = {**os.environ, "CIVT_PIPE_NO_PROGRESS": "1", "OMP_NUM_THREADS": "1"}
    payload = json.dumps([(case, str(where), args) for case, where, args in cases])
    done = subprocess.run(
        [sys.executable, "-c", _WATCH_TORCH, payload],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return {**json.loads(done.stdout.strip().splitlines()[-1]), "": {"stderr": done.stderr}}


CUDA = "--device", "cuda"
FP16 = "--device", "cpu", "--precision", "fp16"
COMMANDS: dict[str, list[str]] = {
    "teacher": ["train-teacher", "--arch", "cnn-nano", "--data", "d", "--out", "t.pt"],
    "student": ["train-student", "--data", "d", "--store", "s", "--out", "r"],
    "dump": ["dump-logits", "--data", "d", "--teacher", "t=cnn-nano:ckpt.pt", "--out", "s"],
    "evaluate": ["evaluate", "--checkpoint", "ckpt.pt", "--data", "d"],
    "export": ["export", "ckpt.pt", "o.safetensors"],
    "cakd": ["train-cakd", "--data", "d", "--teacher", "t=vit-nano:ckpt.pt", "--out", "c"],
}
"""A valid-looking command line per command; each refusal below changes one thing in it."""


def _changed(command: str, extra: tuple[str, ...] = (), **values: str) -> list[str]:
    """``COMMANDS[command]`` with the value after ``--NAME`` replaced (``name=value``; an
    ``arg0`` replaces the first positional argument after the command) and ``extra`` added."""
    args = list(COMMANDS[command])
    for name, value in values.items():
        where = 1 if name == "arg0" else args.index("--" + name.replace("_", "-")) + 1
        args[where] = value
    return [*args, *extra]


NO_TORCH_REFUSALS: list[tuple[str, list[str], str]] = [
    ("teacher-arch", _changed("teacher", arch="nosuch"), "unknown architecture 'nosuch'"),
    (
        "teacher-kind",
        _changed("teacher", arch="civt-nano"),
        "civt-nano is a student architecture, not a teacher",
    ),
    ("teacher-data", _changed("teacher", data="none"), "shard spec none: no such directory"),
    ("teacher-val", _changed("teacher", ("--val", "none")), "shard spec none"),
    (
        "teacher-image-size",
        _changed("teacher", ("--image-size", "2")),
        "--image-size must be at least 4",
    ),
    (
        "teacher-init-empty",
        _changed("teacher", ("--init", "empty.pt")),
        "empty.pt is not a readable checkpoint: the file is empty (0 bytes)",
    ),
    ("teacher-device-typo", _changed("teacher", ("--device", "gpu")), "unknown device 'gpu'"),
    (
        "student-model",
        _changed("student", ("--model", "nosuch")),
        "unknown architecture 'nosuch'",
    ),
    ("student-data", _changed("student", data="none"), "shard spec none"),
    (
        "student-teacher-arch",
        ["train-student", "--data", "d", "--teacher", "t=nosuch:ckpt.pt", "--out", "r"],
        "unknown architecture 'nosuch'",
    ),
    (
        "student-teacher-empty",
        ["train-student", "--data", "d", "--teacher", "t=cnn-nano:empty.pt", "--out", "r"],
        "is empty (0 bytes)",
    ),
    ("dump-arch", _changed("dump", teacher="t=nosuch:ckpt.pt"), "unknown architecture 'nosuch'"),
    ("dump-data", _changed("dump", data="none"), "shard spec none"),
    (
        "dump-ckpt-missing",
        _changed("dump", teacher="t=cnn-nano:none.pt"),
        "checkpoint file none.pt does not exist",
    ),
    ("dump-ckpt-empty", _changed("dump", teacher="t=cnn-nano:empty.pt"), "is empty (0 bytes)"),
    ("evaluate-ckpt-empty", _changed("evaluate", checkpoint="empty.pt"), "is empty (0 bytes)"),
    ("evaluate-data", _changed("evaluate", data="none"), "shard spec none"),
    ("export-ckpt-empty", _changed("export", arg0="empty.pt"), "is empty (0 bytes)"),
    ("cakd-model", _changed("cakd", ("--model", "nosuch")), "unknown architecture 'nosuch'"),
    ("cakd-tau", _changed("cakd", ("--tau", "1e-30")), "--tau must be at least 0.1"),
    # The device and precision refusals, for every command that trains or runs a model.
    *(
        (f"{command}-cuda", _changed(command, CUDA), "CUDA is not available")
        for command in ("teacher", "student", "dump", "evaluate", "cakd")
    ),
    *(
        (f"{command}-fp16", _changed(command, FP16), "--precision fp16 needs a CUDA GPU")
        for command in ("teacher", "student", "dump")
    ),
]


def _may_import_torch(args: list[str]) -> bool:
    """Where a GPU may exist the torch-free check must not refuse ``--device cuda``: only torch
    can tell, so the command gets past its preflight and imports torch."""
    from civt_pipe.pipeline.runtime.device import gpu_may_exist

    return "cuda" in args and gpu_may_exist()


@pytest.fixture(scope="module")
def refusals(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    """Every case of :data:`NO_TORCH_REFUSALS`, run in one interpreter (each in a directory of
    its own holding shards that exist, an empty checkpoint and one that is never read), plus
    each directory's files before and after (``"before"``, ``"after"``). Each process costs
    seconds of start-up, so one serves every case that must not import torch; a case that may
    gets a process of its own."""
    root = tmp_path_factory.mktemp("no-torch")
    cases: list[tuple[str, Path, list[str]]] = []
    before: dict[str, dict[str, str]] = {}
    for case, args, _ in NO_TORCH_REFUSALS:
        where = root / case
        (where / "d").mkdir(parents=True)  # nothing is read before the refusal
        (where / "empty.pt").write_bytes(b"")
        (where / "ckpt.pt").write_bytes(b"not read before the refusal")
        before[case] = _tree(where)
        cases.append((case, where, args))
    results = _cli_processes([c for c in cases if not _may_import_torch(c[2])])
    for case in (c for c in cases if _may_import_torch(c[2])):
        results.update(_cli_processes([case]))
    assert results.pop("")["stderr"] == "", "only the cases' own lines go to stderr"
    for case, where, _ in cases:
        results[case].update(before=before[case], after=_tree(where))
    return results


@pytest.mark.parametrize(
    ("case", "args", "expect"), [pytest.param(*c, id=c[0]) for c in NO_TORCH_REFUSALS]
)
def test_refusals_that_need_no_data_come_before_torch_is_imported(
    refusals: dict[str, dict[str, Any]], case: str, args: list[str], expect: str
) -> None:
    done = refusals[case]
    if _may_import_torch(args):
        assert done["torch"], done
        return
    assert (done["exit"], done["torch"]) == (2, False), done
    lines = done["stderr"].strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("civt-pipe: error: "), done["stderr"]
    assert expect.lower() in lines[0].lower(), lines[0]
    assert done["after"] == done["before"]


def test_the_torch_free_architecture_names_are_the_registry() -> None:
    from civt_pipe.pipeline.models.factory import list_models
    from civt_pipe.pipeline.models.names import registered_architectures
    from civt_pipe.pipeline.models.registry import PRESETS

    names = registered_architectures()
    assert sorted(names) == sorted(list_models())
    assert names == {name: preset.kind for name, preset in PRESETS.items()}


def test_a_damaged_png_is_the_tools_one_line_without_libpngs(tmp_path: Path) -> None:
    # The C library writes to the process's stderr, which only a real process shows (and
    # torchvision 0.29 then crashed on this very file).
    source = tmp_path / "src" / "a"
    source.mkdir(parents=True)
    buffer = io.BytesIO()
    Image.fromarray((np.arange(64).reshape(8, 8) * 3).astype(np.uint8)).save(buffer, "PNG")
    good = buffer.getvalue()
    (source / "0.png").write_bytes(good)
    damaged = bytearray(good)
    damaged[good.index(b"IDAT") + 6] ^= 0xFF  # inside the deflate stream: libpng's to find
    (source / "1.png").write_bytes(bytes(damaged))

    args = ["make-shards", f"folder:{tmp_path / 'src'}", "out"]
    results = _cli_processes([("png", tmp_path, args)])

    done, process = results["png"], results[""]
    lines = done["stderr"].strip().splitlines()
    assert (done["exit"], done["torch"]) == (2, True), done
    assert len(lines) == 1 and lines[0].startswith("civt-pipe: error: "), done["stderr"]
    assert "1.png" in lines[0] and "libpng" not in done["stderr"] + process["stderr"]
