"""``civt-pipe train-cakd``: distil a live ViT teacher into a CNN student (Liu et al., ACCV 2022).

The student trains in the one loop (:func:`..train.loop.fit`) on the one stream (crop/flip views
keyed by ``(seed, epoch, key)``, as ``train-teacher`` draws them); the teacher runs live on the
same views, frozen. Three methods share everything else:

- ``none``: cross-entropy on the labels;
- ``logit``: Hinton KD, ``(1 - α)·CE + α·τ²·KL(σ(z_T/τ) ‖ σ(z_S/τ))``;
- ``cakd``: ``L_proj1 + L_proj2 + λ·L_MVG + CE`` (paper Eq. 10 plus the CE, our addition: the
  paper's students train from scratch yet its Eq. 10 has no label term). The PCA and GL
  projectors (:mod:`..cakd.projectors`) map the student's last feature map into the teacher's
  attention and token spaces; with ``--multi-view`` the student sees a transformed view
  (:func:`..cakd.adversary.multi_view`) while the teacher sees the clean one, and a
  discriminator (:mod:`..cakd.adversary`) tells teacher tokens from projected student tokens.

The student optimizer trains the student and both projectors; the discriminator has its own
Adam optimizer (constant rate, ``--disc-lr``) that steps on every
:data:`..cakd.adversary.DISCRIMINATOR_EVERY`-th global step only, before that step's student
update (``L_MAD`` on the detached projected tokens; ``L_MVG`` then sees the updated
discriminator, whose parameters take no gradient from it).

The trainee, the discriminator trainer and the step live in :mod:`...cakd.training`; this stage
is one spec of the training skeleton (:mod:`...train.skeleton`), which writes the one run
directory: ``last.pt`` (resumable: the student in the checkpoint format, ``train_state`` with the
student optimizer and, under ``"cakd"``, the projectors, the discriminator and its optimizer),
``final.pt`` + ``final.safetensors`` (the finished student alone: ``evaluate`` reads it),
``metrics.jsonl`` and ``config.json`` (every setting with its source).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ...augment.config import crop_flip, crop_flip_defaults
from ...cakd.adversary import DISCRIMINATOR_EVERY, Discriminator, MultiViewConfig
from ...cakd.features import StudentTap, ViTFeatureTap
from ...cakd.projectors import Projectors
from ...cakd.training import CakdExtraState, CakdStep, CakdTrainee, DiscriminatorTrainer
from ...models.factory import count_parameters, create_model
from ...replay.online_teachers import OnlineTeachers, load_online_teachers
from ...runtime.console import info
from ...train.loop import EpochSummary, FitResult, StepResult, epoch_record
from ...train.skeleton import Optimization, RunEnv, RunPlan, fresh_views, run_training
from .config import CakdTrainConfig, ResolvedOptimization, resolve_optimization

# ------------------------------------------------------------------------------------ the task


@dataclass(kw_only=True)
class _CakdTask:
    """train-cakd's part of :func:`..train.loop.fit`."""

    batches_of: Callable[[int, int], Iterable[tuple[Tensor, Tensor]]]
    cakd_step: CakdStep
    env: RunEnv
    image_size: int
    val_batch_size: int

    def batches(self, epoch: int, start_step: int) -> Iterable[tuple[Tensor, Tensor]]:
        return self.batches_of(epoch, start_step)

    def step(self, model: nn.Module, batch: tuple[Tensor, Tensor]) -> StepResult:
        return self.cakd_step(model, batch)

    def validate(self, model: nn.Module) -> dict[str, float]:
        assert isinstance(model, CakdTrainee)
        val = self.env.validate(
            model.student, image_size=self.image_size, batch_size=self.val_batch_size
        )
        return {} if val is None else {"top1": float(val["top1"]), "top5": float(val["top5"])}

    def checkpoint_metrics(self, summary: EpochSummary | None) -> dict[str, Any]:
        return epoch_record(summary) if summary is not None else {}


# ------------------------------------------------------------------------------------- the run


