"""evaluate --store: KL from each head to each teacher on the store's replayed views.

Two 200-sample digits shards, two untrained 8 px nano teachers, a store with k = C = 10.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from civt_pipe.cli.app import app
from civt_pipe.pipeline.data.make_shards import MakeShardsConfig, make_shards
from civt_pipe.pipeline.models.checkpoint import make_checkpoint, save_checkpoint
from civt_pipe.pipeline.models.factory import create_model
from civt_pipe.pipeline.runtime.errors import UserError
from civt_pipe.pipeline.stages.dump.run import DumpConfig, TeacherSpec, run_dump
from civt_pipe.pipeline.stages.evaluate.run import EvaluateConfig, evaluate
from civt_pipe.pipeline.stages.evaluate.teacher_agreement import KLAccumulator


@dataclass(frozen=True)
class Fixture:
    root: Path
    data: str
    """The two shards the store was dumped from."""
    other: str
    """Two other shards of the same split."""
    store: Path
    teacher_a: Path
    """The checkpoint of the store's teacher ``cnn``."""


def _save_teacher(path: Path, seed: int) -> Path:
    torch.manual_seed(seed)
    model = create_model("cnn-nano", num_classes=10, in_chans=1, image_size=8)
    save_checkpoint(path, make_checkpoint(model))
    return path


@pytest.fixture(scope="module")
def fx(tmp_path_factory: pytest.TempPathFactory) -> Fixture:
    root = tmp_path_factory.mktemp("agree")
    make_shards(MakeShardsConfig(source="digits", out_dir=root / "train", shard_size=200))
    a = _save_teacher(root / "a.pt", 1)
    b = _save_teacher(root / "b.pt", 2)
    data = str(root / "train" / "train-{000000..000001}.tar")
    store = root / "store.zarr"
    run_dump(
        DumpConfig(
            data=data,
            teachers=(
                TeacherSpec.parse(f"cnn=cnn-nano:{a}"),
                TeacherSpec.parse(f"twin=cnn-nano:{b}"),
            ),
            out=store,
            views=2,
            topk=10,
            seed=5,
            batch_size=96,
            workers=0,
            device="cpu",
            progress=False,
        )
    )
    other = str(root / "train" / "train-{000002..000003}.tar")
    return Fixture(root=root, data=data, other=other, store=store, teacher_a=a)


def test_teacher_is_at_zero_kl_from_itself(fx: Fixture) -> None:
    result = evaluate(
        EvaluateConfig(
            checkpoint=fx.teacher_a, data=fx.data, store=fx.store, batch_size=128, device="cpu"
        )
    )
    kl = result["kl_to_teachers"]
    assert list(kl) == ["logits"] and set(kl["logits"]) == {"cnn", "twin"}
    # float16 storage leaves ~1e-7; replaying the wrong views gives ~6e-3 with these teachers.
    assert kl["logits"]["cnn"] < 1e-5
    assert kl["logits"]["twin"] > 0.01
    assert result["store"] == str(fx.store)
    assert result["num_samples"] == 400  # the accuracy pass is still there


def test_first_view_only_differs_from_all_views(fx: Fixture) -> None:
    full = evaluate(EvaluateConfig(checkpoint=fx.teacher_a, data=fx.data, store=fx.store))
    one = evaluate(
        EvaluateConfig(checkpoint=fx.teacher_a, data=fx.data, store=fx.store, store_views=1)
    )
    twin_full, twin_one = (
        full["kl_to_teachers"]["logits"]["twin"],
        one["kl_to_teachers"]["logits"]["twin"],
    )
    assert twin_one > 0 and twin_one != pytest.approx(twin_full, rel=1e-9)


def test_student_reports_every_head_in_json(fx: Fixture, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = create_model(
        "civt-nano", num_classes=10, in_chans=1, image_size=8, teacher_names=["cnn", "twin"]
    )
    ckpt = tmp_path / "student.pt"
    save_checkpoint(ckpt, make_checkpoint(model))
    args = ["evaluate", "--checkpoint", str(ckpt), "--data", fx.data, "--store", str(fx.store)]
    result = CliRunner().invoke(app, [*args, "--store-views", "1", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout.strip().splitlines()[-1])
    kl = report["kl_to_teachers"]
    assert set(kl) == set(report["heads"]) == {"cls", "cnn", "twin", "mean"}
    assert all(set(row) == {"cnn", "twin"} for row in kl.values())
    assert all(v > 0 for row in kl.values() for v in row.values())
    table = CliRunner().invoke(app, [*args, "--store-views", "1"])
    assert table.exit_code == 0 and table.stdout == ""


def test_accumulator_equals_kl_div_over_all_rows() -> None:
    gen = torch.Generator().manual_seed(3)
    batches = []
    for n in (5, 3):
        heads = {"cls": torch.randn(n, 6, generator=gen), "t": torch.randn(n, 6, generator=gen)}
        p = torch.softmax(2 * torch.randn(n, 6, generator=gen), -1)
        p[0, 2] = 0.0  # a zero-probability class must contribute 0, not NaN
        p = p / p.sum(-1, keepdim=True)
        batches.append((heads, {"x": p, "y": torch.full((n, 6), 1 / 6)}))
    acc = KLAccumulator()
    for heads, targets in batches:
        acc.update(heads, targets)
    result = acc.result()
    assert acc.count == 8
    for head in ("cls", "t"):
        logits = torch.cat([h[head] for h, _ in batches]).double()
        for teacher in ("x", "y"):
            target = torch.cat([t[teacher] for _, t in batches]).double()
            expected = F.kl_div(
                torch.log_softmax(logits, -1), target, reduction="batchmean", log_target=False
            )
            assert result[head][teacher] == pytest.approx(float(expected), rel=1e-9, abs=1e-12)


def test_empty_accumulator_is_a_user_error() -> None:
    with pytest.raises(UserError, match="no valid row"):
        KLAccumulator().result()


def test_store_from_other_shards_is_a_one_line_error(fx: Fixture) -> None:
    args = ["evaluate", "--checkpoint", str(fx.teacher_a), "--data", fx.other]
    result = CliRunner().invoke(app, [*args, "--store", str(fx.store)])
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("civt-pipe: error:")]
    assert len(errors) == 1 and "other shards" in errors[0]
    assert "Traceback" not in result.output


def test_store_views_out_of_range_and_without_store(fx: Fixture) -> None:
    with pytest.raises(UserError, match="--store-views must be between 1 and 2"):
        evaluate(
            EvaluateConfig(checkpoint=fx.teacher_a, data=fx.data, store=fx.store, store_views=3)
        )
    with pytest.raises(UserError, match="--store-views needs --store"):
        EvaluateConfig(checkpoint=fx.teacher_a, data=fx.data, store_views=1)


def test_class_count_mismatch_with_store(fx: Fixture, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = create_model("cnn-nano", num_classes=7, in_chans=1, image_size=8)
    ckpt = tmp_path / "seven.pt"
    save_checkpoint(ckpt, make_checkpoint(model))
    meta = {"num_classes": 7, "image_size": 8}
    from civt_pipe.pipeline.data.shard_set import resolve_shards
    from civt_pipe.pipeline.stages.evaluate.teacher_agreement import teacher_agreement

    with pytest.raises(UserError, match=r"store .* has 10 classes but the checkpoint has 7"):
        teacher_agreement(
            model, meta, resolve_shards(fx.data), store=fx.store, data=fx.data, progress=False
        )
