"""``civt-pipe export`` and safetensors checkpoints: timm, torchvision and TorchScript round trips.

The round trips load each export the way its ecosystem does (``timm.create_model`` + strict
``load_state_dict``, ``torchvision.models.*``, ``torch.jit.load``, our own loader) and compare
logits with the civt-pipe model on one batch. timm is a dev dependency: only this file imports
it, the export code writes its names without it.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import pytest
import timm
import torch
import torchvision.models as tvm
from safetensors.torch import load_file
from torch import nn
from torchvision.models.regnet import BlockParams
from typer.testing import CliRunner

from civt_pipe.cli.app import app
from civt_pipe.pipeline.models.checkpoint import (
    load_checkpoint,
    make_checkpoint,
    model_from_checkpoint,
    save_checkpoint,
)
from civt_pipe.pipeline.models.factory import create_model
from civt_pipe.pipeline.models.heads import prediction
from civt_pipe.pipeline.models.normalize import NormalizedModel
from civt_pipe.pipeline.models.teacher_spec import TeacherSpec
from civt_pipe.pipeline.models.teachers import load_teachers
from civt_pipe.pipeline.runtime.errors import UserError
from civt_pipe.pipeline.stages.export.config import ExportConfig
from civt_pipe.pipeline.stages.export.run import export
from civt_pipe.pipeline.stages.teacher.config import TeacherTrainConfig
from civt_pipe.pipeline.stages.teacher.run import train_teacher

SIZE = 16
CLASSES = 5


def _student(tmp: Path, teachers: tuple[str, ...], mode: str, **kw: Any) -> tuple[Path, Any]:
    model = create_model(
        "civt-nano",
        num_classes=CLASSES,
        in_chans=1,
        image_size=SIZE,
        teacher_names=teachers,
        token_mode=mode,
        **kw,
    ).eval()
    path = tmp / f"{mode}-{len(teachers)}.pt"
    save_checkpoint(path, make_checkpoint(model, class_names=[f"c{i}" for i in range(CLASSES)]))
    return path, model


def _normalized(x: torch.Tensor, cfg: dict[str, Any]) -> torch.Tensor:
    """What timm's data config does to an image in [0, 1]: ``(x - mean) / std``."""
    mean = torch.tensor(cfg["mean"]).view(1, -1, 1, 1)
    std = torch.tensor(cfg["std"]).view(1, -1, 1, 1)
    return (x - mean) / std


# ------------------------------------------------------------------------------------- timm


@pytest.mark.parametrize(
    ("teachers", "mode", "head", "timm_class"),
    [
        (("cnn",), "per-teacher", "mean", timm.models.deit.VisionTransformerDistilled),
        (("cnn",), "per-teacher", "cls", timm.models.vision_transformer.VisionTransformer),
        (("cnn",), "per-teacher", "cnn", timm.models.vision_transformer.VisionTransformer),
        (("cnn", "inn"), "per-teacher", "cls", timm.models.vision_transformer.VisionTransformer),
        (("cnn", "inn"), "per-teacher", "inn", timm.models.vision_transformer.VisionTransformer),
        (("cnn", "inn"), "shared", "mean", timm.models.deit.VisionTransformerDistilled),
        ((), "none", "cls", timm.models.vision_transformer.VisionTransformer),
    ],
    ids=["deit-mean", "one-cls", "one-token", "two-cls", "two-token", "shared-mean", "vit"],
)
def test_timm_loads_the_export_strictly_and_gives_our_logits(
    tmp_path: Path, teachers: tuple[str, ...], mode: str, head: str, timm_class: type
) -> None:
    torch.manual_seed(0)
    ckpt, model = _student(tmp_path, teachers, mode)
    out = tmp_path / "timm.safetensors"
    result = export(ExportConfig(checkpoint=ckpt, out=out, format="timm", head=head))
    manifest = json.loads((tmp_path / "timm.safetensors.json").read_text())
    assert manifest["form"] == "timm" and manifest["head"] == head
    spec, cfg = manifest["timm"], manifest["pretrained_cfg"]
    assert result["timm"] == spec
    reference = timm.create_model(
        spec["model_name"], pretrained=False, pretrained_cfg_overlay=cfg, **spec["model_args"]
    ).eval()
    assert type(reference) is timm_class
    reference.load_state_dict(load_file(out), strict=True)  # no missing or unexpected keys
    assert reference.pretrained_cfg["mean"] == cfg["mean"] == model.model_args["mean"]
    assert cfg["input_size"] == [1, SIZE, SIZE] and cfg["num_classes"] == CLASSES
    assert manifest["class_names"] == [f"c{i}" for i in range(CLASSES)]

    x = torch.rand(4, 1, SIZE, SIZE)
    with torch.no_grad():
        ours = prediction(model(x), head)
        theirs = reference(_normalized(x, cfg))
    # The class head is the same arithmetic; another token in timm's class slot only reorders
    # the attention's sums.
    torch.testing.assert_close(theirs, ours, rtol=0, atol=1e-5)


