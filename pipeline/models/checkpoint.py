"""Checkpoints: plain dicts that rebuild their model, saved atomically, loaded with checks.

Our format (``torch.save`` of a dict; see docs/models.md)::

    {"format": "civt-pipe", "version": 1, "kind": "teacher" | "student", "arch": "rednet26",
     "model_args": {...}, "state_dict": {...}, "num_classes": C, "class_names": [...] | None,
     "image_size": S, "in_chans": 1 | 3, "mean": [...], "std": [...], "metrics": {...},
     "config": {...}, "train_state": {...}  # optional: optimizer, scheduler, step, RNG...}

``model_args`` are the :func:`.factory.create_model` keyword arguments, so nothing outside the
file is needed: the model is ``create_model(arch, **model_args)``. The same checkpoint as weights
only (:func:`save_safetensors`: a safetensors file with everything but ``state_dict`` as JSON in
its header, no ``train_state``) loads through the same functions. :func:`model_from_checkpoint`
also takes a bare state dict (e.g. a torchvision ``resnet18-*.pth``) when told the architecture,
and adapts the input channels (RGB weights for grayscale data and back) so the user never has
to.
"""

from __future__ import annotations

import json
import os
import pickle
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..runtime import hashing
from ..runtime.atomic import atomic_torch_save, atomic_write_bytes
from ..runtime.errors import UserError
from ..runtime.json_text import json_text
from ..runtime.run_layout import LAST, checkpoint_in
from . import zoo_timm
from .factory import accepted_arguments, create_model, get_preset
from .normalize import NormalizedModel
from .zoo_keymap import KeyMap
from .zoo_mmcls import KEYMAP as MMCLS_REDNET
from .zoo_pycls import KEYMAP as PYCLS_REGNETY

FORMAT = "civt-pipe"
VERSION = 1
REQUIRED_KEYS: tuple[str, ...] = ("kind", "arch", "model_args", "state_dict")
_WRAPPER_PREFIXES: tuple[str, ...] = ("module.", "_orig_mod.")  # DDP, torch.compile
_LEGACY_OPTIONS: tuple[str, ...] = ("small_input",)  # see _legacy_args
# Where torchvision keeps the classifier: ResNet/RegNet "fc", ViT "heads.head", MobileNetV2 and
# EfficientNet "classifier.1" (after the dropout).
_CLASSIFIER_KEYS: tuple[str, ...] = (
    "body.fc.weight",
    "body.heads.head.weight",
    "body.classifier.1.weight",
)

# The first convolution (its input channels are the file's): torchvision ResNet, RegNet (and our
# RedNet), MobileNetV2/EfficientNet, ViT. Safetensors files list keys sorted, so "the first 4-D
# tensor" is only the fallback.
_STEM_KEYS: tuple[str, ...] = (
    "body.conv1.weight",
    "body.stem.0.weight",
    "body.features.0.0.weight",
    "body.conv_proj.weight",
)

PathLike = str | os.PathLike[str]

ZOO_KEYMAPS: tuple[KeyMap, ...] = (PYCLS_REGNETY, MMCLS_REDNET)
"""Published checkpoint formats that load into our presets by explicit key maps."""


def file_sha256(path: PathLike) -> str:
    """Hex sha256 of a file's bytes (recorded with every teacher in the logit store)."""
    return hashing.file_sha256(_checkpoint_file(path))[1]


