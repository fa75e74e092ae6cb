"""inspect-store figures against a store with known contents, and --verify's invariants."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import zarr
from typer.testing import CliRunner

from civt_pipe.cli.app import app
from civt_pipe.stores.errors import StoreError
from civt_pipe.stores.inspect import inspect_store, verify_store
from civt_pipe.stores.logit_store import LogitStore, ShardBlock
from civt_pipe.stores.schema import StoreSpec, TeacherInfo
from civt_pipe.stores.topk import TopKLogits

C = 4
SHARDS = [("s0.tar", 2), ("s1.tar", 3)]
# Every view's distribution: 0.5 on the first class, 0.3 on the second, 0.1 on the others.
# With k = 2 the leftover is 0.2, spread as 0.1 + 0.1, so the entropy is known exactly.
ENTROPY = -(0.5 * math.log(0.5) + 0.3 * math.log(0.3) + 0.2 * math.log(0.1))


def _probs_logits(first: np.ndarray, second: np.ndarray) -> torch.Tensor:
    probs = torch.full((*first.shape, C), 0.1)
    probs.scatter_(-1, torch.from_numpy(first).long().unsqueeze(-1), 0.5)
    probs.scatter_(-1, torch.from_numpy(second).long().unsqueeze(-1), 0.3)
    return probs.log()


def _known_store(path: Path, shards: list[str] | None = None) -> LogitStore:
    """Teacher "cnn" is right on every view; "inn" swaps its top two on view 1, so it is right
    on half the views and agrees with "cnn" on half of them."""
    spec = StoreSpec(
        shards=SHARDS,
        num_views=2,
        topk=2,
        num_classes=C,
        teachers=[
            TeacherInfo("cnn", "resnet18", "a" * 64, C),
            TeacherInfo("inn", "rednet26", "b" * 64, C),
        ],
        attrs={
            "dataset_fingerprint": "d" * 64,
            "dataset_source": "digits",
            "dataset_split": "train",
        },
    )
    store = LogitStore.create(path, spec)
    for index, (name, count) in enumerate(SHARDS):
        if shards is not None and name not in shards:
            continue
        view_labels = (np.arange(count * 2).reshape(count, 2) + index) % C
        runner_up = (view_labels + 1) % C
        inn_first = view_labels.copy()
        inn_first[:, 1] = runner_up[:, 1]
        inn_second = runner_up.copy()
        inn_second[:, 1] = view_labels[:, 1]
        block = ShardBlock(
            keys=[f"{name}-{i}" for i in range(count)],
            labels=view_labels[:, 0],
            view_labels=view_labels,
            digests=np.arange(1, 2 * count + 1, dtype=np.uint64).reshape(count, 2),
            aug={},
            teachers={
                "cnn": TopKLogits.from_logits(_probs_logits(view_labels, runner_up), 2),
                "inn": TopKLogits.from_logits(_probs_logits(inn_first, inn_second), 2),
            },
        )
        store.write_shard(name, block)
    return store


def test_inspect_figures_match_known_contents(tmp_path: Path) -> None:
    path = tmp_path / "s.zarr"
    _known_store(path).finalize()
    report = inspect_store(path)
    assert report["num_samples"] == 5 and report["num_views"] == 2
    assert report["topk"] == 2 and report["num_classes"] == C
    assert report["complete"] and report["finalized"] and report["missing_shards"] == []
    cnn, inn = report["teachers"]
    assert (cnn["name"], cnn["arch"], cnn["checkpoint_sha256"]) == ("cnn", "resnet18", "a" * 64)
    assert cnn["top1"] == 1.0 and inn["top1"] == 0.5
    for t in (cnn, inn):
        assert t["mean_leftover"] == pytest.approx(0.2, abs=1e-3)
        assert t["mean_entropy"] == pytest.approx(ENTROPY, abs=2e-3)
    assert report["agreement"] == [{"teachers": ["cnn", "inn"], "agreement": 0.5}]
    on_disk = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    assert report["bytes_on_disk"] == on_disk
    assert report["bytes_per_sample_view"] == pytest.approx(on_disk / 10)
    teacher_bytes = sum(
        p.stat().st_size
        for t in ("cnn", "inn")
        for p in (path / "teachers" / t).rglob("*")
        if p.is_file()
    )
    assert report["bytes_per_sample_view_teacher"] == pytest.approx(teacher_bytes / 20)
    assert report["dense_float32_bytes"] == 5 * 2 * 2 * C * 4
    assert report["ratio_to_dense_float32"] == pytest.approx(teacher_bytes / (5 * 2 * 2 * C * 4))
    assert report["attrs"]["dataset_fingerprint"] == "d" * 64


def test_inspect_of_a_partial_store_reports_missing_shards(tmp_path: Path) -> None:
    path = tmp_path / "s.zarr"
    _known_store(path, shards=["s1.tar"])
    report = inspect_store(path)
    assert not report["complete"] and report["missing_shards"] == ["s0.tar"]
    assert report["num_written_samples"] == 3
    assert report["teachers"][0]["top1"] == 1.0
    with pytest.raises(StoreError, match=re.escape("shard 's0.tar' is not written")):
        verify_store(path)


def _corrupt(path: Path, array: str, index: Any, value: Any) -> None:
    arr = zarr.open_group(str(path), mode="r+")[array]
    arr[index] = value


@pytest.mark.parametrize(
    ("array", "index", "value", "message"),
    [
        (
            "teachers/inn/logprobs",
            (1, 1),
            [-1.0, -0.5],
            "shard 's0.tar' row 1 view 1: teacher 'inn': log-probabilities not descending",
        ),
        (
            "teachers/inn/logprobs",
            (0, 1),
            [0.5, -1.0],
            "shard 's0.tar' row 0 view 1: teacher 'inn': log-probability above 0",
        ),
        (
            "teachers/cnn/logprobs",
            (65, 0),
            [-0.1, -0.2],
            "shard 's1.tar' row 1 view 0: teacher 'cnn': top-k probabilities sum above 1",
        ),
        (
            "teachers/cnn/logprobs",
            (1, 0),
            [float("nan"), -1.0],
            "shard 's0.tar' row 1 view 0: teacher 'cnn': non-finite top-k log-probability",
        ),
        (
            "teachers/cnn/indices",
            (0, 0),
            [2, 2],
            "row 0 view 0: teacher 'cnn': class ids not distinct",
        ),
        (
            "teachers/cnn/indices",
            (64, 1),
            [7, 1],
            "shard 's1.tar' row 0 view 1: teacher 'cnn': class id out of range",
        ),
        ("teachers/cnn/lse", (0, 0), float("inf"), "row 0 view 0: teacher 'cnn': non-finite lse"),
        ("digests", (65, 0), 0, "shard 's1.tar' row 1 view 0: view digest missing"),
        ("labels", 1, 9, "shard 's0.tar' row 1: label 9 out of range"),
        ("view_labels", (0, 1), -1, "row 0 view 1: view label out of range"),
        ("keys", 64, "s0.tar-0", "shard 's1.tar' row 0: key 's0.tar-0' appears twice"),
        ("written", 1, False, "shard 's1.tar' is not written"),
    ],
)
def test_verify_names_the_first_violation(
    tmp_path: Path, array: str, index: Any, value: Any, message: str
) -> None:
    path = tmp_path / "s.zarr"
    _known_store(path).finalize()
    verify_store(path)
    _corrupt(path, array, index, value)
    with pytest.raises(StoreError, match=re.escape(message)):
        verify_store(path)


def test_verify_ignores_skipped_rows(tmp_path: Path) -> None:
    path = tmp_path / "s.zarr"
    _known_store(path).finalize()
    _corrupt(path, "valid", 1, False)
    _corrupt(path, "digests", (1, 0), 0)
    verify_store(path)
    assert inspect_store(path)["num_skipped"] == 1


def test_cli_json_has_the_documented_keys(tmp_path: Path) -> None:
    path = tmp_path / "s.zarr"
    _known_store(path).finalize()
    result = CliRunner().invoke(app, ["inspect-store", str(path), "--json", "--verify"])
    assert result.exit_code == 0, result.output
    obj = json.loads(result.stdout)
    for key in (
        "num_samples",
        "num_views",
        "topk",
        "num_classes",
        "complete",
        "teachers",
        "bytes_on_disk",
        "bytes_per_sample_view",
    ):
        assert key in obj
    assert obj["verified"] is True
    assert [{k: t[k] for k in ("name", "arch", "top1")} for t in obj["teachers"]] == [
        {"name": "cnn", "arch": "resnet18", "top1": 1.0},
        {"name": "inn", "arch": "rednet26", "top1": 0.5},
    ]


def test_cli_human_output_and_verify(tmp_path: Path) -> None:
    path = tmp_path / "s.zarr"
    _known_store(path, shards=["s0.tar"])
    result = CliRunner().invoke(app, ["inspect-store", str(path)])
    assert result.exit_code == 0, result.output
    assert result.stdout == ""
    assert "missing shards: s1.tar" in result.stderr and "50.00%" in result.stderr
    assert "digits (train)" in result.stderr  # the data by name, not only its fingerprint
    failed = CliRunner().invoke(app, ["inspect-store", str(path), "--verify"])
    assert failed.exit_code == 2
    assert failed.stderr.strip().splitlines() == [
        f"civt-pipe: error: {path}: shard 's1.tar' is not written (1 missing)"
    ]


def test_cli_on_a_directory_that_is_not_a_store(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["inspect-store", str(tmp_path)])
    assert result.exit_code == 2
    assert "is not a civt-pipe logit store" in result.stderr
    assert "Traceback" not in result.output