@pytest.mark.parametrize("arch", ["vit-nano", "deit-ti"])
def test_vit_teachers_export_to_timm_names_with_the_same_logits(tmp_path: Path, arch: str) -> None:
    torch.manual_seed(0)
    model = create_model(arch, num_classes=CLASSES, in_chans=1, image_size=SIZE, patch_size=4)
    model.eval()
    ckpt = tmp_path / "vit.pt"
    save_checkpoint(ckpt, make_checkpoint(model))
    out = tmp_path / "vit.safetensors"
    export(ExportConfig(checkpoint=ckpt, out=out, format="timm"))
    manifest = json.loads((tmp_path / "vit.safetensors.json").read_text())
    assert manifest["form"] == "timm" and manifest["heads"] == ["logits"]
    spec = manifest["timm"]
    assert (
        spec["model_class"].endswith(".VisionTransformer") and spec["model_args"]["reg_tokens"] == 0
    )
    reference = timm.create_model(spec["model_name"], pretrained=False, **spec["model_args"])
    reference.load_state_dict(load_file(out), strict=True)
    reference.eval()
    x = torch.rand(3, 1, SIZE, SIZE)
    with torch.no_grad():
        torch.testing.assert_close(
            reference(_normalized(x, manifest["pretrained_cfg"])), model(x), rtol=0, atol=1e-5
        )


def test_timm_export_as_pth_is_a_plain_state_dict(tmp_path: Path) -> None:
    torch.manual_seed(1)
    ckpt, _ = _student(tmp_path, ("cnn",), "per-teacher")
    export(ExportConfig(checkpoint=ckpt, out=tmp_path / "deit.pth", format="timm", head="mean"))
    state = torch.load(tmp_path / "deit.pth", weights_only=True)
    assert {"cls_token", "dist_token", "head_dist.weight"} <= set(state)
    assert not any(k.startswith(("body.", "normalize.")) for k in state)


# ------------------------------------------------------------------------------ torchvision


def _torchvision_model(manifest: dict[str, Any]) -> nn.Module:
    """Build what the manifest's ``torchvision`` entry describes (builder, then the stem)."""
    spec = manifest["torchvision"]
    args = dict(spec["builder_args"])
    name = spec["builder"].removeprefix("torchvision.models.")
    if name == "RegNet":
        model: nn.Module = tvm.RegNet(BlockParams(**args.pop("block_params")), **args)
    else:
        model = getattr(tvm, name)(**args)
    for module, stem in (spec["stem"] or {}).items():
        parent, _, leaf = module.rpartition(".")
        new = nn.Identity() if stem == "torch.nn.Identity" else nn.Conv2d(**stem)
        (model.get_submodule(parent) if parent else model).register_module(leaf, new)
    return model.eval()