def train_cakd(
    cfg: CakdTrainConfig,
    *,
    on_epoch_end: Callable[[int, dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Train (or resume) a CNN student from a live ViT teacher through the one skeleton.

    Args:
        cfg: the run's configuration.
        on_epoch_end: called on every rank with (finished epochs, epoch record) after that
            epoch's checkpoint is on disk (tests that simulate an interruption).
    """
    return run_training(_CakdSpec(cfg), cfg, workers=cfg.workers, on_epoch_end=on_epoch_end)


@dataclass(frozen=True, kw_only=True)
class _Bound:
    opt: ResolvedOptimization
    online: OnlineTeachers
    teacher_tap: ViTFeatureTap | None
    """The teacher's features (method cakd)."""
    seed: int


@dataclass(frozen=True)
class _CakdSpec:
    """train-cakd's part of the skeleton: a live ViT teacher, the student and its projectors."""

    cfg: CakdTrainConfig
    command: str = "train-cakd"

    def bind(self, env: RunEnv) -> _Bound:
        index = env.train_set.index
        online = load_online_teachers(
            [self.cfg.teacher],
            env.device,
            num_classes=index.num_classes,
            in_chans=index.channels,
            image_size=self.cfg.image_size,
        )
        opt = resolve_optimization(self.cfg, env.ctx.world_size)
        teacher = next(iter(online.models.values()))
        tap = ViTFeatureTap(teacher, block=self.cfg.block) if self.cfg.method == "cakd" else None
        return _Bound(opt=opt, online=online, teacher_tap=tap, seed=self.cfg.seed)

    def build(self, env: RunEnv, bound: _Bound) -> RunPlan:
        cfg, opt, index = self.cfg, bound.opt, env.train_set.index
        teacher_name, teacher = next(iter(bound.online.models.items()))
        image_size = bound.online.image_size
        teacher_tap = bound.teacher_tap
        student = create_model(
            cfg.model,
            num_classes=index.num_classes,
            in_chans=index.channels,
            image_size=image_size,
            mean=index.mean,
            std=index.std,
        )
        student_tap = StudentTap(
            student,
            in_chans=index.channels,
            image_size=image_size,
            grid=teacher_tap.grid if teacher_tap is not None else None,
            layer=cfg.student_layer,
        )
        if teacher_tap is not None and student_tap.resized:
            info(
                f"student map {student_tap.module_name} is {student_tap.grid[0]}×"
                f"{student_tap.grid[1]}, no layer of {cfg.model} is on the teacher's "
                f"{teacher_tap.grid[0]}×{teacher_tap.grid[1]} grid: the projectors resize it"
            )
        extra = _adversarial_parts(cfg, env, student_tap, teacher_tap)
        trainee = CakdTrainee(student, student_tap, extra.projectors).to(env.device)
        # The one stream, as train-teacher draws it: crop/flip views keyed by (seed, epoch, key).
        native = max(index.image_size) if index.image_size is not None else image_size
        min_scale, hflip = crop_flip_defaults(image_size, native)
        augment = dataclasses.replace(
            crop_flip(image_size),
            scale=(cfg.min_scale if cfg.min_scale is not None else min_scale, 1.0),
            hflip=cfg.hflip if cfg.hflip is not None else hflip,
        )
        stream = fresh_views(env, augment, cfg.seed, opt.batch_size, cfg.shuffle_buffer)
        steps_per_epoch = stream.steps_per_epoch
        task = _CakdTask(
            batches_of=stream.batches,
            cakd_step=CakdStep(
                method=cfg.method,
                teacher=teacher,
                device=env.device,
                teacher_tap=teacher_tap,
                feature_norm=cfg.feature_norm,
                discriminator=extra.discriminator,
                views=_views(cfg, teacher_tap) if extra.discriminator else None,
                lambda_mvg=cfg.lambda_mvg,
                tau=cfg.tau,
                alpha=cfg.alpha,
                label_smoothing=cfg.label_smoothing,
            ),
            env=env,
            image_size=image_size,
            val_batch_size=max(opt.batch_size, 64),
        )
        arch = bound.online.archs[teacher_name]
        return RunPlan(
            model=trainee,
            task=task,
            steps_per_epoch=steps_per_epoch,
            optimization=Optimization(
                epochs=opt.epochs,
                optimizer=opt.optimizer,
                lr=opt.lr,
                weight_decay=opt.weight_decay,
                warmup_epochs=opt.warmup_epochs,
                milestones=opt.milestones,
                nesterov=opt.nesterov,
            ),
            kind=student.kind,
            class_names=list(index.class_names),
            config=json.loads(json.dumps(cfg.to_dict())),
            config_type=CakdTrainConfig,
            identity={
                "data_fingerprint": env.train_set.fingerprint(),
                "teacher_arch": arch,
                "teacher_sha256": bound.online.checkpoint_sha256[teacher_name],
                "image_size": image_size,
                "augment": augment.to_dict(),
                "optimization": opt.to_dict(),
                "steps_per_epoch": steps_per_epoch,
            },
            provenance=opt.provenance,
            description=f"train-cakd {cfg.method}",
            banner=(
                f"{cfg.method}: {cfg.model} ({count_parameters(student) / 1e6:.2f} M) from "
                f"{arch}, {index.num_samples} images at {image_size} px; {opt.epochs} epochs × "
                f"{steps_per_epoch} steps, {opt.optimizer} lr {opt.lr:.3g}, "
                f"batch {opt.batch_size} per rank"
            ),
            log_every=cfg.log_every,
            progress=cfg.progress,
            saved=_student_of,
            extra_state=extra,
            extra_key="cakd",
        )

    def summary(self, env: RunEnv, bound: _Bound, plan: RunPlan, result: FitResult) -> dict:
        last = result.last_epoch
        return {"method": self.cfg.method, "loss": last.mean if last is not None else {}}


def _student_of(trainee: nn.Module) -> nn.Module:
    """What the checkpoints hold: the student alone (last.pt keeps the rest in train_state)."""
    assert isinstance(trainee, CakdTrainee)
    return trainee.student


def _adversarial_parts(
    cfg: CakdTrainConfig,
    env: RunEnv,
    student_tap: StudentTap,
    teacher_tap: ViTFeatureTap | None,
) -> CakdExtraState:
    """Method cakd: the PCA and GL projectors and, with ``--multi-view``, the discriminator."""
    if teacher_tap is None:
        return CakdExtraState(projectors=None, discriminator=None)
    projectors = Projectors.build(
        cfg.projectors,
        in_channels=student_tap.channels,
        dim=teacher_tap.dim,
        num_heads=teacher_tap.num_heads,
        grid=teacher_tap.grid,
        replace_p=cfg.replace_p,
        group=cfg.gl_group,
        dropout=cfg.gl_dropout,
    )
    discriminator = None
    if cfg.multi_view:
        net = Discriminator(teacher_tap.dim, cfg.disc_widths).to(env.device)
        net.requires_grad_(False)
        discriminator = DiscriminatorTrainer(
            net=net,
            # Adam with β1 = 0.5, the usual choice for adversarial training (DCGAN).
            optimizer=torch.optim.Adam(net.parameters(), lr=cfg.disc_lr, betas=(0.5, 0.999)),
            every=DISCRIMINATOR_EVERY,
            world_size=env.ctx.world_size,
        )
    return CakdExtraState(projectors=projectors, discriminator=discriminator)


def _views(cfg: CakdTrainConfig, teacher_tap: ViTFeatureTap | None) -> MultiViewConfig:
    """The multi-view generator's settings from the options; the patch mask masks whole
    patches of the teacher ("patch-wise" at any resolution)."""
    assert teacher_tap is not None
    return MultiViewConfig(
        p=cfg.view_p,
        jitter=cfg.view_jitter,
        crop_scale=(cfg.view_crop, 1.0),
        rotation=cfg.view_rotation,
        mask_patch=teacher_tap.patch_size,
        mask_ratio=cfg.view_mask_ratio,
        noise_std=cfg.view_noise,
    )
