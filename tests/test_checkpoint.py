"""Checkpoints: round trip, bad files, mismatches, torchvision weights, channel adaptation."""

from __future__ import annotations

import argparse
import hashlib
import pickle
from pathlib import Path

import pytest
import torch
import torchvision.models as tvm

from civt_pipe.pipeline.models.checkpoint import (
    file_sha256,
    load_checkpoint,
    make_checkpoint,
    model_from_checkpoint,
    save_checkpoint,
)
from civt_pipe.pipeline.models.factory import create_model
from civt_pipe.pipeline.runtime.errors import UserError

CLASSES = [str(i) for i in range(10)]


def _teacher_ckpt(tmp_path: Path, **kwargs: object) -> tuple[Path, torch.nn.Module]:
    args: dict[str, object] = {"num_classes": 10, "in_chans": 1, "image_size": 16, **kwargs}
    model = create_model("cnn-nano", **args).eval()  # type: ignore[arg-type]
    path = tmp_path / "teacher.pt"
    save_checkpoint(path, make_checkpoint(model, class_names=CLASSES, metrics={"val_top1": 0.9}))
    return path, model


def test_teacher_round_trip_gives_same_outputs_and_meta(tmp_path: Path) -> None:
    path, model = _teacher_ckpt(tmp_path)
    loaded, meta = model_from_checkpoint(path, expect_kind="teacher", expect_num_classes=10)
    x = torch.rand(3, 1, 16, 16)
    torch.testing.assert_close(loaded(x), model(x))
    assert not loaded.training
    assert meta["arch"] == "cnn-nano" and meta["class_names"] == CLASSES
    assert meta["metrics"] == {"val_top1": 0.9} and meta["in_chans"] == 1
    assert "state_dict" not in meta
    ckpt = load_checkpoint(path)
    assert ckpt["format"] == "civt-pipe" and ckpt["version"] == 1
    assert ckpt["model_args"]["small_input"] is True
    assert not list(tmp_path.glob("*.partial"))


def test_student_round_trip_keeps_teacher_heads_and_token_mode(tmp_path: Path) -> None:
    model = create_model(
        "civt-nano", num_classes=4, image_size=8, teacher_names=("cnn", "inn"), token_mode="shared"
    ).eval()
    path = tmp_path / "student.pt"
    save_checkpoint(path, make_checkpoint(model, train_state={"epoch": 3}))
    assert load_checkpoint(path)["train_state"] == {"epoch": 3}
    loaded, meta = model_from_checkpoint(path, expect_kind="student")
    x = torch.rand(2, 3, 8, 8)
    out, ref = loaded(x), model(x)
    assert list(out) == ["cls", "cnn", "inn"] and out["cnn"] is out["inn"]
    torch.testing.assert_close(out["cls"], ref["cls"])
    assert meta["model_args"]["token_mode"] == "shared" and "train_state" not in meta


@pytest.mark.parametrize(
    ("arch", "patch_size"), [("civt-nano", 4), ("mixer-ti", 8), ("resnet10", None)]
)
def test_student_checkpoint_from_before_the_preset_registry_still_loads(
    tmp_path: Path, arch: str, patch_size: int | None
) -> None:
    # The old registry recorded one argument set for every student: small_input even where no
    # stem reads it, and None for the options a student lacked or left at the preset default.
    model = create_model(
        arch, num_classes=4, image_size=16, teacher_names=("cnn",), patch_size=patch_size
    ).eval()
    ckpt = make_checkpoint(model)
    ckpt["model_args"] = {
        "num_classes": 4,
        "in_chans": 3,
        "image_size": 16,
        "teacher_names": ["cnn"],
        "token_mode": "per-teacher",
        "patch_size": patch_size,
        "mean": list(model.model_args["mean"]),
        "std": list(model.model_args["std"]),
        "small_input": True,
        "drop_path_rate": None,
    }
    path = tmp_path / "old.pt"
    save_checkpoint(path, ckpt)
    loaded, meta = model_from_checkpoint(path, expect_kind="student")
    x = torch.rand(2, 3, 16, 16)
    torch.testing.assert_close(loaded(x)["cnn"], model(x)["cnn"])
    assert meta["model_args"] == model.model_args