@pytest.mark.parametrize(
    ("arch", "chans", "small", "suffix"),
    [
        ("resnet18", 3, False, ".pth"),
        ("resnet18", 1, True, ".safetensors"),
        pytest.param("regnety-600mf", 3, True, ".pth", marks=pytest.mark.slow),
    ],
    ids=["resnet18", "resnet18-gray-small", "regnety-600mf-small"],
)
def test_teacher_exports_to_torchvision_names_with_the_same_logits(
    tmp_path: Path, arch: str, chans: int, small: bool, suffix: str
) -> None:
    torch.manual_seed(0)
    model = create_model(
        arch, num_classes=CLASSES, in_chans=chans, image_size=32, small_input=small
    ).eval()
    ckpt = tmp_path / "teacher.pt"
    save_checkpoint(ckpt, make_checkpoint(model))
    out = tmp_path / f"tv{suffix}"
    export(ExportConfig(checkpoint=ckpt, out=out, format="timm"))
    manifest = json.loads((tmp_path / f"tv{suffix}.json").read_text())
    assert manifest["form"] == "torchvision" and manifest["heads"] == ["logits"]
    assert (manifest["torchvision"]["stem"] is None) == (not small and chans == 3)
    state = load_file(out) if suffix == ".safetensors" else torch.load(out, weights_only=True)
    reference = _torchvision_model(manifest)
    reference.load_state_dict(state, strict=True)
    x = torch.rand(2, chans, 32, 32)
    with torch.no_grad():
        ours = model(x)
        torch.testing.assert_close(
            reference(_normalized(x, manifest["pretrained_cfg"])), ours, rtol=0, atol=1e-5
        )
    if arch == "resnet18" and not small:
        # torchvision's own builder, as the issue puts it, loads it unchanged.
        tvm.resnet18(num_classes=CLASSES).load_state_dict(state, strict=True)
    # The torchvision names come back in through our loader as bare teacher weights.
    back, _ = model_from_checkpoint(out, arch=arch, image_size=32, in_chans=chans)
    with torch.no_grad():
        torch.testing.assert_close(back(x), ours, rtol=0, atol=1e-5)


# ------------------------------------------------------------------------------ torchscript


def _jit_load(path: Path) -> torch.jit.ScriptModule:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)  # torch.jit is deprecated
        return torch.jit.load(str(path))


def test_torchscript_returns_the_chosen_head_from_images_in_0_1(tmp_path: Path) -> None:
    torch.manual_seed(0)
    align = {"cnn": "conv", "inn": "inv"}
    ckpt, model = _student(tmp_path, ("cnn", "inn"), "aligned", align=align)
    x = torch.rand(3, 1, SIZE, SIZE)  # not the traced batch size
    # No --head: the model's inference head, the mean for the aligned CivT.
    for head, expect in ((None, "mean"), ("inn", "inn")):
        out = tmp_path / f"{expect}.ts"
        result = export(ExportConfig(checkpoint=ckpt, out=out, format="torchscript", head=head))
        assert result["head"] == expect and result["heads"] == [expect]
        with torch.no_grad():
            torch.testing.assert_close(
                _jit_load(out)(x), prediction(model(x), expect), rtol=0, atol=1e-6
            )


# ------------------------------------------------------------------------------------- onnx


def _onnx_logits(path: Path, x: torch.Tensor) -> torch.Tensor:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["images"]
    return torch.from_numpy(session.run(["logits"], {"images": x.numpy()})[0])


@pytest.mark.parametrize("kind", ["student-mean", "student-token", "teacher"])
def test_onnx_runs_in_onnxruntime_with_our_logits_at_two_batch_sizes(
    tmp_path: Path, kind: str
) -> None:
    torch.manual_seed(0)
    if kind == "teacher":
        model = create_model("cnn-nano", num_classes=CLASSES, in_chans=1, image_size=SIZE).eval()
        ckpt, head, expect = tmp_path / "teacher.pt", None, "logits"
        save_checkpoint(ckpt, make_checkpoint(model))
    else:
        ckpt, model = _student(tmp_path, ("cnn", "inn"), "per-teacher")
        head = expect = "mean" if kind == "student-mean" else "inn"
    out = tmp_path / "model.onnx"
    result = export(ExportConfig(checkpoint=ckpt, out=out, format="onnx", head=head))
    assert result["form"] == "onnx" and result["heads"] == [expect]
    assert json.loads((tmp_path / "model.onnx.json").read_text())["head"] == expect
    for batch in (1, 7):  # neither is the exported example's 2: the batch axis is dynamic
        x = torch.rand(batch, 1, SIZE, SIZE)
        with torch.no_grad():
            ours = model(x) if kind == "teacher" else prediction(model(x), expect)
        got = _onnx_logits(out, x)
        assert got.shape == (batch, CLASSES)
        assert (got - ours).abs().max().item() <= 1e-4


