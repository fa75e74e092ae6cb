"""``civt-pipe train-teacher``: train a CNN or involution teacher on a shard set.

One epoch = every rank streams its share of the shards through crop/flip augmentation keyed by
``(seed, epoch, key)``, runs the same number of steps (DDP under torchrun), and the learning
rate follows warm-up + cosine as a function of the global step — the one training loop
(:func:`..train.loop.fit`) with a :class:`..train.steps.ClassificationStep`. After each epoch
every rank validates (the counts are summed), rank 0 appends one line to the metrics file and
atomically rewrites the checkpoint with the training state, so ``--resume`` continues after
the last finished epoch and ends where an uninterrupted run would.

Files, for ``--out runs/teacher.pt``:

- ``runs/teacher.pt`` — the checkpoint (``pipeline/models/checkpoint.py`` format, kind
  "teacher"); ``metrics`` holds the last epoch's figures and ``val_top1``/``val_top5``;
- ``runs/teacher.safetensors`` — the finished teacher's weights and metadata, no training state;
- ``runs/teacher.metrics.jsonl`` — one JSON object per epoch;
- ``runs/teacher.config.json`` — the resolved configuration (every default filled in).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ...runtime.atomic import atomic_write_json, check_output_file
from ...runtime.console import info
from ...runtime.distributed import DistContext
from ...runtime.errors import UserError
from ...runtime.options import check_resumable
from ...runtime.precision import PrecisionPolicy
from ...train.loop import EpochSummary, StepResult
from ...train.steps import ClassificationStep
from .config import (
    ResolvedTeacherConfig,
    TeacherTrainConfig,
    config_path,
    metrics_path,
    resolve_config,
    tensorboard_path,
)

# ----------------------------------------------------------------------------------- training


def _init_weights(model: nn.Module, path: Path, arch: str, in_chans: int, image_size: int) -> None:
    """Copy every weight of ``path`` whose shape fits ``model`` (a new class count re-inits
    the classifier); the rest is reported."""
    from ...models.checkpoint import model_from_checkpoint

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


@dataclass(kw_only=True)
class _TeacherTask:
    """train-teacher's part of :func:`..train.loop.fit`: crop/flip views, cross-entropy,
    top-1/top-5 on ``--val``, one metrics line per epoch."""

    batches_of: Callable[[int, int], Iterable[tuple[torch.Tensor, torch.Tensor]]]
    classify: ClassificationStep
    val_set: Any
    image_size: int
    val_batch_size: int
    workers: int
    ctx: DistContext
    device: torch.device
    precision: PrecisionPolicy

    def batches(self, epoch: int, start_step: int) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
        return self.batches_of(epoch, start_step)

    def step(self, model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> StepResult:
        return self.classify(model, batch)

    def validate(self, model: nn.Module) -> dict[str, float]:
        if self.val_set is None:
            return {}
        from ...train.validate import evaluate_model

        val = evaluate_model(
            model,
            self.val_set,
            image_size=self.image_size,
            batch_size=self.val_batch_size,
            device=self.device,
            workers=self.workers,
            ctx=self.ctx,
            description="validate",
            precision=self.precision,
        )
        return {"top1": float(val["top1"]), "top5": float(val["top5"])}

    def epoch_record(self, summary: EpochSummary) -> dict[str, Any]:
        record: dict[str, Any] = {
            "epoch": summary.epoch + 1,
            "step": summary.global_step,
            "lr": summary.lr,
            "train_loss": summary.mean.get("loss", float("nan")),
            "train_top1": summary.mean.get("top1", float("nan")),
            "images_per_s": summary.images / max(summary.seconds, 1e-9),
            "epoch_seconds": summary.seconds,
        }
        record.update({f"val_{k}": v for k, v in summary.val.items()})
        return record

    def checkpoint_metrics(self, summary: EpochSummary | None) -> dict[str, Any]:
        # The checkpoint carries the last epoch's figures (quickstart and evaluate show them).
        return self.epoch_record(summary) if summary is not None else {}


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
    from ...runtime.device import cpu_threads, resolve_device
    from ...runtime.precision import check_compile

    device = resolve_device(cfg.device)
    policy = PrecisionPolicy.resolve(cfg.precision, device)
    if cfg.compile:
        check_compile(device)
    with cpu_threads(cfg.threads, cfg.workers, device):
        return _train_teacher(cfg, device, policy, on_epoch_end)


def _train_teacher(
    cfg: TeacherTrainConfig,
    device: torch.device,
    policy: PrecisionPolicy,
    on_epoch_end: Callable[[int, dict[str, Any]], None] | None,
) -> dict[str, Any]:
    from ...augment.config import crop_flip
    from ...data.planning import shard_rows_for
    from ...data.shard_set import check_same_classes, resolve_complete_shards
    from ...models.checkpoint import (
        load_checkpoint,
        make_checkpoint,
        save_safetensors,
        weights_file,
    )
    from ...models.factory import count_parameters, create_model, is_convolutional
    from ...replay.segments import FreshViews, ViewSource
    from ...runtime.distributed import init_distributed, shutdown
    from ...runtime.precision import prepare_model
    from ...train.checkpointer import Checkpointer
    from ...train.loop import LoopConfig, fit
    from ...train.schedule import OptimizerConfig, ScheduleConfig, build_optimizer

    check_output_file(cfg.out)
    train_set = resolve_complete_shards(cfg.data)
    val_set = resolve_complete_shards(cfg.val) if cfg.val is not None else None
    if val_set is not None:
        check_same_classes(val_set, train_set)
    ctx = init_distributed(device)
    try:
        resolved = resolve_config(cfg, train_set.index, ctx.world_size, policy.precision)
        index = train_set.index
        out, metrics_file = cfg.out, metrics_path(cfg.out)
        if cfg.resume:
            check_resumable(out)
        resuming = cfg.resume
        if out.exists() and not (cfg.resume or cfg.overwrite):
            raise UserError(f"{out} exists; pass --resume to continue it or --overwrite")

        torch.manual_seed(cfg.seed)
        image_size = resolved.image_size
        model = create_model(
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
        # Channels-last in place (CUDA); the loop compiles its steps itself (LoopConfig.compile).
        convolutional = is_convolutional(cfg.arch)
        prepare_model(model, device, convolutional=convolutional, compile=False)

        augment = dataclasses.replace(
            crop_flip(image_size),
            scale=(resolved.min_scale, 1.0),
            hflip=resolved.hflip,
        )
        # The one stream: the same planner as train-student (shard order, shuffle, equal
        # steps per rank), fresh unmixed views keyed by (seed, view = epoch, key).
        stream = FreshViews(
            source=ViewSource(
                aug=augment, seed=cfg.seed, num_classes=index.num_classes, channels=index.channels
            ),
            shards=shard_rows_for(train_set.paths, [s.num_samples for s in index.shards]),
            rank=ctx.rank,
            world_size=ctx.world_size,
            batch_size=resolved.batch_size // ctx.world_size,
            shuffle_buffer=cfg.shuffle_buffer,
            workers=cfg.workers,
        )
        steps_per_epoch = stream.steps_per_epoch
        epochs = resolved.epochs
        schedule = ScheduleConfig(
            base_lr=resolved.lr,
            total_steps=steps_per_epoch * epochs,
            warmup_steps=min(
                steps_per_epoch * epochs, round(resolved.warmup_epochs * steps_per_epoch)
            ),
            min_lr=resolved.min_lr,
        )
        optimizer = build_optimizer(
            model,
            OptimizerConfig(
                name=resolved.optimizer,  # type: ignore[arg-type]
                lr=schedule.base_lr,
                weight_decay=resolved.weight_decay,
            ),
        )
        # Derived facts beside the resolved settings: all must match on resume. The config
        # file and the checkpoint record both (older runs recorded them in the config only).
        identity = {
            "data_fingerprint": train_set.fingerprint(),
            "augment": augment.to_dict(),
            "steps_per_epoch": steps_per_epoch,
        }
        config = {**resolved.to_dict(), **identity}
        checkpointer = Checkpointer(
            path=out,
            make=lambda net, state, metrics: make_checkpoint(
                net,  # type: ignore[arg-type]
                class_names=index.class_names,
                metrics=metrics,
                config=config,
                train_state=state,
            ),
            kind="teacher",
            command="train-teacher",
            identity=identity,
            schedule=dataclasses.asdict(schedule),
            is_main=ctx.is_main,
        )
        resume_from = None
        last_metrics: dict[str, Any] = {}
        if resuming:
            point = checkpointer.load()
            checkpointer.check(point, ResolvedTeacherConfig, resolved.to_dict())
            resume_from = checkpointer.restore(point, model, optimizer)
            last_metrics = dict(point.checkpoint.get("metrics") or {})
            if ctx.is_main:
                info(f"resuming {out} after epoch {resume_from.epoch}/{epochs}")
        if ctx.is_main:
            atomic_write_json(config_path(out), config)
            info(
                f"{cfg.arch}: {count_parameters(model) / 1e6:.2f} M parameters, "
                f"{index.num_samples} images of {index.num_classes} classes at {image_size} px; "
                f"{epochs} epochs × {steps_per_epoch} steps, {resolved.optimizer} "
                f"lr {schedule.base_lr:.3g}, batch {resolved.batch_size}"
            )

        task = _TeacherTask(
            batches_of=stream.batches,
            classify=ClassificationStep(label_smoothing=cfg.label_smoothing, device=device),
            val_set=val_set,
            image_size=image_size,
            val_batch_size=max(resolved.batch_size // ctx.world_size, 64),
            workers=cfg.workers,
            ctx=ctx,
            device=device,
            precision=policy,
        )
        loop = LoopConfig(
            epochs=epochs,
            steps_per_epoch=steps_per_epoch,
            schedule=schedule,
            seed=cfg.seed,
            metrics_file=metrics_file,
            description=f"train-teacher {cfg.arch}",
            tensorboard=tensorboard_path(out) if cfg.tensorboard else None,
            precision=policy,
            compile=cfg.compile,
        )
        result = fit(
            task,
            model,
            optimizer,
            loop,
            checkpointer,
            ctx=ctx,
            device=device,
            resume_from=resume_from,
            on_epoch_end=on_epoch_end,
        )
        if ctx.is_main:
            # The finished teacher's weights beside it: teacher.pt → teacher.safetensors.
            save_safetensors(weights_file(out), load_checkpoint(out))
        if result.last_epoch is not None:
            last_metrics = task.epoch_record(result.last_epoch)
        return {
            "checkpoint": str(out),
            "weights_file": str(weights_file(out)),
            "metrics_file": str(metrics_file),
            "config_file": str(config_path(out)),
            "arch": cfg.arch,
            "rank": ctx.rank,
            "epochs": epochs,
            "seconds": result.seconds,
            **{k: v for k, v in last_metrics.items() if k not in ("epoch_seconds",)},
        }
    finally:
        shutdown(ctx)
