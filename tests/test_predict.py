"""predict: one row per image in every form, the same top-1 as evaluate, clear errors."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from toy_shards import make_toy_shards
from typer.testing import CliRunner

from civt_pipe.cli.app import app
from civt_pipe.pipeline.data.shard_set import resolve_shards, shard_keys
from civt_pipe.pipeline.models.checkpoint import make_checkpoint, save_checkpoint
from civt_pipe.pipeline.models.factory import create_model


@pytest.fixture(scope="module")
def toy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_toy_shards(tmp_path_factory.mktemp("toy"), "test", per_class=7)


@pytest.fixture(scope="module")
def student(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    model = create_model(
        "civt-nano", num_classes=3, in_chans=1, image_size=16, teacher_names=["cnn", "inn"]
    )
    path = tmp_path_factory.mktemp("ckpt") / "final.pt"
    save_checkpoint(path, make_checkpoint(model, class_names=["bright", "dark", "mid"]))
    return path


@pytest.fixture(scope="module")
def teacher(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(1)
    model = create_model("cnn-nano", num_classes=3, in_chans=1, image_size=16)
    path = tmp_path_factory.mktemp("ckpt") / "teacher.pt"
    save_checkpoint(path, make_checkpoint(model, class_names=["bright", "dark", "mid"]))
    return path


def _invoke(*args: str) -> dict:
    result = CliRunner().invoke(app, [*args, "--device", "cpu", "--threads", "1", "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout.strip().splitlines()[-1])


def _evaluate(ckpt: Path, data: Path) -> dict:
    return _invoke("evaluate", "--checkpoint", str(ckpt), "--data", str(data))


def test_jsonl_rows_give_evaluates_top1_for_every_student_head(
    toy: Path, student: Path, tmp_path: Path
) -> None:
    out = tmp_path / "p.jsonl"
    summary = _invoke(
        "predict", "--checkpoint", str(student), "--data", str(toy), "--out", str(out),
        "--topk", "2", "--batch-size", "5", "--workers", "2",
    )  # fmt: skip
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    expected_keys = [k for keys in shard_keys(resolve_shards(toy)) for k in keys]
    assert [r["key"] for r in rows] == expected_keys and summary["rows"] == 21
    report = _evaluate(student, toy)
    assert summary["heads"] == list(report["heads"]) == ["cls", "cnn", "inn", "mean"]
    for head, acc in report["heads"].items():
        hits = sum(r[head]["classes"][0] == r["label"] for r in rows)
        assert (
            hits / len(rows) == pytest.approx(acc["top1"]) == pytest.approx(summary["top1"][head])
        )
    first = rows[0]["cls"]
    assert len(first["classes"]) == 2 and first["probs"][0] >= first["probs"][1]
    assert "logits" not in first


def test_teacher_csv_and_npz_agree_with_evaluate(toy: Path, teacher: Path, tmp_path: Path) -> None:
    report = _evaluate(teacher, toy)
    csv_out, npz_out = tmp_path / "p.csv", tmp_path / "p.npz"
    base = ["predict", "--checkpoint", str(teacher), "--data", str(toy), "--logits"]
    _invoke(*base, "--out", str(csv_out))
    _invoke(*base, "--out", str(npz_out), "--topk", "1")
    with csv_out.open() as f:
        table = list(csv.DictReader(f))
    assert len(table) == 21 and "logits.logit2" in table[0]
    hits = sum(int(r["logits.class1"]) == int(r["label"]) for r in table)
    assert hits / 21 == pytest.approx(report["top1"])
    arrays = np.load(npz_out)
    assert arrays["logits.classes"].shape == (21, 1) and arrays["logits.logits"].shape == (21, 3)
    assert (arrays["logits.logits"].argmax(1) == arrays["logits.classes"][:, 0]).all()
    assert list(arrays["keys"]) == [r["key"] for r in table]
    probs = torch.tensor(arrays["logits.logits"]).softmax(1).max(1).values.numpy()
    np.testing.assert_allclose(arrays["logits.probs"][:, 0], probs, rtol=1e-6)


def test_npy_is_the_inference_heads_logits(toy: Path, student: Path, tmp_path: Path) -> None:
    out = tmp_path / "cls.npy"
    summary = _invoke(
        "predict", "--checkpoint", str(student), "--data", str(toy), "--out", str(out)
    )
    logits = np.load(out)
    assert summary["heads"] == ["cls"] and logits.shape == (21, 3) and logits.dtype == np.float32
    npz = tmp_path / "all.npz"
    _invoke(
        "predict", "--checkpoint", str(student), "--data", str(toy), "--out", str(npz),
        "--head", "cls", "--logits",
    )  # fmt: skip
    np.testing.assert_array_equal(np.load(npz)["cls.logits"], logits)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--out", "p.txt"], "predict writes .jsonl, .csv, .npz, .npy"),
        (["--out", "p.jsonl", "--head", "nope"], "unknown head 'nope'"),
        (["--out", "p.jsonl", "--topk", "0"], "--topk"),
    ],
)
def test_user_errors_are_one_line(
    toy: Path, student: Path, tmp_path: Path, extra: list[str], message: str
) -> None:
    args = ["predict", "--checkpoint", str(student), "--data", str(toy), "--device", "cpu"]
    extra = [str(tmp_path / e) if e.startswith("p.") else e for e in extra]
    result = CliRunner().invoke(app, [*args, *extra])
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_existing_out_needs_overwrite(toy: Path, teacher: Path, tmp_path: Path) -> None:
    out = tmp_path / "p.jsonl"
    out.write_text("old")
    args = ["predict", "--checkpoint", str(teacher), "--data", str(toy), "--out", str(out)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2 and "--overwrite" in result.output
    assert out.read_text() == "old"
    _invoke(*args, "--overwrite")
    assert len(out.read_text().splitlines()) == 21