def test_exports_of_one_checkpoint_in_two_forms_keep_both_manifests(tmp_path: Path) -> None:
    torch.manual_seed(0)
    ckpt, _ = _student(tmp_path, ("cnn",), "per-teacher")
    for name, form in (("civt.safetensors", "safetensors"), ("civt.ts", "torchscript")):
        export(ExportConfig(checkpoint=ckpt, out=tmp_path / name, format=form))
    for name, form in (("civt.safetensors", "safetensors"), ("civt.ts", "torchscript")):
        assert json.loads((tmp_path / f"{name}.json").read_text())["format"] == form


# --------------------------------------------------------- safetensors through the pipeline


@pytest.fixture(scope="module")
def trained(toy_world: dict[str, Path]) -> dict[str, Path]:
    """The shared toy run (tests/conftest.py ``toy_world``): a one-epoch cnn-nano teacher run
    directory and a one-epoch student from its store."""
    return toy_world


def _same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert set(a) == set(b)
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_training_writes_safetensors_beside_the_final_checkpoints(
    trained: dict[str, Path],
) -> None:
    pairs = [
        (trained["teacher"] / "final.pt", trained["teacher"] / "final.safetensors"),
        (trained["run"] / "final.pt", trained["run"] / "final.safetensors"),
    ]
    for pt, weights in pairs:
        assert weights.is_file(), weights
        ckpt, light = load_checkpoint(pt), load_checkpoint(weights)
        _same_weights(light["state_dict"], ckpt["state_dict"])
        assert "train_state" not in light
        for key in ("arch", "kind", "model_args", "class_names", "metrics"):
            assert light[key] == json.loads(json.dumps(ckpt[key])), key
    for run in (trained["teacher"], trained["run"]):
        assert not (run / "last.safetensors").exists()


def test_safetensors_load_as_teacher_spec_and_init(
    trained: dict[str, Path], tmp_path: Path
) -> None:
    weights = trained["teacher"] / "final.safetensors"
    (loaded,) = load_teachers(
        [TeacherSpec.parse(f"cnn=cnn-nano:{weights}")],
        torch.device("cpu"),
        num_classes=3,
        channels=1,
    )
    _same_weights(loaded.model.state_dict(), load_checkpoint(trained["teacher"])["state_dict"])
    out = tmp_path / "again"
    train_teacher(
        TeacherTrainConfig(
            arch="cnn-nano",
            data=str(trained["train"]),
            out=str(out),
            epochs=1,
            batch_size=8,
            lr=1e-9,  # one step barely moves the weights: they are the initial ones
            warmup_epochs=0,
            workers=0,
            device="cpu",
            threads=1,
            init=weights,
        )
    )
    torch.testing.assert_close(
        load_checkpoint(out)["state_dict"]["body.fc.weight"],
        load_checkpoint(weights)["state_dict"]["body.fc.weight"],
        rtol=0,
        atol=1e-6,
    )


