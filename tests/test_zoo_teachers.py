"""Teachers from model zoos, offline: timm models (``timm:MODEL``), timm/pycls RegNetY and the
RedNet authors' mmcls checkpoints loaded into our presets, their evaluation view, their refusals.

Every "published" file here is made in the test from random weights (random BatchNorm
statistics too, so a misplaced running mean shows), saved as the zoo saves it, and loaded the
way a user's download would be. Nothing touches the network: sockets are closed for the whole
module (``no_network``).
"""

from __future__ import annotations

import builtins
import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import save_file
from timm.data import create_transform, resolve_data_config
from torch import Tensor, nn
from toy_shards import make_toy_shards
from typer.testing import CliRunner

from civt_pipe.cli.app import app
from civt_pipe.pipeline.data.make_shards import MakeShardsConfig, make_shards
from civt_pipe.pipeline.data.shard_set import resolve_complete_shards
from civt_pipe.pipeline.data.streams import eval_batches
from civt_pipe.pipeline.data.zoo_eval import ZooEval
from civt_pipe.pipeline.models import zoo_timm
from civt_pipe.pipeline.models.alignment import resolve_alignment
from civt_pipe.pipeline.models.checkpoint import file_sha256
from civt_pipe.pipeline.models.factory import count_parameters, reference_parameter_count
from civt_pipe.pipeline.models.teacher_spec import TeacherSpec
from civt_pipe.pipeline.models.teachers import LoadedTeacher, load_teachers
from civt_pipe.pipeline.runtime.errors import UserError

CPU = torch.device("cpu")
SIZE = 96  # every model here is size-agnostic (global pooling), so small images keep CPU low


_LOCAL = ("127.0.0.1", "localhost", "::1")


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """A connection beyond this machine fails the test: zoo loading never reaches the network
    (local sockets stay: the stages' own process plumbing uses them)."""
    connect = socket.socket.connect

    def guarded(sock: socket.socket, address: Any) -> Any:
        if sock.family == socket.AF_UNIX or (isinstance(address, tuple) and address[0] in _LOCAL):
            return connect(sock, address)
        raise AssertionError(f"a zoo teacher tried to reach {address!r}")

    def refuse(address: Any, *_args: object, **_kwargs: object) -> None:
        raise AssertionError(f"a zoo teacher tried to reach {address!r}")

    monkeypatch.setattr(socket.socket, "connect", guarded)
    monkeypatch.setattr(socket, "create_connection", refuse)


