"""``civt-pipe train-teacher``: train a CNN or involution teacher on a shard set.

One epoch = every rank streams its share of the shards through crop/flip augmentation keyed by
``(seed, epoch, key)``, runs the same number of steps (DDP under torchrun), and the learning
rate follows warm-up + cosine as a function of the global step — the one training loop
(:func:`..train.loop.fit`) with a :class:`..train.steps.ClassificationStep`. After each epoch
every rank validates (the counts are summed), rank 0 appends one line to the metrics file and
atomically rewrites the checkpoint with the training state, so ``--resume`` continues after
the last finished epoch and ends where an uninterrupted run would.

The run is one :class:`_TeacherSpec` of the training skeleton (:mod:`..train.skeleton`), which
writes the one run directory (:mod:`..runtime.run_layout`): ``last.pt`` (resumable),
``final.pt`` (kind "teacher"; ``metrics`` holds the last epoch's figures and
``val_top1``/``val_top5``; what ``--teacher NAME=ARCH:RUN_DIR`` loads), ``final.safetensors``,
``metrics.jsonl`` (one JSON object per epoch) and ``config.json`` (every default filled in).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ...augment.config import crop_flip
from ...models.checkpoint import load_checkpoint
from ...models.factory import count_parameters, create_model, is_convolutional
from ...runtime.console import info
from ...runtime.errors import UserError
from ...runtime.precision import prepare_model
from ...runtime.run_layout import FINAL
from ...train.loop import EpochSummary, FitResult, StepResult, epoch_record
from ...train.recipes import TEACHER_RECIPES
from ...train.skeleton import Optimization, RunEnv, RunPlan, fresh_views, run_training
from ...train.steps import ClassificationStep
from .config import ResolvedTeacherConfig, TeacherTrainConfig, resolve_config

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
    env: RunEnv
    image_size: int
    val_batch_size: int

    def batches(self, epoch: int, start_step: int) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
        return self.batches_of(epoch, start_step)

    def step(self, model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> StepResult:
        return self.classify(model, batch)

    def validate(self, model: nn.Module) -> dict[str, float]:
        val = self.env.validate(model, image_size=self.image_size, batch_size=self.val_batch_size)
        return {} if val is None else {"top1": float(val["top1"]), "top5": float(val["top5"])}

    def checkpoint_metrics(self, summary: EpochSummary | None) -> dict[str, Any]:
        # The checkpoint carries the last epoch's figures (quickstart and evaluate show them).
        return epoch_record(summary) if summary is not None else {}


def train_teacher(
    cfg: TeacherTrainConfig,
    *,
    on_epoch_end: Callable[[int, dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Train (or resume) a teacher through the one skeleton; returns the summary.

    Args:
        cfg: the run's configuration.
        on_epoch_end: called on every rank with (epoch, metrics) after the checkpoint of that
            epoch is on disk (progress hooks, tests that simulate an interruption).
    """
    return run_training(_TeacherSpec(cfg), cfg, workers=cfg.workers, on_epoch_end=on_epoch_end)


@dataclass(frozen=True, kw_only=True)
class _Bound:
    resolved: ResolvedTeacherConfig
    seed: int


@dataclass(frozen=True)
class _TeacherSpec:
    """train-teacher's part of the skeleton: crop/flip views of the shards, cross-entropy."""

    cfg: TeacherTrainConfig
    command: str = "train-teacher"

    def bind(self, env: RunEnv) -> _Bound:
        resolved = resolve_config(
            self.cfg, env.train_set.index, env.ctx.world_size, env.precision.precision
        )
        return _Bound(resolved=resolved, seed=self.cfg.seed)

    def build(self, env: RunEnv, bound: _Bound) -> RunPlan:
        cfg, resolved, index = self.cfg, bound.resolved, env.train_set.index
        image_size = resolved.image_size
        model = create_model(
            cfg.arch,
            num_classes=index.num_classes,
            in_chans=index.channels,
            image_size=image_size,
            mean=index.mean,
            std=index.std,
        )
        if cfg.init is not None and not cfg.resume:
            _init_weights(model, cfg.init, cfg.arch, index.channels, image_size)
        model.to(env.device)
        # Channels-last in place (CUDA); the loop compiles its steps itself (LoopConfig.compile).
        prepare_model(model, env.device, convolutional=is_convolutional(cfg.arch), compile=False)
        augment = dataclasses.replace(
            crop_flip(image_size), scale=(resolved.min_scale, 1.0), hflip=resolved.hflip
        )
        stream = fresh_views(env, augment, cfg.seed, resolved.batch_size, cfg.shuffle_buffer)
        # Derived facts beside the resolved settings: all must match on resume.
        identity = {
            "data_fingerprint": env.train_set.fingerprint(),
            "augment": augment.to_dict(),
            "steps_per_epoch": stream.steps_per_epoch,
        }
        task = _TeacherTask(
            batches_of=stream.batches,
            classify=ClassificationStep(label_smoothing=cfg.label_smoothing, device=env.device),
            env=env,
            image_size=image_size,
            val_batch_size=max(resolved.batch_size, 64),
        )
        return RunPlan(
            model=model,
            task=task,
            steps_per_epoch=stream.steps_per_epoch,
            optimization=Optimization(
                epochs=resolved.epochs,
                optimizer=resolved.optimizer,
                lr=resolved.lr,
                min_lr=resolved.min_lr,
                weight_decay=resolved.weight_decay,
                warmup_epochs=resolved.warmup_epochs,
                nesterov=TEACHER_RECIPES[resolved.recipe].nesterov,
            ),
            kind="teacher",
            class_names=list(index.class_names),
            config={**resolved.to_dict(), **identity},
            config_type=ResolvedTeacherConfig,
            identity=identity,
            description=f"train-teacher {cfg.arch}",
            banner=(
                f"{cfg.arch}: {count_parameters(model) / 1e6:.2f} M parameters, "
                f"{index.num_samples} images of {index.num_classes} classes at {image_size} px; "
                f"{resolved.epochs} epochs × {stream.steps_per_epoch} steps, "
                f"{resolved.optimizer} lr {resolved.lr:.3g}, batch {resolved.batch_size} per rank"
            ),
        )

    def summary(self, env: RunEnv, bound: _Bound, plan: RunPlan, result: FitResult) -> dict:
        last = {}
        if result.last_epoch is not None:
            last = epoch_record(result.last_epoch)
        elif (env.run_dir / FINAL).is_file():  # a resumed finished run: its recorded figures
            last = dict(load_checkpoint(env.run_dir / FINAL).get("metrics") or {})
        return {"checkpoint": str(env.run_dir / FINAL), "arch": self.cfg.arch, **_figures(last)}


def _figures(record: dict[str, Any]) -> dict[str, Any]:
    """train-teacher's JSON figures from its last epoch record: the training loss and top-1 as
    ``train_loss`` and ``train_top1`` (the record's ``loss`` and ``top1``; checkpoints of earlier
    versions recorded them under these names already)."""
    renamed = {"loss": "train_loss", "top1": "train_top1"}
    return {
        renamed.get(key, key): value
        for key, value in record.items()
        if key not in ("kind", "epoch_seconds")
    }