def test_file_sha256_matches_hashlib(tmp_path: Path) -> None:
    path, _ = _teacher_ckpt(tmp_path)
    assert file_sha256(path) == hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize(
    "content",
    [b"", b"not a checkpoint at all", None],
    ids=["empty", "garbage", "truncated"],
)
def test_corrupt_file_is_user_error_naming_it(tmp_path: Path, content: bytes | None) -> None:
    path = tmp_path / "bad.pt"
    if content is None:
        good, _ = _teacher_ckpt(tmp_path)
        content = good.read_bytes()[:500]
    path.write_bytes(content)
    with pytest.raises(UserError, match=r"bad\.pt is not a readable checkpoint"):
        model_from_checkpoint(path)
    with pytest.raises(UserError, match=r"bad\.pt"):
        load_checkpoint(path)


class _Planted:
    """Unpickling this would call ``pathlib.Path.touch`` on the test's marker: pickled code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (Path.touch, (str(self.marker),))


@pytest.mark.parametrize("writer", ["torch.save", "pickle.dump", "namespace"])
def test_pickled_code_is_refused_as_unsafe_and_never_run(tmp_path: Path, writer: str) -> None:
    # Full unpickling would run code from the file's author; only weights are ever loaded.
    path, marker = tmp_path / "evil.pt", tmp_path / "ran"
    payload: object = _Planted(marker)
    if writer == "namespace":
        payload = argparse.Namespace(lr=0.1)
    if writer == "pickle.dump":
        path.write_bytes(pickle.dumps({"model": payload}))
    else:
        torch.save({"model": payload}, path)
    unsafe = r"evil\.pt is not a civt-pipe checkpoint: it contains pickled code \(.+\); refusing"
    with pytest.raises(UserError, match=unsafe):
        load_checkpoint(path)
    with pytest.raises(UserError, match=unsafe):
        model_from_checkpoint(path, arch="cnn-nano")
    assert not marker.exists()


def test_directory_without_a_finished_run_is_one_line(tmp_path: Path) -> None:
    for load in (load_checkpoint, model_from_checkpoint, file_sha256):
        with pytest.raises(UserError, match=r"run directory .* has no final.pt"):
            load(tmp_path)


def test_missing_or_foreign_file_is_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pt")
    foreign = tmp_path / "list.pt"
    torch.save([1, 2, 3], foreign)
    with pytest.raises(UserError, match="not a civt-pipe checkpoint"):
        load_checkpoint(foreign)
    with pytest.raises(UserError, match="neither a civt-pipe checkpoint nor a state dict"):
        model_from_checkpoint(foreign, arch="resnet18")


def test_newer_format_version_is_refused(tmp_path: Path) -> None:
    path, _ = _teacher_ckpt(tmp_path)
    ckpt = load_checkpoint(path)
    ckpt["version"] = 99
    torch.save(ckpt, path)
    with pytest.raises(UserError, match="format version 99"):
        load_checkpoint(path)


def test_wrong_class_count_arch_or_kind_is_user_error(tmp_path: Path) -> None:
    path, _ = _teacher_ckpt(tmp_path)
    with pytest.raises(UserError, match="has 10 classes but the data has 7"):
        model_from_checkpoint(path, expect_num_classes=7)
    with pytest.raises(UserError, match="holds a cnn-nano, not a inn-nano"):
        model_from_checkpoint(path, arch="inn-nano")
    with pytest.raises(UserError, match=r"holds a teacher \(cnn-nano\), expected a student"):
        model_from_checkpoint(path, expect_kind="student")


def _torchvision_file(
    tmp_path: Path, num_classes: int, prefix: str = ""
) -> tuple[Path, torch.nn.Module]:
    net = tvm.resnet18(weights=None, num_classes=num_classes).eval()
    path = tmp_path / "resnet18.pth"
    torch.save({prefix + k: v for k, v in net.state_dict().items()}, path)
    return path, net


@pytest.mark.parametrize("prefix", ["", "module."])
def test_torchvision_state_dict_loads_given_arch(tmp_path: Path, prefix: str) -> None:
    path, net = _torchvision_file(tmp_path, 10, prefix)
    model, meta = model_from_checkpoint(path, arch="resnet18", image_size=32, expect_num_classes=10)
    assert meta["format"] == "state_dict" and meta["num_classes"] == 10
    # The file's 7×7 stem wins over the small-input default for 32 px.
    assert model.body.conv1.kernel_size == (7, 7) and not meta["model_args"]["small_input"]
    x = torch.rand(2, 3, 32, 32)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    torch.testing.assert_close(model(x), net((x - mean) / std))


def test_torchvision_state_dict_errors(tmp_path: Path) -> None:
    path, _ = _torchvision_file(tmp_path, 1000)
    with pytest.raises(UserError, match="has 1000 classes but the data has 10"):
        model_from_checkpoint(path, arch="resnet18", expect_num_classes=10)
    with pytest.raises(UserError, match="give the architecture"):
        model_from_checkpoint(path)
    with pytest.raises(UserError, match=r"does not hold resnet34 weights: missing body\.layer1\.2"):
        model_from_checkpoint(path, arch="resnet34")
    with pytest.raises(UserError, match=r"does not fit rednet26: body\.fc\.weight \(1000, 512\)"):
        model_from_checkpoint(path, arch="rednet26")


def test_rgb_weights_adapt_to_grayscale_exactly_for_equal_channel_means(tmp_path: Path) -> None:
    mean, std = [0.5, 0.5, 0.5], [0.2, 0.25, 0.3]
    path, rgb = _teacher_ckpt(tmp_path, in_chans=3, mean=mean, std=std)
    gray_model, meta = model_from_checkpoint(path, in_chans=1)
    assert meta["in_chans"] == 1 and meta["adapted_from_in_chans"] == 3
    assert gray_model.body.stem[0].weight.shape[1] == 1
    assert meta["std"] == pytest.approx([0.25])
    gray = torch.rand(2, 1, 16, 16)
    torch.testing.assert_close(gray_model(gray), rgb(gray.expand(-1, 3, -1, -1)))


def test_grayscale_weights_adapt_to_rgb_as_channel_average(tmp_path: Path) -> None:
    path, gray_model = _teacher_ckpt(tmp_path, in_chans=1, mean=[0.4], std=[0.3])
    rgb_model, meta = model_from_checkpoint(path, in_chans=3)
    assert meta["mean"] == pytest.approx([0.4] * 3)
    x = torch.rand(2, 3, 16, 16)
    torch.testing.assert_close(rgb_model(x), gray_model(x.mean(dim=1, keepdim=True)))


def test_torchvision_rgb_weights_load_into_grayscale_model(tmp_path: Path) -> None:
    path, _ = _torchvision_file(tmp_path, 10)
    model, meta = model_from_checkpoint(path, arch="resnet18", in_chans=1, image_size=32)
    assert meta["in_chans"] == 1 and model.body.conv1.weight.shape == (64, 1, 7, 7)
    assert model(torch.rand(2, 1, 32, 32)).shape == (2, 10)


def test_a_run_directory_means_its_final_checkpoint(tmp_path: Path) -> None:
    """Every trainer writes a run directory; whatever takes a checkpoint (evaluate, export,
    teacher specs, --init) takes the directory too, meaning its final.pt."""
    from civt_pipe.pipeline.models.teacher_spec import TeacherSpec
    from civt_pipe.pipeline.models.teachers import load_teachers

    run = tmp_path / "run"
    run.mkdir()
    path, model = _teacher_ckpt(run)
    path.rename(run / "final.pt")
    loaded, _ = model_from_checkpoint(run, expect_kind="teacher")
    x = torch.rand(2, 1, 16, 16)
    torch.testing.assert_close(loaded(x), model(x))
    assert file_sha256(run) == file_sha256(run / "final.pt")
    spec = TeacherSpec.parse(f"cnn=cnn-nano:{run}")
    (teacher,) = load_teachers([spec], torch.device("cpu"), num_classes=10, channels=1)
    torch.testing.assert_close(teacher.model(x), model(x))


def test_teacher_files_of_earlier_versions_keep_loading(tmp_path: Path) -> None:
    """train-teacher once wrote ``X.pt`` (the resumable checkpoint, with the unversioned
    ``train_state`` of whole epochs) and its siblings; such a file still serves as a teacher."""
    from civt_pipe.pipeline.models.teacher_spec import TeacherSpec
    from civt_pipe.pipeline.models.teachers import load_teachers

    model = create_model("cnn-nano", num_classes=10, in_chans=1, image_size=16).eval()
    old = tmp_path / "cnn.pt"
    state = {"epoch": 2, "step": 30, "optimizer": {"state": {}, "param_groups": []}, "rng": {}}
    save_checkpoint(old, make_checkpoint(model, class_names=CLASSES, train_state=state))
    (tmp_path / "cnn.metrics.jsonl").write_text('{"epoch": 1}\n')
    spec = TeacherSpec.parse(f"cnn=cnn-nano:{old}")
    (teacher,) = load_teachers([spec], torch.device("cpu"), num_classes=10, channels=1)
    x = torch.rand(2, 1, 16, 16)
    torch.testing.assert_close(teacher.model(x), model(x))
