"""evaluate: exact top-k figures per head, the JSON schema, and clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn
from toy_shards import LEVELS, make_toy_shards
from typer.testing import CliRunner

from civt_pipe.cli.app import app
from civt_pipe.pipeline.data.shard_set import ShardSet, resolve_shards
from civt_pipe.pipeline.models.checkpoint import make_checkpoint, save_checkpoint
from civt_pipe.pipeline.models.factory import create_model
from civt_pipe.pipeline.train.metrics import TopKCounter, topk_correct
from civt_pipe.pipeline.train.validate import evaluate_model, head_outputs

# Class order in the shards is alphabetical: bright, dark, mid.
CENTERS = torch.tensor([LEVELS["bright"], LEVELS["dark"], LEVELS["mid"]]) / 255.0


class Brightness(nn.Module):
    """Scores each class by closeness of the mean pixel to its level: always right on the toy."""

    def forward(self, x: Tensor) -> Tensor:
        mean = x.mean(dim=(1, 2, 3)).unsqueeze(1)
        return -((mean - CENTERS.to(x)) ** 2)


class TwoHeads(nn.Module):
    """A student-like dict: a right ``cls`` head and a ``t`` head that is always second best."""

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        right = Brightness()(x)
        wrong = right.clone()
        best = right.argmax(1)
        wrong[torch.arange(len(x)), best] = -1e9
        wrong[torch.arange(len(x)), best] = wrong.max(1).values - 1e-3
        return {"cls": right, "t": wrong}


@pytest.fixture(scope="module")
def toy(tmp_path_factory: pytest.TempPathFactory) -> ShardSet:
    return resolve_shards(make_toy_shards(tmp_path_factory.mktemp("toy"), "test", per_class=7))


def test_topk_correct_counts_and_clips_k() -> None:
    logits = torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.05, 0.15], [0.2, 0.3, 0.5]])
    labels = torch.tensor([1, 2, 0])
    assert topk_correct(logits, labels, (1, 2, 5)) == [1, 2, 3]


def test_counter_sums_batches_per_head() -> None:
    counter = TopKCounter()
    counter.update({"a": torch.eye(3)}, torch.tensor([0, 1, 2]))
    counter.update({"a": torch.eye(3)[:2]}, torch.tensor([1, 1]))
    assert counter.num_samples == 5
    assert counter.result() == {"a": {"top1": 4 / 5, "top5": 1.0}}


def test_all_correct_teacher_scores_one(toy: ShardSet) -> None:
    result = evaluate_model(Brightness(), toy, image_size=8, batch_size=5)
    assert result == {
        "top1": 1.0,
        "top5": 1.0,
        "num_samples": 21,
        "heads": {"logits": {"top1": 1.0, "top5": 1.0}},
    }


def test_student_reports_every_head_and_cls_on_top(toy: ShardSet) -> None:
    result = evaluate_model(TwoHeads(), toy, image_size=8, batch_size=8, workers=2)
    assert set(result["heads"]) == {"cls", "t", "mean"}
    assert result["heads"]["cls"]["top1"] == 1.0
    assert result["heads"]["t"]["top1"] == 0.0 and result["heads"]["t"]["top5"] == 1.0
    assert result["top1"] == 1.0 and result["num_samples"] == 21


def test_mean_head_averages_distinct_heads() -> None:
    a, b = torch.randn(2, 4), torch.randn(2, 4)
    heads = head_outputs({"cls": a, "x": b, "y": b})  # a shared token counts once
    torch.testing.assert_close(heads["mean"], (a + b) / 2)


def _save_teacher(path: Path, num_classes: int) -> None:
    model = create_model("cnn-nano", num_classes=num_classes, in_chans=1, image_size=16)
    names = [f"c{i}" for i in range(num_classes)]
    save_checkpoint(path, make_checkpoint(model, class_names=names))


def test_cli_json_schema_for_a_teacher(toy: ShardSet, tmp_path: Path) -> None:
    ckpt = tmp_path / "t.pt"
    _save_teacher(ckpt, 3)
    data = str(toy.paths[0].parent)
    result = CliRunner().invoke(
        app, ["evaluate", "--checkpoint", str(ckpt), "--data", data, "--json"]
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert {"top1", "top5", "num_samples", "heads"} <= set(report)
    assert report["num_samples"] == 21 and list(report["heads"]) == ["logits"]
    assert 0.0 <= report["top1"] <= report["top5"] == 1.0  # 3 classes: top-5 is certain
    assert report["top1"] == report["heads"]["logits"]["top1"]


def test_cli_reports_every_student_head(toy: ShardSet, tmp_path: Path) -> None:
    model = create_model(
        "civt-nano", num_classes=3, in_chans=1, image_size=16, teacher_names=["cnn", "inn"]
    )
    ckpt = tmp_path / "final.pt"
    save_checkpoint(ckpt, make_checkpoint(model, class_names=["bright", "dark", "mid"]))
    data = str(toy.paths[0].parent)
    result = CliRunner().invoke(
        app, ["evaluate", "--checkpoint", str(ckpt), "--data", data, "--json"]
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert list(report["heads"]) == ["cls", "cnn", "inn", "mean"]
    assert report["top1"] == report["heads"]["cls"]["top1"]
    assert report["kind"] == "student"


def test_cli_table_without_json(toy: ShardSet, tmp_path: Path) -> None:
    ckpt = tmp_path / "t.pt"
    _save_teacher(ckpt, 3)
    result = CliRunner().invoke(
        app, ["evaluate", "--checkpoint", str(ckpt), "--data", str(toy.paths[0].parent)]
    )
    assert result.exit_code == 0 and result.stdout == ""  # the table goes to stderr


def test_other_class_names_with_the_same_count_warn(toy: ShardSet, tmp_path: Path) -> None:
    ckpt = tmp_path / "t.pt"
    model = create_model("cnn-nano", num_classes=3, in_chans=1, image_size=16)
    data = str(toy.paths[0].parent)
    for names, warned in ((list(toy.class_names), False), (["cat", "dog", "owl"], True)):
        save_checkpoint(ckpt, make_checkpoint(model, class_names=names))
        result = CliRunner().invoke(app, ["evaluate", "--checkpoint", str(ckpt), "--data", data])
        assert result.exit_code == 0, result.output
        assert ("scoring by class index" in result.stderr) is warned


def test_class_count_mismatch_is_a_user_error(toy: ShardSet, tmp_path: Path) -> None:
    ckpt = tmp_path / "t10.pt"
    _save_teacher(ckpt, 10)
    result = CliRunner().invoke(
        app, ["evaluate", "--checkpoint", str(ckpt), "--data", str(toy.paths[0].parent)]
    )
    assert result.exit_code == 2
    assert "10 classes but the data has 3" in result.output
    assert len(result.output.strip().splitlines()) == 1


@pytest.mark.parametrize("content", [b"", b"garbage bytes, not a zip", b"PK\x03\x04broken"])
def test_corrupt_checkpoint_is_a_user_error(toy: ShardSet, tmp_path: Path, content: bytes) -> None:
    ckpt = tmp_path / "bad.pt"
    ckpt.write_bytes(content)
    result = CliRunner().invoke(
        app, ["evaluate", "--checkpoint", str(ckpt), "--data", str(toy.paths[0].parent)]
    )
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("civt-pipe: error:")]
    assert len(errors) == 1 and str(ckpt) in errors[0]
    assert "Traceback" not in result.output


def test_missing_checkpoint_is_a_user_error(toy: ShardSet, tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app,
        ["evaluate", "--checkpoint", str(tmp_path / "nope.pt"), "--data", str(toy.paths[0].parent)],
    )
    assert result.exit_code == 2 and "does not exist" in result.output