def test_cli_safetensors_export_evaluates_like_the_checkpoint(
    trained: dict[str, Path], tmp_path: Path
) -> None:
    final = trained["run"] / "final.pt"
    out = tmp_path / "student.safetensors"
    runner = CliRunner()
    done = runner.invoke(app, ["export", str(final), str(out), "--format", "safetensors", "--json"])
    assert done.exit_code == 0, done.output
    report = json.loads(done.stdout)
    assert report["form"] == "civt-pipe" and report["heads"] == ["cls", "cnn", "mean"]
    assert report["out"] == str(out) and Path(report["manifest"]).is_file()
    scores = []
    for ckpt in (final, out):
        args = ["evaluate", "--checkpoint", str(ckpt), "--data", str(trained["test"]), "--json"]
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
        scores.append(json.loads(result.stdout)["heads"])
    assert scores[0] == scores[1]


def test_damaged_safetensors_is_one_line(trained: dict[str, Path], tmp_path: Path) -> None:
    data = (trained["run"] / "final.safetensors").read_bytes()
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="not a readable safetensors file"):
        model_from_checkpoint(bad)


# ---------------------------------------------------------------------------- bad input


def _bad_input_world(tmp: Path) -> dict[str, str]:
    torch.manual_seed(0)
    teacher = tmp / "nano.pt"
    model: NormalizedModel = create_model("cnn-nano", num_classes=3, in_chans=1, image_size=16)
    save_checkpoint(teacher, make_checkpoint(model))
    aligned, _ = _student(tmp, ("cnn", "inn"), "aligned", align={"cnn": "conv", "inn": "inv"})
    two, _ = _student(tmp, ("cnn", "inn"), "per-teacher")
    resnet10 = tmp / "resnet10.pt"
    student = create_model("resnet10", num_classes=3, in_chans=1, image_size=16)
    save_checkpoint(resnet10, make_checkpoint(student))
    (tmp / "taken.pth").write_bytes(b"keep me")
    return {
        "teacher": str(teacher),
        "aligned": str(aligned),
        "two": str(two),
        "resnet10": str(resnet10),
        "tmp": str(tmp),
    }


BAD = [
    ("teacher-timm-mean", ["{teacher}", "{tmp}/o.pth", "--format", "timm", "--head", "mean"],
     "is a teacher with one output"),
    ("teacher-timm-token", ["{teacher}", "{tmp}/o.pth", "--format", "timm", "--head", "cnn"],
     "is a teacher with one output"),
    ("unknown-head", ["{two}", "{tmp}/o.pth", "--head", "rednet"], "unknown head 'rednet'"),
    ("aligned-to-timm", ["{aligned}", "{tmp}/o.pth", "--format", "timm"], "has no timm form"),
    ("nano-teacher-to-timm", ["{teacher}", "{tmp}/o.pth", "--format", "timm"],
     "not a torchvision model"),
    ("resnet10-to-timm", ["{resnet10}", "{tmp}/o.pth", "--format", "timm"], "is not a ViT"),
    ("mean-of-three", ["{two}", "{tmp}/o.pth", "--format", "timm", "--head", "mean"],
     "averages 3 heads"),
    ("out-exists", ["{two}", "{tmp}/taken.pth"], "taken.pth exists; pass --overwrite"),
    ("out-is-json", ["{two}", "{tmp}/o.json"], "cannot end in .json"),
    ("out-is-ckpt", ["{two}", "{two}", "--overwrite"], "is the checkpoint being exported"),
    ("unknown-format", ["{two}", "{tmp}/o.pth", "--format", "tflite"], "--format must be one of"),
    ("missing-ckpt", ["{tmp}/none.pt", "{tmp}/o.pth"], "none.pt does not exist"),
]  # fmt: skip


def test_bad_export_input_is_one_line_and_writes_nothing(tmp_path: Path) -> None:
    world = _bad_input_world(tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    runner = CliRunner()
    for case, args, expect in BAD:
        result = runner.invoke(app, ["export", *(a.format(**world) for a in args)])
        lines = result.stderr.strip().splitlines()
        assert result.exit_code == 2, (case, result.output)
        assert len(lines) == 1 and lines[0].startswith("civt-pipe: error: "), (case, lines)
        assert expect in lines[0], (case, lines[0])
        assert "Traceback" not in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert (tmp_path / "taken.pth").read_bytes() == b"keep me"