def _randomize_bn(model: nn.Module, seed: int) -> nn.Module:
    """Random BN statistics and affine terms: a misplaced BN tensor changes the logits."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.rand(m.num_features, generator=gen) * 0.2 - 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.bias.copy_(torch.rand(m.num_features, generator=gen) * 0.2 - 0.1)
    return model.eval()


def _timm_model(name: str, num_classes: int = 10, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return _randomize_bn(timm.create_model(name, pretrained=False, num_classes=num_classes), seed)


def _save(state: dict[str, Tensor], path: Path) -> Path:
    if path.suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save(state, path)
    return path


def _load(spec: str, num_classes: int = 10, channels: int = 3, **kw: Any) -> LoadedTeacher:
    return load_teachers(
        [TeacherSpec.parse(spec)], CPU, num_classes=num_classes, channels=channels, **kw
    )[0]


def _max_diff(reference: nn.Module, teacher: LoadedTeacher, size: int = SIZE) -> float:
    """Max logit difference: the zoo model on normalized images vs ours on [0, 1] images."""
    torch.manual_seed(1)
    x = torch.rand(2, 3, size, size)
    cfg = teacher.info.pretrained_cfg or {}
    mean = torch.tensor(cfg.get("mean", (0.485, 0.456, 0.406))).view(1, 3, 1, 1)
    std = torch.tensor(cfg.get("std", (0.229, 0.224, 0.225))).view(1, 3, 1, 1)
    with torch.no_grad():
        return float((reference((x - mean) / std) - teacher.model(x)).abs().max())


# ------------------------------------------------------------------ timm RegNetY → our presets


@pytest.mark.parametrize(
    ("timm_name", "preset", "suffix"),
    [("regnety_006", "regnety-600mf", ".safetensors"), ("regnety_040", "regnety-4gf", ".pth")],
)
def test_timm_regnety_loads_into_our_preset_with_equal_logits(
    tmp_path: Path, timm_name: str, preset: str, suffix: str
) -> None:
    reference = _timm_model(timm_name)
    path = _save(reference.state_dict(), tmp_path / f"{timm_name}{suffix}")
    teacher = _load(f"cnn={preset}:{path}", image_size=SIZE)
    assert teacher.info.arch == preset
    assert count_parameters(teacher.model) == count_parameters(reference)
    assert teacher.info.pretrained_cfg is not None
    assert teacher.info.pretrained_cfg["source"] == "timm/pycls RegNetY"
    assert _max_diff(reference, teacher) <= 1e-5


def test_regnety_16gf_has_timms_regnety_160_parameter_count() -> None:
    with torch.device("meta"):
        reference = timm.create_model("regnety_160", pretrained=False)
    assert count_parameters(reference) == 83_590_140  # DeiT's teacher: "83.6 M"
    assert reference_parameter_count("regnety-16gf") == 83_590_140


def test_regnety_file_of_another_size_is_one_line_naming_the_shape(tmp_path: Path) -> None:
    path = _save(_timm_model("regnety_040").state_dict(), tmp_path / "r40.safetensors")
    with pytest.raises(UserError, match=r"does not fit regnety-600mf: body\.\S+ \(") as err:
        _load(f"cnn=regnety-600mf:{path}")
    assert "\n" not in str(err.value)


def test_a_zoo_file_for_a_preset_of_another_family_is_one_line(tmp_path: Path) -> None:
    path = _save(_timm_model("regnety_006").state_dict(), tmp_path / "r6.safetensors")
    with pytest.raises(UserError, match="timm/pycls RegNetY weights, which load into"):
        _load(f"inn=rednet26:{path}")


def test_an_unknown_key_in_a_zoo_file_is_named(tmp_path: Path) -> None:
    state = _timm_model("regnety_006").state_dict()
    state["s1.b1.extra.weight"] = torch.zeros(1)
    path = _save(state, tmp_path / "odd.safetensors")
    with pytest.raises(UserError, match=r"key 's1\.b1\.extra\.weight' of a timm/pycls RegNetY"):
        _load(f"cnn=regnety-600mf:{path}")


# ---------------------------------------------------------------- any timm model, generic path


@pytest.mark.parametrize(("name", "size"), [("resnet50", SIZE), ("vit_tiny_patch16_224", 224)])
def test_any_timm_model_is_a_teacher_with_equal_logits(
    tmp_path: Path, name: str, size: int
) -> None:
    reference = _timm_model(name)
    path = _save(reference.state_dict(), tmp_path / f"{name}.safetensors")
    teacher = _load(f"t=timm:{name}:{path}")
    assert teacher.info.arch == f"timm:{name}"
    assert teacher.info.checkpoint_sha256 == file_sha256(path)
    cfg = teacher.info.pretrained_cfg
    assert cfg is not None and cfg["architecture"] == name
    assert cfg["mean"] == list(reference.pretrained_cfg["mean"])
    assert teacher.image_size == reference.pretrained_cfg["input_size"][-1]
    assert _max_diff(reference, teacher, size) <= 1e-5


def test_a_timm_vit_at_another_size_gets_resampled_position_embeddings(tmp_path: Path) -> None:
    reference = _timm_model("vit_tiny_patch16_224")
    path = _save(reference.state_dict(), tmp_path / "vit.safetensors")
    teacher = _load(f"t=timm:vit_tiny_patch16_224:{path}", image_size=112)
    assert teacher.image_size == 112
    with torch.no_grad():
        assert teacher.model(torch.rand(1, 3, 112, 112)).shape == (1, 10)


def test_timm_weights_of_another_model_are_one_line(tmp_path: Path) -> None:
    path = _save(_timm_model("resnet18").state_dict(), tmp_path / "r18.safetensors")
    with pytest.raises(UserError, match="does not fit timm:resnet50") as err:
        _load(f"t=timm:resnet50:{path}")
    assert "\n" not in str(err.value)


def test_unknown_timm_model_is_one_line() -> None:
    with pytest.raises(UserError, match="timm has no model 'resnet5000'"):
        _load("t=timm:resnet5000:x.pth")


def test_teacher_spec_parses_timm_with_and_without_weights() -> None:
    bare = TeacherSpec.parse("cnn=timm:regnety_006.pycls_in1k")
    assert (bare.arch, bare.checkpoint) == ("timm:regnety_006.pycls_in1k", None)
    assert TeacherSpec.parse(str(bare)) == bare
    full = TeacherSpec.parse("cnn=timm:resnet50:/w/a:b.pth")
    assert (full.arch, full.checkpoint) == ("timm:resnet50", Path("/w/a:b.pth"))
    assert TeacherSpec.parse(str(full)) == full
    with pytest.raises(UserError, match="needs a checkpoint file"):
        TeacherSpec(name="cnn", arch="resnet50", checkpoint=None)


# --------------------------------------------------------------------------- the offline cache


def _fake_hf_cache(root: Path, hub_id: str, state: dict[str, Tensor]) -> Path:
    """The layout huggingface_hub writes: refs/main names the snapshot holding the file."""
    repo = root / f"models--{hub_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0123abcd")
    snapshot = repo / "snapshots" / "0123abcd"
    snapshot.mkdir(parents=True)
    return _save(state, snapshot / "model.safetensors")


def test_timm_weights_come_from_the_offline_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reference = _timm_model("resnet18")
    hub_id = reference.pretrained_cfg["hf_hub_id"]
    cached = _fake_hf_cache(tmp_path / "hub", hub_id, reference.state_dict())
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    teacher = _load("t=timm:resnet18")
    assert teacher.info.meta["checkpoint"] == str(cached)
    assert teacher.info.checkpoint_sha256 == file_sha256(cached)
    assert _max_diff(reference, teacher) <= 1e-5


def test_no_weights_and_an_empty_cache_is_one_line_naming_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hub"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-torch"))
    with pytest.raises(UserError) as err:
        _load("t=timm:regnety_006.pycls_in1k")
    message = str(err.value)
    assert "\n" not in message
    assert "timm/regnety_006.pycls_in1k/model.safetensors" in message
    assert "nothing is downloaded" in message


# ------------------------------------------------------------------------- without the extra


@pytest.fixture
def timm_missing(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """``import timm`` fails, as without the [timm] extra."""
    real_import = builtins.__import__

    def fake_import(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "timm" or name.startswith("timm."):
            raise ImportError("No module named 'timm'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    zoo_timm.timm_preset.cache_clear()
    yield
    zoo_timm.timm_preset.cache_clear()


def test_without_timm_a_timm_teacher_is_one_line_naming_the_extra(
    tmp_path: Path, timm_missing: None
) -> None:
    with pytest.raises(UserError, match=r"the \[timm\] extra: pip install 'civt-pipe\[timm\]'"):
        _load(f"t=timm:resnet50:{tmp_path / 'w.pth'}")


def _dump(tmp_path: Path, teacher: str, *options: str) -> Any:
    """``civt-pipe dump-logits`` of fresh toy shards (gray, 3 classes) with one teacher."""
    data = make_toy_shards(tmp_path, "train", per_class=2)
    args = ["dump-logits", "--data", str(data), "--teacher", teacher]
    args += ["--out", str(tmp_path / "s.zarr"), "--device", "cpu", "--threads", "1", *options]
    return CliRunner().invoke(app, args)


def test_without_timm_the_cli_prints_one_line(tmp_path: Path, timm_missing: None) -> None:
    weights = _save(_timm_model("resnet18", num_classes=3).state_dict(), tmp_path / "w.pth")
    result = _dump(tmp_path, f"t=timm:resnet18:{weights}")
    assert result.exit_code != 0
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "[timm]" in lines[0], result.output


# ---------------------------------------------------------------- RedNet (mmcls format) → ours

# mmpretrain 1.2.0 installs with mmcv-lite, but it has no RedNet backbone: RedNet lives in the
# authors' mmcls fork (d-li14/involution, cls/mmcls/models/backbones/rednet.py). So this is the
# second path: a reference RedNet written here from the module structure that source defines
# (ConvModule = conv + "bn", involution = conv1 (ConvModule) + conv2 (conv with bias), ResNet
# bottlenecks with conv2 = involution, layer1..layer4, head.fc), with its names.


class _ConvModule(nn.Module):
    def __init__(
        self, cin: int, cout: int, kernel: int, stride: int = 1, act: bool = True, norm: bool = True
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=not norm)
        if norm:
            self.bn = nn.BatchNorm2d(cout)
        self.act = act

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv(x)
        if hasattr(self, "bn"):
            x = self.bn(x)
        return torch.relu(x) if self.act else x


class _RefInvolution(nn.Module):
    def __init__(self, channels: int, kernel: int, stride: int) -> None:
        super().__init__()
        self.k, self.stride, self.groups = kernel, stride, channels // 16
        self.conv1 = _ConvModule(channels, channels // 4, 1)
        self.conv2 = _ConvModule(
            channels // 4, kernel * kernel * self.groups, 1, act=False, norm=False
        )

    def forward(self, x: Tensor) -> Tensor:
        pooled = nn.functional.avg_pool2d(x, self.stride) if self.stride > 1 else x
        weight = self.conv2(self.conv1(pooled))
        b, _, h, w = weight.shape
        weight = weight.view(b, self.groups, 1, self.k * self.k, h, w)
        cols = nn.functional.unfold(x, self.k, padding=(self.k - 1) // 2, stride=self.stride)
        cols = cols.view(b, self.groups, x.shape[1] // self.groups, self.k * self.k, h, w)
        return (weight * cols).sum(dim=3).view(b, x.shape[1], h, w)


class _RefBottleneck(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        mid = cout // 4
        self.conv1 = nn.Conv2d(cin, mid, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = _RefInvolution(mid, 7, stride)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(mid, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.downsample = (
            nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
            if stride != 1 or cin != cout
            else None
        )

    def forward(self, x: Tensor) -> Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = torch.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return torch.relu(out + (self.downsample(x) if self.downsample is not None else x))


class _RefRedNetBackbone(nn.Module):
    def __init__(self, depths: tuple[int, ...]) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            _ConvModule(3, 32, 3, 2),
            _RefInvolution(32, 3, 1),
            nn.BatchNorm2d(32),
            nn.ReLU(),
            _ConvModule(32, 64, 3),
        )
        cin, cout = 64, 256
        for i, depth in enumerate(depths):
            blocks = [
                _RefBottleneck(cin if j == 0 else cout, cout, 2 if i and not j else 1)
                for j in range(depth)
            ]
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
            cin, cout = cout, cout * 2
        self.out_channels = cin

    def forward(self, x: Tensor) -> Tensor:
        x = nn.functional.max_pool2d(self.stem(x), 3, 2, 1)
        for i in range(4):
            x = getattr(self, f"layer{i + 1}")(x)
        return x


class _RefRedNet(nn.Module):
    """mmcls ImageClassifier: backbone → global average pooling neck → head.fc."""

    def __init__(self, depths: tuple[int, ...], num_classes: int) -> None:
        super().__init__()
        self.backbone = _RefRedNetBackbone(depths)
        self.head = nn.Module()
        self.head.fc = nn.Linear(self.backbone.out_channels, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head.fc(self.backbone(x).mean(dim=(2, 3)))


def test_mmcls_rednet26_checkpoint_loads_into_rednet26_with_equal_logits(tmp_path: Path) -> None:
    torch.manual_seed(0)
    reference = _randomize_bn(_RefRedNet((1, 2, 4, 1), num_classes=10), 0)
    path = tmp_path / "rednet26.pth"
    torch.save(
        {"meta": {"epoch": 130, "CLASSES": ["a"] * 10}, "state_dict": reference.state_dict()}, path
    )
    teacher = _load(f"inn=rednet26:{path}", image_size=SIZE)
    assert count_parameters(teacher.model) == count_parameters(reference)
    assert teacher.info.pretrained_cfg is not None
    assert teacher.info.pretrained_cfg["interpolation"] == "bilinear"
    assert _max_diff(reference, teacher) <= 1e-5


def test_rednet_checkpoint_of_another_depth_is_one_line(tmp_path: Path) -> None:
    reference = _RefRedNet((1, 2, 4, 1), num_classes=10)
    path = tmp_path / "rednet26.pth"
    torch.save({"meta": {}, "state_dict": reference.state_dict()}, path)
    with pytest.raises(UserError, match="rednet50") as err:
        _load(f"inn=rednet50:{path}")
    assert "\n" not in str(err.value)


# ----------------------------------------------------------------------- aligned-mode roles


def test_declared_inductive_bias_of_timm_families() -> None:
    roles = resolve_alignment({"cnn": "timm:convnext_atto", "inn": "rednet26"}, {})
    assert roles == {"cnn": "conv", "inn": "inv"}
    roles = resolve_alignment({"cnn": "timm:efficientnet_b0", "inn": "rednet26"}, {})
    assert roles["cnn"] == "conv"
    with pytest.raises(UserError, match="no known inductive bias; use --align mix=conv"):
        resolve_alignment({"mix": "timm:mixer_s16_224", "inn": "rednet26"}, {})
    roles = resolve_alignment({"mix": "timm:mixer_s16_224", "inn": "rednet26"}, {"mix": "conv"})
    assert roles["mix"] == "conv"
    with pytest.raises(UserError, match="is a transformer") as err:
        resolve_alignment({"vit": "timm:vit_tiny_patch16_224", "inn": "rednet26"}, {"vit": "conv"})
    assert "\n" not in str(err.value)


# ------------------------------------------------------------------- evaluate --preprocess zoo


def _photo_shards(root: Path) -> tuple[Path, list[Path]]:
    """Three RGB PNG images of odd sizes, one per class (the label finds the file)."""
    rng = np.random.default_rng(0)
    files = []
    for name, (w, h) in zip(("a", "b", "c"), ((300, 241), (257, 333), (410, 260)), strict=True):
        (root / "src" / name).mkdir(parents=True)
        pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        file = root / "src" / name / "img.png"
        Image.fromarray(pixels).save(file)
        files.append(file)
    make_shards(
        MakeShardsConfig(
            source=f"folder:{root / 'src'}", out_dir=root / "val", split="test", format="png"
        )
    )
    return root / "val", files


@pytest.mark.parametrize(
    "cfg",
    [
        {"model": "resnet18"},  # timm's own configuration: bicubic, crop 0.95
        {"input_size": (3, 224, 224), "interpolation": "bilinear", "crop_pct": 0.875},  # RedNet
    ],
)
def test_zoo_eval_view_gives_timms_create_transform_pixels(tmp_path: Path, cfg: dict) -> None:
    data, files = _photo_shards(tmp_path)
    if "model" in cfg:
        data_cfg = resolve_data_config({}, model=timm.create_model(cfg["model"]))
    else:
        data_cfg = {
            **cfg,
            "crop_mode": "center",
            "mean": (0.485, 0.456, 0.406),
            "std": (0.229, 0.224, 0.225),
        }
    transform = create_transform(**data_cfg)
    view = ZooEval.from_config({**data_cfg, "input_size": list(data_cfg["input_size"])})
    shard_set = resolve_complete_shards(str(data))
    mean = torch.tensor(data_cfg["mean"]).view(3, 1, 1)
    std = torch.tensor(data_cfg["std"]).view(3, 1, 1)
    seen = 0
    for batch in eval_batches(shard_set, image_size=224, batch_size=8, zoo=view):
        for image, label in zip(batch.images, batch.labels, strict=True):
            theirs = transform(Image.open(files[int(label)]).convert("RGB"))
            assert float(((image - mean) / std - theirs).abs().max()) <= 1e-6
            seen += 1
    assert seen == 3


def test_evaluate_preprocess_zoo_on_the_cli(tmp_path: Path) -> None:
    data, _ = _photo_shards(tmp_path)
    path = _save(_timm_model("resnet18", num_classes=3).state_dict(), tmp_path / "r18.safetensors")
    args = [
        "evaluate",
        "--checkpoint",
        str(path),
        "--data",
        str(data),
        "--arch",
        "timm:resnet18",
        "--device",
        "cpu",
        "--threads",
        "1",
        "--json",
    ]
    result = CliRunner().invoke(app, [*args, "--preprocess", "zoo"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert (report["arch"], report["preprocess"], report["num_samples"]) == (
        "timm:resnet18",
        "zoo",
        3,
    )


def test_predict_takes_a_published_file_like_evaluate(tmp_path: Path) -> None:
    # predict and evaluate load through one function (train/validate.load_for_data): a timm
    # file with --arch gives the same top-1 from predict's rows as evaluate reports.
    data, _ = _photo_shards(tmp_path)
    path = _save(_timm_model("resnet18", num_classes=3).state_dict(), tmp_path / "r18.safetensors")
    common = ["--checkpoint", str(path), "--data", str(data), "--arch", "timm:resnet18"]
    common += ["--device", "cpu", "--threads", "1"]
    evaluated = CliRunner().invoke(app, ["evaluate", *common, "--json"])
    assert evaluated.exit_code == 0, evaluated.output
    out = tmp_path / "rows.jsonl"
    predicted = CliRunner().invoke(app, ["predict", *common, "--out", str(out), "--json"])
    assert predicted.exit_code == 0, predicted.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 3
    assert json.loads(predicted.output)["checkpoint"] == str(path)
    hits = [row["logits"]["classes"][0] == row["label"] for row in rows]
    assert sum(hits) / len(rows) == json.loads(evaluated.output)["top1"]
    # Without a checkpoint, only a timm model may look in timm's cache: one line, before torch.
    refused = CliRunner().invoke(
        app, ["predict", "--data", str(data), "--arch", "rednet26", "--out", str(out)]
    )
    assert refused.exit_code == 2 and "--checkpoint is required" in refused.stderr


def test_preprocess_zoo_for_our_own_teacher_is_one_line(tmp_path: Path) -> None:
    from toy_shards import make_toy_teacher

    data = make_toy_shards(tmp_path, "test", per_class=2)
    teacher = make_toy_teacher(tmp_path / "t.pt")
    result = CliRunner().invoke(
        app,
        [
            "evaluate",
            "--checkpoint",
            str(teacher),
            "--data",
            str(data),
            "--preprocess",
            "zoo",
            "--device",
            "cpu",
            "--threads",
            "1",
        ],
    )
    assert result.exit_code != 0
    assert "--preprocess zoo needs a zoo teacher" in result.output
    assert len([line for line in result.output.splitlines() if line.strip()]) == 1


# --------------------------------------------------------------------------- the store record


def test_dump_logits_records_a_zoo_teachers_pretrained_cfg(tmp_path: Path) -> None:
    from civt_pipe.stores.logit_store import LogitStore

    reference = _timm_model("resnet18", num_classes=3)
    path = _save(reference.state_dict(), tmp_path / "r18.safetensors")
    result = _dump(tmp_path, f"t=timm:resnet18:{path}", "--topk", "3", "--image-size", "32")
    assert result.exit_code == 0, result.output
    assert "pretrained at 224 px and sees 32 px views" in " ".join(result.output.split())
    store = LogitStore.open(tmp_path / "s.zarr")
    (info,) = store.teachers
    assert info.arch == "timm:resnet18"
    assert info.pretrained_cfg is not None
    assert info.pretrained_cfg["interpolation"] == "bicubic"
    assert info.meta["in_chans"] == 1  # RGB weights adapted to the gray toy data


def test_teacher_info_without_pretrained_cfg_keeps_its_json() -> None:
    from civt_pipe.stores.schema import TeacherInfo

    info = TeacherInfo(name="cnn", arch="resnet18", checkpoint_sha256="0" * 64, num_classes=3)
    assert "pretrained_cfg" not in info.to_dict()
    assert TeacherInfo.from_dict(info.to_dict()) == info
    zoo = TeacherInfo(
        name="cnn",
        arch="timm:resnet18",
        checkpoint_sha256="0" * 64,
        num_classes=3,
        pretrained_cfg={"crop_pct": 0.95},
    )
    assert TeacherInfo.from_dict(zoo.to_dict()) == zoo


def test_train_teacher_fine_tunes_a_timm_model_that_dump_logits_then_loads(
    tmp_path: Path,
) -> None:
    data = make_toy_shards(tmp_path, "train", per_class=2)
    init = _save(_timm_model("resnet18", num_classes=3).state_dict(), tmp_path / "r18.safetensors")
    out = tmp_path / "t.pt"
    common = ["--device", "cpu", "--threads", "1", "--workers", "0"]
    result = CliRunner().invoke(
        app,
        ["train-teacher", "--arch", "timm:resnet18", "--data", str(data), "--out", str(out),
         "--epochs", "1", "--batch-size", "3", "--init", str(init), *common],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    teacher = _load(f"t=timm:resnet18:{out}", num_classes=3, channels=1)
    assert teacher.info.arch == "timm:resnet18"
    assert teacher.info.pretrained_cfg is not None  # recorded for a fine-tuned zoo model too


def test_evaluate_a_timm_model_from_the_offline_cache_without_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data, _ = _photo_shards(tmp_path)
    reference = _timm_model("resnet18", num_classes=3)
    cached = _fake_hf_cache(tmp_path / "hub", reference.pretrained_cfg["hf_hub_id"],
                            reference.state_dict())  # fmt: skip
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    common = ["--data", str(data), "--device", "cpu", "--threads", "1", "--json"]
    result = CliRunner().invoke(app, ["evaluate", "--arch", "timm:resnet18", *common])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["checkpoint"] == str(cached)
    result = CliRunner().invoke(app, ["evaluate", "--arch", "rednet26", *common])
    assert result.exit_code != 0
    assert "--checkpoint is required" in result.output
