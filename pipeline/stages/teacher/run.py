"""``civt-pipe train-teacher``: train a CNN or involution teacher on a shard set.

One epoch = every rank streams its share of the shards through crop/flip augmentation keyed by
``(seed, epoch, key)``, runs the same number of steps (DDP under torchrun), and the learning
rate follows warm-up + cosine as a function of the global step. After each epoch rank 0
validates (every rank takes part, the counts are summed), appends one line to the metrics file
and atomically rewrites the checkpoint with the training state, so ``--resume`` continues after
the last finished epoch and ends where an uninterrupted run would.

Files, for ``--out runs/teacher.pt``:

- ``runs/teacher.pt`` — the checkpoint (``pipeline/models/checkpoint.py`` format, kind
  "teacher"); ``metrics`` holds the last epoch's figures and ``val_top1``/``val_top5``;
- ``runs/teacher.metrics.jsonl`` — one JSON object per epoch;
- ``runs/teacher.config.json`` — the resolved configuration (every default filled in).
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..runtime.atomic import append_jsonl, atomic_write_bytes, atomic_write_json
from ..runtime.console import info, make_progress
from ..runtime.errors import UserError
from ..train.schedule import OPTIMIZERS

# ----------------------------------------------------------------------------------- recipes


@dataclass(frozen=True, slots=True)
class Recipe:
    """Default hyper-parameters of an architecture family."""

    optimizer: str
    lr_per_256: float
    """Peak learning rate for a global batch of 256; scaled linearly with the batch."""
    weight_decay: float
    epochs: int
    batch_size: int
    warmup_epochs: float


# ImageNet-scale recipes follow the usual practice (Goyal et al.: SGD, Nesterov, 0.1 per 256
# images; RedNet paper and torchvision references for the decay). The nano presets are tuned
# to reach >= 95 % on the built-in digits in a couple of CPU minutes: AdamW converges in far
# fewer steps than SGD there.
RECIPES: dict[str, Recipe] = {
    "nano": Recipe("adamw", 1.6e-2, 0.05, 15, 64, 1.0),
    "resnet": Recipe("sgd", 0.1, 1e-4, 100, 256, 5.0),
    "rednet": Recipe("sgd", 0.1, 1e-4, 100, 256, 5.0),
    "regnet": Recipe("sgd", 0.1, 5e-5, 100, 256, 5.0),
}


def recipe_family(arch: str) -> str:
    """Which :data:`RECIPES` entry an architecture uses."""
    if arch.endswith("-nano"):
        return "nano"
    for family in ("rednet", "regnet", "resnet"):
        if arch.startswith(family):
            return family
    return "resnet"


# ------------------------------------------------------------------------------------ config


@dataclass(kw_only=True, slots=True)
class TeacherTrainConfig:
    """What ``civt-pipe train-teacher`` runs. ``None`` fields take the architecture's recipe."""

    arch: str
    """A teacher from the model registry (``civt-pipe models``)."""
    data: str
    """Training shards: a directory or a brace pattern."""
    out: Path
    """Checkpoint file to write (metrics and config go beside it)."""
    val: str | None = None
    """Validation shards, evaluated after every epoch."""
    epochs: int | None = None
    batch_size: int | None = None
    """Global batch: split evenly over the ranks under torchrun."""
    lr: float | None = None
    """Peak learning rate (default: the recipe's rate per 256 images × batch / 256)."""
    optimizer: str | None = None
    """``sgd`` (momentum 0.9, Nesterov) or ``adamw``."""
    weight_decay: float | None = None
    warmup_epochs: float | None = None
    label_smoothing: float = 0.1
    image_size: int | None = None
    """Input side (default: 16 for tiny images, native up to 64 px, else 224)."""
    min_scale: float | None = None
    """Smallest crop area (fraction of the image); default 0.08, or 0.35 at 64 px or less."""
    hflip: float | None = None
    """Flip probability; default 0.5, or 0 for images under 16 px (glyphs such as digits)."""
    threads: int | None = None
    """Torch CPU threads (default: this rank's cores minus one per DataLoader worker)."""
    seed: int = 0
    """Seeds the weights, the augmentation (keyed by epoch and sample) and the shuffle."""
    workers: int = 1
    """DataLoader worker processes per rank (0 = decode in the training process)."""
    shuffle_buffer: int = 1024
    device: str = "auto"
    resume: bool = False
    """Continue from ``out`` if it exists (same arch and data), else start afresh."""
    overwrite: bool = False
    """Replace an existing ``out`` and its metrics instead of refusing."""
    init: Path | None = None
    """Initial weights: a torchvision weight file or a civt-pipe checkpoint of the same arch."""

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        if self.init is not None:
            self.init = Path(self.init)
        for name in ("epochs", "batch_size", "image_size"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise UserError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
        if self.lr is not None and not self.lr > 0:
            raise UserError(f"--lr must be positive, got {self.lr}")
        if self.optimizer is not None and self.optimizer not in OPTIMIZERS:
            raise UserError(
                f"--optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}"
            )
        if self.weight_decay is not None and self.weight_decay < 0:
            raise UserError(f"--weight-decay must be 0 or more, got {self.weight_decay}")
        if self.warmup_epochs is not None and self.warmup_epochs < 0:
            raise UserError(f"--warmup-epochs must be 0 or more, got {self.warmup_epochs}")
        if not 0 <= self.label_smoothing < 1:
            raise UserError(f"--label-smoothing must lie in [0, 1), got {self.label_smoothing}")
        if self.min_scale is not None and not 0 < self.min_scale <= 1:
            raise UserError(f"--min-scale must lie in (0, 1], got {self.min_scale}")
        if self.hflip is not None and not 0 <= self.hflip <= 1:
            raise UserError(f"--hflip is a probability in [0, 1], got {self.hflip}")
        if self.threads is not None and self.threads < 1:
            raise UserError(f"--threads must be at least 1, got {self.threads}")
        if not 0 <= self.seed < 2**63:
            raise UserError(f"--seed must lie in [0, 2**63), got {self.seed}")
        if self.workers < 0:
            raise UserError(f"--workers must be 0 or more, got {self.workers}")
        if self.resume and self.overwrite:
            raise UserError("--resume and --overwrite contradict each other; pick one")


def metrics_path(out: Path) -> Path:
    """``teacher.pt`` → ``teacher.metrics.jsonl``."""
    return out.with_name(out.stem + ".metrics.jsonl")


def config_path(out: Path) -> Path:
    """``teacher.pt`` → ``teacher.config.json``."""
    return out.with_name(out.stem + ".config.json")


def resolve_config(cfg: TeacherTrainConfig, index: Any, world_size: int) -> dict[str, Any]:
    """Every setting of the run with the recipe's defaults filled in (JSON-ready)."""
    from ..data.streams import default_image_size
    from ..models.registry import get_spec

    spec = get_spec(cfg.arch)
    if spec.kind != "teacher":
        raise UserError(f"{cfg.arch} is a {spec.kind}, not a teacher architecture")
    family = recipe_family(cfg.arch)
    recipe = RECIPES[family]
    batch = cfg.batch_size or recipe.batch_size
    if batch % world_size:
        raise UserError(f"--batch-size {batch} does not split evenly over {world_size} ranks")
    image_size = cfg.image_size or default_image_size(index)
    # Tiny sources (digits are 8 px) are glyphs: a mirrored 2 is no longer a 2.
    native = max(index.image_size) if index.image_size is not None else image_size
    resolved = {
        "arch": cfg.arch,
        "recipe": family,
        "data": cfg.data,
        "val": cfg.val,
        "out": str(cfg.out),
        "epochs": cfg.epochs or recipe.epochs,
        "batch_size": batch,
        "optimizer": cfg.optimizer or recipe.optimizer,
        "lr": cfg.lr if cfg.lr is not None else recipe.lr_per_256 * batch / 256,
        "min_lr": 0.0,
        "weight_decay": cfg.weight_decay if cfg.weight_decay is not None else recipe.weight_decay,
        "warmup_epochs": (
            cfg.warmup_epochs if cfg.warmup_epochs is not None else recipe.warmup_epochs
        ),
        "label_smoothing": cfg.label_smoothing,
        "image_size": image_size,
        "min_scale": cfg.min_scale
        if cfg.min_scale is not None
        else (0.35 if image_size <= 64 else 0.08),
        "hflip": cfg.hflip if cfg.hflip is not None else (0.0 if native < 16 else 0.5),
        "seed": cfg.seed,
        "workers": cfg.workers,
        "shuffle_buffer": cfg.shuffle_buffer,
        "world_size": world_size,
        "init": str(cfg.init) if cfg.init is not None else None,
    }
    return resolved


# ----------------------------------------------------------------------------------- training


def _init_weights(model: nn.Module, path: Path, arch: str, in_chans: int, image_size: int) -> None:
    """Copy every weight of ``path`` whose shape fits ``model`` (a new class count re-inits
    the classifier); the rest is reported."""
    from ..models.checkpoint import model_from_checkpoint

    source, _ = model_from_checkpoint(path, arch=arch, in_chans=in_chans, image_size=image_size)
    target = model.state_dict()
    loaded = {
        k: v for k, v in source.state_dict().items() if k in target and target[k].shape == v.shape
    }
    if not any(k.startswith("body.") for k in loaded):
        raise UserError(f"--init {path}: none of its weights fit {arch}")
    model.load_state_dict(loaded, strict=False)
    skipped = sorted(set(target) - set(loaded))
    note = f"; kept fresh: {', '.join(skipped[:4])}" if skipped else ""
    info(f"initialized {len(loaded)} tensors from {path}{note}")


def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _truncate_metrics(path: Path, last_epoch: int) -> None:
    """Drop metric lines of epochs after the checkpoint's (written before a crash)."""
    if not path.exists():
        return
    kept = [
        line
        for line in path.read_text(encoding="utf-8").splitlines()
        if line.strip() and json.loads(line).get("epoch", 0) <= last_epoch
    ]
    atomic_write_bytes(path, ("".join(f"{line}\n" for line in kept)).encode())


_RESUME_MUST_MATCH = (
    "epochs",
    "batch_size",
    "optimizer",
    "lr",
    "min_lr",
    "weight_decay",
    "warmup_epochs",
    "label_smoothing",
    "image_size",
    "min_scale",
    "hflip",
    "seed",
    "workers",
    "shuffle_buffer",
    "world_size",
)


def _check_resumable(ckpt: dict[str, Any], resolved: dict[str, Any], fingerprint: str) -> None:
    saved = ckpt.get("config") or {}
    if "train_state" not in ckpt:
        raise UserError(f"{resolved['out']} holds no training state; it cannot be resumed")
    if ckpt.get("arch") != resolved["arch"]:
        raise UserError(
            f"{resolved['out']} holds a {ckpt.get('arch')}, not a {resolved['arch']}; "
            "use another --out or --overwrite"
        )
    if saved.get("data_fingerprint") != fingerprint:
        raise UserError(f"{resolved['out']} was trained on other shards than {resolved['data']}")
    # Everything that changes the weights must match, or the resumed run is not the run it
    # continues (workers too: each loader worker shuffles its own part of the shards).
    for key in _RESUME_MUST_MATCH:
        if saved.get(key) != resolved[key]:
            raise UserError(
                f"cannot resume {resolved['out']} with {key} {resolved[key]} "
                f"(it was trained with {saved.get(key)})"
            )


def train_teacher(
    cfg: TeacherTrainConfig,
    *,
    on_epoch_end: Callable[[int, dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Train (or resume) a teacher; returns the final epoch's metrics and the file paths.

    Args:
        cfg: the run's configuration.
        on_epoch_end: called on every rank with (epoch, metrics) after the checkpoint of that
            epoch is on disk (progress hooks, tests that simulate an interruption).
    """
    from ..runtime.device import cpu_threads, resolve_device

    device = resolve_device(cfg.device)
    with cpu_threads(cfg.threads, cfg.workers, device):
        return _train_teacher(cfg, device, on_epoch_end)


def _train_teacher(
    cfg: TeacherTrainConfig,
    device: torch.device,
    on_epoch_end: Callable[[int, dict[str, Any]], None] | None,
) -> dict[str, Any]:
    from ..augment.config import crop_flip
    from ..data.shard_set import resolve_shards
    from ..data.streams import TrainStream, TrainStreamConfig, make_loader
    from ..models.checkpoint import (
        load_checkpoint,
        make_checkpoint,
        save_checkpoint,
    )
    from ..models.registry import build_teacher, count_parameters
    from ..runtime.distributed import barrier, init_distributed, shutdown
    from ..train.schedule import (
        OptimizerConfig,
        ScheduleConfig,
        build_optimizer,
        lr_at,
        set_lr,
    )
    from .evaluate import evaluate_model

    train_set = resolve_shards(cfg.data)
    val_set = resolve_shards(cfg.val) if cfg.val is not None else None
    if val_set is not None and val_set.num_classes != train_set.num_classes:
        raise UserError(
            f"validation shards have {val_set.num_classes} classes, "
            f"training shards {train_set.num_classes}"
        )
    ctx = init_distributed(device)
    try:
        resolved = resolve_config(cfg, train_set.index, ctx.world_size)
        resolved["data_fingerprint"] = train_set.fingerprint()
        index = train_set.index
        out, metrics_file = cfg.out, metrics_path(cfg.out)
        resuming = cfg.resume and out.exists()
        if out.exists() and not (cfg.resume or cfg.overwrite):
            raise UserError(f"{out} exists; pass --resume to continue it or --overwrite")

        torch.manual_seed(cfg.seed)
        image_size = int(resolved["image_size"])
        model = build_teacher(
            cfg.arch,
            num_classes=index.num_classes,
            in_chans=index.channels,
            image_size=image_size,
            mean=index.mean,
            std=index.std,
        )
        if cfg.init is not None and not resuming:
            _init_weights(model, cfg.init, cfg.arch, index.channels, image_size)
        model.to(device)

        augment = dataclasses.replace(
            crop_flip(image_size),
            scale=(float(resolved["min_scale"]), 1.0),
            hflip=float(resolved["hflip"]),
        )
        stream = TrainStream(
            train_set,
            augment,
            TrainStreamConfig(
                batch_size=resolved["batch_size"] // ctx.world_size,
                seed=cfg.seed,
                shuffle_buffer=cfg.shuffle_buffer,
                rank=ctx.rank,
                world_size=ctx.world_size,
            ),
            workers=cfg.workers,
        )
        steps_per_epoch = stream.steps()
        epochs = int(resolved["epochs"])
        schedule = ScheduleConfig(
            base_lr=float(resolved["lr"]),
            total_steps=steps_per_epoch * epochs,
            warmup_steps=min(
                steps_per_epoch * epochs, round(float(resolved["warmup_epochs"]) * steps_per_epoch)
            ),
            min_lr=float(resolved["min_lr"]),
        )
        optimizer = build_optimizer(
            model,
            OptimizerConfig(
                name=resolved["optimizer"],
                lr=schedule.base_lr,
                weight_decay=float(resolved["weight_decay"]),
            ),
        )
        resolved["augment"] = augment.to_dict()
        resolved["steps_per_epoch"] = steps_per_epoch

        start_epoch, step = 0, 0
        last_metrics: dict[str, Any] = {}
        if resuming:
            ckpt = load_checkpoint(out)
            _check_resumable(ckpt, resolved, resolved["data_fingerprint"])
            model.load_state_dict(ckpt["state_dict"])
            state = ckpt["train_state"]
            optimizer.load_state_dict(state["optimizer"])
            start_epoch, step = int(state["epoch"]), int(state["step"])
            _set_rng_state(state["rng"])
            last_metrics = dict(ckpt.get("metrics") or {})
            if ctx.is_main:
                _truncate_metrics(metrics_file, start_epoch)
                info(f"resuming {out} after epoch {start_epoch}/{epochs}")
        elif ctx.is_main:
            metrics_file.unlink(missing_ok=True)
        if ctx.is_main:
            atomic_write_json(config_path(out), resolved)
            info(
                f"{cfg.arch}: {count_parameters(model) / 1e6:.2f} M parameters, "
                f"{index.num_samples} images of {index.num_classes} classes at {image_size} px; "
                f"{epochs} epochs × {steps_per_epoch} steps, {resolved['optimizer']} "
                f"lr {schedule.base_lr:.3g}, batch {resolved['batch_size']}"
            )

        net: nn.Module = model
        if ctx.is_distributed:
            net = nn.parallel.DistributedDataParallel(
                model, device_ids=[device.index] if device.type == "cuda" else None
            )
        loader = make_loader(stream, workers=cfg.workers)
        started = time.perf_counter()

        with make_progress(disable=not ctx.is_main) as progress:
            for epoch in range(start_epoch, epochs):
                stream.set_epoch(epoch)
                net.train()
                task = progress.add_task(
                    f"epoch {epoch + 1}/{epochs}",
                    total=steps_per_epoch * resolved["batch_size"],
                    unit="img",
                )
                sums = torch.zeros(3, dtype=torch.float64, device=device)  # loss, correct, n
                epoch_start = time.perf_counter()
                for images, labels in loader:
                    lr = lr_at(step, schedule)
                    set_lr(optimizer, lr)
                    images = images.to(device, non_blocking=True)
                    labels = labels.to(device, non_blocking=True)
                    logits = net(images)
                    loss = F.cross_entropy(logits, labels, label_smoothing=cfg.label_smoothing)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    step += 1
                    with torch.no_grad():
                        n = labels.shape[0]
                        sums += torch.stack(
                            [
                                loss.detach().double() * n,
                                (logits.argmax(1) == labels).sum().double(),
                                torch.tensor(n, dtype=torch.float64, device=device),
                            ]
                        )
                    progress.update(
                        task,
                        advance=n * ctx.world_size,
                        info=f"loss {loss.item():.3f} lr {lr:.2e}",
                    )
                progress.remove_task(task)
                if ctx.is_distributed:
                    torch.distributed.all_reduce(sums)
                seconds = time.perf_counter() - epoch_start
                loss_sum, correct, count = sums.tolist()
                last_metrics = {
                    "epoch": epoch + 1,
                    "step": step,
                    "lr": lr_at(max(step - 1, 0), schedule),
                    "train_loss": loss_sum / max(count, 1),
                    "train_top1": correct / max(count, 1),
                    "images_per_s": count / max(seconds, 1e-9),
                    "epoch_seconds": seconds,
                }
                if val_set is not None:
                    val = evaluate_model(
                        model,
                        val_set,
                        image_size=image_size,
                        batch_size=max(resolved["batch_size"] // ctx.world_size, 64),
                        device=device,
                        workers=cfg.workers,
                        ctx=ctx,
                        description="validate",
                    )
                    last_metrics["val_top1"] = val["top1"]
                    last_metrics["val_top5"] = val["top5"]
                if ctx.is_main:
                    append_jsonl(metrics_file, last_metrics)
                    ckpt = make_checkpoint(
                        model,
                        class_names=index.class_names,
                        metrics=last_metrics,
                        config=resolved,
                        train_state={
                            "epoch": epoch + 1,
                            "step": step,
                            "optimizer": optimizer.state_dict(),
                            "rng": _rng_state(),
                        },
                    )
                    save_checkpoint(out, ckpt)
                    info(_epoch_line(last_metrics, epochs))
                barrier(ctx)
                if on_epoch_end is not None:
                    on_epoch_end(epoch + 1, last_metrics)
        return {
            "checkpoint": str(out),
            "metrics_file": str(metrics_file),
            "config_file": str(config_path(out)),
            "arch": cfg.arch,
            "rank": ctx.rank,
            "epochs": epochs,
            "seconds": time.perf_counter() - started,
            **{k: v for k, v in last_metrics.items() if k not in ("epoch_seconds",)},
        }
    finally:
        shutdown(ctx)


def _epoch_line(m: dict[str, Any], epochs: int) -> str:
    val = f" val top-1 {m['val_top1']:.2%}" if "val_top1" in m else ""
    return (
        f"epoch {m['epoch']}/{epochs}: loss {m['train_loss']:.4f} "
        f"train top-1 {m['train_top1']:.2%}{val} lr {m['lr']:.2e} "
        f"{m['images_per_s']:,.0f} img/s ({m['epoch_seconds']:.1f} s)"
    )