def make_checkpoint(
    model: NormalizedModel,
    *,
    class_names: Sequence[str] | None = None,
    metrics: Mapping[str, Any] | None = None,
    config: Mapping[str, Any] | None = None,
    train_state: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The checkpoint dict of a registry-built ``model`` (weights copied to the CPU).

    Args:
        model: a model from :func:`.factory.create_model` (not its DDP or compiled wrapper).
        class_names: one name per class, in label order.
        metrics: e.g. ``{"val_top1": 0.97}``.
        config: the resolved run configuration (plain JSON-like values).
        train_state: what a resume needs (optimizer, scheduler, epoch, RNG...).
    """
    args = dict(model.model_args)
    if class_names is not None and len(class_names) != args["num_classes"]:
        raise UserError(
            f"{len(class_names)} class names given for a model with {args['num_classes']} classes"
        )
    ckpt: dict[str, Any] = {
        "format": FORMAT,
        "version": VERSION,
        "kind": model.kind,
        "arch": model.arch,
        "model_args": args,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "num_classes": args["num_classes"],
        "class_names": list(class_names) if class_names is not None else None,
        "image_size": args["image_size"],
        "in_chans": args["in_chans"],
        "mean": list(args["mean"]),
        "std": list(args["std"]),
        "metrics": dict(metrics or {}),
        "config": dict(config or {}),
    }
    if train_state is not None:
        ckpt["train_state"] = dict(train_state)
    return ckpt


def save_checkpoint(path: PathLike, ckpt: Mapping[str, Any]) -> None:
    """Write ``ckpt`` (see :func:`make_checkpoint`) atomically: a reader sees old or new."""
    if ckpt.get("format") != FORMAT:
        raise ValueError(f"not a {FORMAT} checkpoint dict (format={ckpt.get('format')!r})")
    missing = [key for key in REQUIRED_KEYS if key not in ckpt]
    if missing:
        raise ValueError(f"checkpoint dict lacks {', '.join(missing)}")
    atomic_torch_save(dict(ckpt), path)


# ------------------------------------------------------------------------------ safetensors
# The same checkpoint as weights only: the state dict under our own names in a safetensors file,
# every other entry (arch, model_args, class names, metrics, config) as JSON in its header's
# metadata, so the file alone rebuilds the model. No train_state: it is not resumable. Loading
# goes through load_checkpoint / model_from_checkpoint like any checkpoint: they recognise the
# file by its content (a safetensors file starts with its header length, then "{").

SAFETENSORS_SUFFIX = ".safetensors"
_SAFETENSORS_META = "civt_pipe_checkpoint"  # the header metadata key holding our JSON


def weights_file(path: PathLike) -> Path:
    """Where the weights of checkpoint ``path`` go: ``final.pt`` → ``final.safetensors``."""
    return Path(path).with_suffix(SAFETENSORS_SUFFIX)


def safetensors_bytes(ckpt: Mapping[str, Any]) -> bytes:
    """``ckpt`` (see :func:`make_checkpoint`) as a safetensors file: weights plus JSON header."""
    from safetensors.torch import save

    meta = {k: v for k, v in ckpt.items() if k not in ("state_dict", "train_state")}
    # Own, contiguous copies: safetensors refuses tensors that share memory or are strided views.
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in ckpt["state_dict"].items()}
    return save(tensors, metadata={_SAFETENSORS_META: json_text(meta)})


def save_safetensors(path: PathLike, ckpt: Mapping[str, Any]) -> None:
    """Write ``ckpt``'s weights and metadata (no training state) to ``path`` atomically."""
    if ckpt.get("format") != FORMAT:
        raise ValueError(f"not a {FORMAT} checkpoint dict (format={ckpt.get('format')!r})")
    atomic_write_bytes(path, safetensors_bytes(ckpt))


def is_safetensors(path: PathLike) -> bool:
    """Whether the file at ``path`` is a safetensors file (by its first bytes)."""
    with open(path, "rb") as fh:
        head = fh.read(9)
    if len(head) < 9:
        return False
    size = int.from_bytes(head[:8], "little")
    return head[8:9] == b"{" and 0 < size < Path(path).stat().st_size


def _safetensors_load(target: Path) -> dict[str, Any]:
    """Our checkpoint dict from a safetensors file, or its bare state dict (no metadata)."""
    from safetensors import safe_open

    try:
        with safe_open(str(target), framework="pt") as fh:
            meta = fh.metadata() or {}
            names = list(fh.keys())
            state = {key: fh.get_tensor(key) for key in names}
    except Exception as err:  # the Rust reader reports damage as its own error type
        raise UserError(f"{target} is not a readable safetensors file ({_reason(err)})") from None
    if _SAFETENSORS_META not in meta:
        return state
    try:
        ckpt = json.loads(meta[_SAFETENSORS_META])
    except json.JSONDecodeError:
        raise UserError(f"{target} has damaged civt-pipe metadata in its header") from None
    if not isinstance(ckpt, dict):
        raise UserError(f"{target} has damaged civt-pipe metadata in its header")
    ckpt["state_dict"] = state
    return ckpt


def _checkpoint_file(path: PathLike) -> Path:
    """``path`` as a file to load: a file, or a run directory's ``final.pt``
    (:func:`..runtime.run_layout.checkpoint_in`); anything missing is a :class:`UserError`."""
    target = checkpoint_in(path)
    if target != Path(path) and not target.is_file():
        raise UserError(
            f"run directory {path} has no {target.name} (is the run finished? "
            f"its {LAST} resumes with --resume)"
        )
    if target.is_dir():
        raise UserError(f"checkpoint {target} is a directory, not a checkpoint file")
    if not target.is_file():
        raise UserError(f"checkpoint file {target} does not exist")
    return target


def _torch_load(path: PathLike) -> Any:
    target = _checkpoint_file(path)
    if is_safetensors(target):
        return _safetensors_load(target)
    try:
        # weights_only: a checkpoint is data, and unpickling arbitrary objects would run code
        # from whoever wrote the file. Our checkpoints and torchvision weight files both pass.
        with warnings.catch_warnings():
            # A plain pickle.dump file makes torch warn before it fails; the failure is reported.
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(target, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        code = pickled_code(target)
        if code is not None:
            raise UserError(
                f"{target} is not a civt-pipe checkpoint: it contains pickled code ({code}); "
                "refusing to load it"
            ) from None
        raise UserError(
            f"{target} is not a readable checkpoint (damaged, or not written by torch.save)"
        ) from None
    except Exception as err:  # a damaged file can make the unpickler raise almost anything
        raise UserError(f"{target} is not a readable checkpoint ({_reason(err)})") from None


# What torch.save itself pickles around tensors; any other global a pickle names is code that
# unpickling would import and call.
_TENSOR_GLOBALS = ("torch.", "collections.OrderedDict", "_codecs.encode")
_STRING_OPS = frozenset({"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE"})


def pickled_code(path: PathLike) -> str | None:
    """The first global (``module.name``) a pickle file would import beyond tensors, or None.

    Read with :mod:`pickletools` — parsed, never executed. Looks inside torch's zip format
    (``*/data.pkl``) and at every pickle of a plain or legacy file.
    """
    import io
    import pickletools
    import zipfile

    target = Path(path)
    if zipfile.is_zipfile(target):
        with zipfile.ZipFile(target) as archive:
            pickles = [n for n in archive.namelist() if n.endswith("data.pkl")]
            data = archive.read(pickles[0]) if pickles else b""
    else:
        data = target.read_bytes()
    stream = io.BytesIO(data)
    while stream.tell() < len(data):
        strings: list[str] = []
        try:
            for opcode, arg, _ in pickletools.genops(stream):
                if opcode.name in _STRING_OPS:
                    strings.append(str(arg))
                    continue
                if opcode.name == "GLOBAL":
                    name = str(arg).replace(" ", ".")
                elif opcode.name == "STACK_GLOBAL":
                    name = ".".join(strings[-2:]) if len(strings) >= 2 else "an unnamed global"
                else:
                    continue
                if not name.startswith(_TENSOR_GLOBALS):
                    return name
        except Exception:  # not (or no longer) a pickle: raw storage bytes, damage
            return None
    return None


def _reason(err: BaseException) -> str:
    return str(err).strip().splitlines()[0][:120] if str(err).strip() else type(err).__name__


def _validate(obj: dict[str, Any], path: PathLike) -> dict[str, Any]:
    version = obj.get("version")
    if not isinstance(version, int) or version > VERSION:
        raise UserError(
            f"checkpoint {path} has format version {version!r}; "
            f"this civt-pipe reads versions up to {VERSION}"
        )
    missing = [key for key in REQUIRED_KEYS if key not in obj]
    if missing:
        raise UserError(f"checkpoint {path} is incomplete: it lacks {', '.join(missing)}")
    return obj


def load_checkpoint(path: PathLike) -> dict[str, Any]:
    """Load a civt-pipe checkpoint dict; corrupt or foreign files are a :class:`UserError`."""
    obj = _torch_load(path)
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise UserError(f"{path} is not a civt-pipe checkpoint")
    return _validate(obj, path)


def _strip_prefixes(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        for prefix in _WRAPPER_PREFIXES:
            while key.startswith(prefix):
                key = key[len(prefix) :]
        out[key] = value
    return out


def bare_weights(path: PathLike) -> dict[str, Tensor] | None:
    """The tensors of a third-party weight file at ``path`` (loaded weights-only), or None when
    it is a civt-pipe checkpoint; anything else is a :class:`UserError`."""
    obj = _torch_load(path)
    if isinstance(obj, dict) and obj.get("format") == FORMAT:
        return None
    state = _bare_state_dict(obj)
    if state is None:
        raise UserError(f"{path} is neither a civt-pipe checkpoint nor a state dict")
    return state


def _bare_state_dict(obj: Any) -> dict[str, Tensor] | None:
    """The tensors of a third-party weight file: a state dict, or one under "model"/"state_dict"."""
    if not isinstance(obj, dict) or not obj:
        return None
    if all(isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items()):
        return _strip_prefixes(obj)
    for key in ("model", "state_dict", "model_state"):
        if key in obj:
            return _bare_state_dict(obj[key])
    return None


def adapt_channels(
    state: Mapping[str, Tensor],
    target: Mapping[str, Tensor],
    *,
    src_std: Sequence[float],
    dst_std: Sequence[float],
) -> dict[str, Tensor]:
    """Fit the input-channel axis of ``state`` to the model whose state dict is ``target``.

    Only 4-D weights whose shapes differ in axis 1 alone are touched (the stem / patch embedding).
    C → 1 (RGB weights, grayscale data): ``W' = Σ_c W_c · s'/s_c`` — the channel sum of the
    weights, rescaled so a gray image gives the response the RGB model gives to that image
    replicated over its channels (exactly, when the channel means are equal). 1 → C: ``W/C`` per
    channel, so the RGB model sees the channel average. Normalization buffers come from
    ``target``; they were already adapted when the model was built.
    """
    out = dict(state)
    for key, weight in state.items():
        if key.startswith("normalize.") or key not in target:
            continue
        want = target[key].shape
        if weight.ndim != 4 or len(want) != 4 or weight.shape == want:
            continue
        if weight.shape[0] != want[0] or weight.shape[2:] != want[2:]:
            continue
        src, dst = weight.shape[1], want[1]
        if dst == 1:
            scale = torch.tensor([dst_std[0] / s for s in src_std], dtype=weight.dtype)
            out[key] = (weight * scale.view(1, -1, 1, 1)).sum(dim=1, keepdim=True)
        elif src == 1:
            out[key] = weight.repeat(1, dst, 1, 1) / dst
        else:
            raise UserError(f"cannot adapt weights for {src} input channels to {dst} channels")
    for key in ("normalize.mean", "normalize.std"):
        if key in target:
            out[key] = target[key].clone()
    return out


def _adapted_stats(
    mean: Sequence[float], std: Sequence[float], in_chans: int
) -> tuple[list[float], list[float]]:
    if len(mean) == in_chans:
        return list(mean), list(std)
    if in_chans == 1:
        return [sum(mean) / len(mean)], [sum(std) / len(std)]
    if len(mean) == 1:
        return list(mean) * in_chans, list(std) * in_chans
    raise UserError(f"cannot adapt {len(mean)}-channel normalization to {in_chans} channels")


def _load_strict(model: NormalizedModel, state: Mapping[str, Tensor], path: PathLike) -> None:
    result = model.load_state_dict(state, strict=False)
    problems = []
    if result.missing_keys:
        problems.append(f"missing {', '.join(result.missing_keys[:4])}")
    if result.unexpected_keys:
        problems.append(f"unexpected {', '.join(result.unexpected_keys[:4])}")
    if problems:
        raise UserError(f"{path} does not hold {model.arch} weights: {'; '.join(problems)}")


def _shape_mismatches(state: Mapping[str, Tensor], target: Mapping[str, Tensor]) -> list[str]:
    """Keys whose shapes differ by more than the input-channel axis."""
    bad = []
    for key, value in state.items():
        if key.startswith("normalize.") or key not in target:
            continue
        want = target[key].shape
        same_but_chans = value.ndim == 4 and len(want) == 4 and value.shape[0] == want[0]
        if value.shape != want and not (same_but_chans and value.shape[2:] == want[2:]):
            bad.append(f"{key} {tuple(value.shape)} vs {tuple(want)}")
    return bad


def model_from_checkpoint(
    path: PathLike,
    *,
    device: str | torch.device = "cpu",
    expect_kind: str | None = None,
    expect_num_classes: int | None = None,
    arch: str | None = None,
    in_chans: int | None = None,
    image_size: int | None = None,
) -> tuple[NormalizedModel, dict[str, Any]]:
    """Rebuild the model in ``path`` and load its weights; returns ``(model, meta)``.

    ``meta`` is the checkpoint without ``state_dict`` and ``train_state``, its ``in_chans``,
    ``mean``, ``std`` and ``model_args`` describing the returned model. The model is in eval mode.

    Args:
        path: a civt-pipe checkpoint (``torch.save`` or safetensors), or a bare state dict
            (torchvision ``.pth``, or a safetensors file without our metadata) with ``arch``.
        device: where to put the model.
        expect_kind: ``"teacher"`` or ``"student"``; anything else is a :class:`UserError`.
        expect_num_classes: the data's class count; a different classifier is a UserError.
        arch: the architecture the caller expects (required for a bare state dict).
        in_chans: the data's channels; weights for other channels are adapted (3 ↔ 1).
        image_size: input side for a bare state dict (default 224; ignored for our format,
            which records it).
    """
    obj = _torch_load(path)
    if isinstance(obj, dict) and obj.get("format") == FORMAT:
        ckpt = _validate(obj, path)
        model_arch, args = str(ckpt["arch"]), dict(ckpt["model_args"])
        if arch is not None and arch != model_arch:
            raise UserError(f"checkpoint {path} holds a {model_arch}, not a {arch}")
        state = _strip_prefixes(ckpt["state_dict"])
        meta = {k: v for k, v in ckpt.items() if k not in ("state_dict", "train_state")}
    else:
        state_or_none = _bare_state_dict(obj)
        if state_or_none is None:
            raise UserError(f"{path} is neither a civt-pipe checkpoint nor a state dict")
        if arch is None:
            raise UserError(f"{path} holds bare weights; give the architecture it belongs to")
        zoo = next((m for m in ZOO_KEYMAPS if m.recognises(state_or_none)), None)
        if zoo is not None:
            state_or_none = zoo.translate(state_or_none, arch, path)
        model_arch, state = arch, state_or_none
        args = _bare_model_args(arch, state, path, image_size)
        meta = {
            "format": "state_dict",
            "version": VERSION,
            "kind": "teacher",
            "arch": arch,
            "class_names": None,
            "metrics": {},
            "config": {},
        }
        if zoo is not None:
            meta["pretrained_cfg"] = dict(zoo.eval_config)
    if zoo_timm.is_timm(model_arch):
        meta.setdefault("pretrained_cfg", zoo_timm.pretrained_config(model_arch))
    kind = get_preset(model_arch).kind
    if expect_kind is not None and kind != expect_kind:
        raise UserError(
            f"checkpoint {path} holds a {kind} ({model_arch}), expected a {expect_kind}"
        )
    num_classes = int(args["num_classes"])
    if expect_num_classes is not None and num_classes != expect_num_classes:
        raise UserError(
            f"checkpoint {path} has {num_classes} classes but the data has {expect_num_classes}"
        )
    src_std = list(args["std"])
    if in_chans is not None and in_chans != args["in_chans"]:
        args["mean"], args["std"] = _adapted_stats(args["mean"], args["std"], in_chans)
        meta["adapted_from_in_chans"] = args["in_chans"]
        args["in_chans"] = in_chans
    model = create_model(model_arch, **_legacy_args(model_arch, args))
    target = model.state_dict()
    bad = _shape_mismatches(state, target)
    if bad:
        raise UserError(f"{path} does not fit {model_arch}: {'; '.join(bad[:3])}")
    state = adapt_channels(state, target, src_std=src_std, dst_std=args["std"])
    _load_strict(model, state, path)
    meta.update(
        kind=kind,
        model_args=dict(model.model_args),
        num_classes=num_classes,
        image_size=model.model_args["image_size"],
        in_chans=model.model_args["in_chans"],
        mean=list(model.model_args["mean"]),
        std=list(model.model_args["std"]),
    )
    return model.to(device).eval(), meta


def _legacy_args(arch: str, args: dict[str, Any]) -> dict[str, Any]:
    """``model_args`` of a checkpoint written before presets declared their own options.

    Those record ``small_input`` for every student, though only ResNet-10 reads it; for CivT and
    Mixer the value never changed the model, so it is dropped rather than refused. (Options
    they recorded as ``None`` take their default in :func:`.factory.create_model`.)
    """
    accepted = accepted_arguments(arch)
    return {k: v for k, v in args.items() if k in accepted or k not in _LEGACY_OPTIONS}


def _bare_model_args(
    arch: str, state: dict[str, Tensor], path: PathLike, image_size: int | None
) -> dict[str, Any]:
    """Registry arguments matching a bare teacher state dict (keys get our ``body.`` prefix)."""
    if get_preset(arch).kind != "teacher":
        raise UserError(f"bare weights can only be loaded for teachers, and {arch} is a student")
    if not any(k.startswith("body.") for k in state):
        prefixed = {f"body.{k}": v for k, v in state.items()}
        state.clear()
        state.update(prefixed)
    classifiers, stems, default_size = _CLASSIFIER_KEYS, _STEM_KEYS, 224
    if zoo_timm.is_timm(arch):
        cfg = zoo_timm.pretrained_config(arch)
        head = cfg.get("classifier")
        head = head[0] if isinstance(head, list) else head  # distilled models: two heads
        classifiers, stems = (f"body.{head}.weight",), (f"body.{cfg.get('first_conv')}.weight",)
        default_size = int((cfg.get("input_size") or [3, 224, 224])[-1])
    fc = next((state[k] for k in classifiers if k in state), None)
    stem = next((state[k] for k in stems if k in state), None)
    if stem is None and not zoo_timm.is_timm(arch):
        stem = next((v for v in state.values() if v.ndim == 4), None)
    if fc is None or fc.ndim != 2 or stem is None:
        raise UserError(
            f"{path} does not hold {arch} weights (no classifier {classifiers[0][5:]!r} or stem)"
        )
    src_chans, size = int(stem.shape[1]), image_size or default_size
    num_classes = int(fc.shape[0])
    # The file decides the stem: a torchvision 7×7 stem stays one even on small images.
    takes_small = "small_input" in get_preset(arch).parameters
    for small in (size <= 64, size > 64) if takes_small else (None,):
        candidate = create_model(
            arch, num_classes=num_classes, in_chans=src_chans, image_size=size, small_input=small
        )
        if zoo_timm.is_timm(arch):
            # timm's own checkpoint filter (e.g. a ViT's position embeddings resampled to size).
            _replace(state, zoo_timm.filter_state(arch, _unprefixed(state), candidate.body))
        if not _shape_mismatches(state, candidate.state_dict()):
            args = dict(candidate.model_args)
            if "normalize.mean" not in state:
                state["normalize.mean"] = candidate.normalize.mean.clone()
                state["normalize.std"] = candidate.normalize.std.clone()
            else:
                args["mean"] = state["normalize.mean"].flatten().tolist()
                args["std"] = state["normalize.std"].flatten().tolist()
            return args
    bad = _shape_mismatches(state, candidate.state_dict())
    raise UserError(f"{path} does not fit {arch}: {'; '.join(bad[:3])}")


def _unprefixed(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    return {k[len("body.") :]: v for k, v in state.items() if k.startswith("body.")}


def _replace(state: dict[str, Tensor], body: Mapping[str, Tensor]) -> None:
    """Make ``state`` the body weights ``body`` (prefixed), keeping its normalization."""
    norm = {k: v for k, v in state.items() if k.startswith("normalize.")}
    state.clear()
    state.update({f"body.{k}": v for k, v in body.items()}, **norm)
