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

Files in ``--out RUN_DIR``: ``last.pt`` (resumable: the student in the checkpoint format,
``train_state`` with the student optimizer and, under ``"cakd"``, the projectors, the
discriminator and its optimizer), ``student.pt`` (the finished student alone: ``evaluate`` reads
it), ``metrics.jsonl`` and ``config.json`` (every setting with its source).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...cakd.adversary import (
    DISCRIMINATOR_EVERY,
    Discriminator,
    MultiViewConfig,
    discriminator_loss,
    generator_loss,
    multi_view,
)
from ...cakd.features import StudentTap, TeacherFeatures, ViTFeatureTap, standardized
from ...cakd.projectors import PCALosses, Projectors, gl_loss
from ...runtime.console import info
from ...runtime.distributed import DistContext
from ...runtime.errors import UserError
from ...train.loop import EpochSummary, StepResult
from .config import (
    CONFIG,
    FINAL,
    LAST,
    METRICS,
    TENSORBOARD,
    CakdTrainConfig,
    resolve_optimization,
)

# --------------------------------------------------------------------------------- the modules


class CakdTrainee(nn.Module):
    """What the student optimizer trains: the student and, for ``cakd``, the two projectors.

    ``forward(x, teacher)`` runs the student once through its :class:`..cakd.features.
    StudentTap` and returns ``(logits, L_proj1's terms, h'_S)``; a projector output is ``None``
    without that projector (``--projectors``), without projectors (methods ``none`` and
    ``logit``) or without teacher features.
    """

    def __init__(self, student: nn.Module, tap: StudentTap, projectors: Projectors | None) -> None:
        super().__init__()
        self.student = student
        self.tap = tap  # not a module: it only hooks the student
        self.projectors = projectors

    def forward(
        self, x: Tensor, teacher: TeacherFeatures | None = None
    ) -> tuple[Tensor, PCALosses | None, Tensor | None]:
        feature_map, logits = self.tap(x)
        if self.projectors is None or teacher is None:
            return logits, None, None
        pca, projected = self.projectors(feature_map, teacher)
        return logits, pca, projected


@dataclass(kw_only=True)
class DiscriminatorTrainer:
    """The adversary of the multi-view part with its own optimizer and step clock."""

    net: Discriminator
    optimizer: torch.optim.Optimizer
    every: int
    """Update on every ``every``-th global step (1-based: steps ``every``, ``2·every``...)."""
    clock: int = 0
    """Global steps taken so far (restored from the resumed run's ``global_step``)."""
    world_size: int = 1

    def state_dict(self) -> dict[str, Any]:
        """The discriminator's weights and its optimizer (for the resumable checkpoint)."""
        return {"net": self.net.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Put back what :meth:`state_dict` saved."""
        self.net.load_state_dict(state["net"])
        self.optimizer.load_state_dict(state["optimizer"])

    def tick(self, teacher_tokens: Tensor, student_tokens: Tensor) -> Tensor:
        """``L_MAD`` on this step's tokens (the student's detached); on an update step the
        discriminator also learns from it (gradients averaged over the ranks). Returns the loss
        for the records."""
        self.clock += 1
        update = self.clock % self.every == 0
        student_tokens = student_tokens.detach()
        if not update:
            with torch.no_grad():
                return discriminator_loss(self.net, teacher_tokens, student_tokens)
        self.net.requires_grad_(True)
        try:
            loss = discriminator_loss(self.net, teacher_tokens, student_tokens)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if self.world_size > 1:
                for p in self.net.parameters():
                    if p.grad is not None:
                        torch.distributed.all_reduce(p.grad)
                        p.grad /= self.world_size
            self.optimizer.step()
        finally:
            # Frozen between updates: L_MVG passes gradients through it to the student only.
            self.net.requires_grad_(False)
        return loss.detach()


# ------------------------------------------------------------------------------------ the step


@dataclass(kw_only=True)
class CakdStep:
    """One batch of ``train-cakd``: the chosen method's loss on ``(images, labels)``.

    Logs ``loss`` and ``loss_ce`` always, ``loss_kd`` (logit), and for cakd ``loss_proj1`` with
    its terms ``loss_attn`` and ``loss_value`` (PCA projector) and ``loss_proj2`` (GL
    projector), plus ``loss_mvg`` and ``loss_mad`` with the multi-view part.
    """

    method: str
    teacher: nn.Module
    device: torch.device
    teacher_tap: ViTFeatureTap | None = None
    """The teacher's features (method cakd)."""
    feature_norm: bool = True
    """Standardize ``h_T`` and ``V_T`` per token before the projector losses."""
    discriminator: DiscriminatorTrainer | None = None
    """With the multi-view part only."""
    views: MultiViewConfig | None = None
    """The multi-view generator's settings (multi-view part only)."""
    lambda_mvg: float = 1.0
    tau: float = 4.0
    alpha: float = 0.9
    label_smoothing: float = 0.0

    def __call__(self, model: nn.Module, batch: tuple[Tensor, Tensor]) -> StepResult:
        images = batch[0].to(self.device, non_blocking=True)
        labels = batch[1].to(self.device, non_blocking=True)
        terms: dict[str, Tensor] = {}
        if self.method == "none":
            logits = model(images)[0]
            ce = F.cross_entropy(logits, labels, label_smoothing=self.label_smoothing)
            loss = ce
        elif self.method == "logit":
            from ...train.losses import distillation_kl

            with torch.no_grad():
                teacher_logits = self.teacher(images).float()
            logits = model(images)[0]
            ce = F.cross_entropy(logits, labels, label_smoothing=self.label_smoothing)
            kd = distillation_kl(logits, torch.softmax(teacher_logits / self.tau, -1), self.tau)
            loss = (1 - self.alpha) * ce + self.alpha * kd
            terms["loss_kd"] = kd
        else:
            loss, ce, logits = self._cakd(model, images, labels, terms)
        top1 = (logits.detach().argmax(1) == labels).double().mean()
        return StepResult(
            loss=loss,
            terms={"loss": loss, "loss_ce": ce, **terms, "top1": top1},
            batch_size=len(labels),
        )

    def _cakd(
        self, model: nn.Module, images: Tensor, labels: Tensor, terms: dict[str, Tensor]
    ) -> tuple[Tensor, Tensor, Tensor]:
        assert self.teacher_tap is not None
        with torch.no_grad():
            teacher = self.teacher_tap(images)  # the teacher always sees the clean view
        if self.feature_norm:
            teacher = standardized(teacher)
        student_input = images
        if self.discriminator is not None and self.views is not None:
            # The transforms draw from a (CPU) generator seeded off the step's torch seed (the
            # loop re-seeds torch before every step): a view depends on the step's coordinates.
            generator = torch.Generator()
            generator.manual_seed(int(torch.randint(0, 2**62, (1,)).item()))
            student_input = multi_view(images, self.views, generator)
        logits, pca, projected = model(student_input, teacher)
        ce = F.cross_entropy(logits, labels, label_smoothing=self.label_smoothing)
        loss = ce
        if pca is not None:
            loss = loss + pca.total
            terms.update(loss_proj1=pca.total, loss_attn=pca.attn, loss_value=pca.value)
        if projected is not None:
            l_proj2 = gl_loss(projected, teacher.tokens)
            loss = loss + l_proj2
            terms["loss_proj2"] = l_proj2
        if self.discriminator is not None:
            assert projected is not None  # the config refuses multi-view without GL
            terms["loss_mad"] = self.discriminator.tick(teacher.tokens, projected)
            l_mvg = generator_loss(self.discriminator.net, projected)
            loss = loss + self.lambda_mvg * l_mvg
            terms["loss_mvg"] = l_mvg
        return loss, ce, logits


# ------------------------------------------------------------------------------------ the task


@dataclass(kw_only=True)
class _CakdTask:
    """train-cakd's part of :func:`..train.loop.fit`."""

    batches_of: Callable[[int, int], Iterable[tuple[Tensor, Tensor]]]
    cakd_step: CakdStep
    val_set: Any
    image_size: int
    val_batch_size: int
    workers: int
    ctx: DistContext
    device: torch.device
    extra: dict[str, Any] = field(default_factory=dict)

    def batches(self, epoch: int, start_step: int) -> Iterable[tuple[Tensor, Tensor]]:
        return self.batches_of(epoch, start_step)

    def step(self, model: nn.Module, batch: tuple[Tensor, Tensor]) -> StepResult:
        return self.cakd_step(model, batch)

    def validate(self, model: nn.Module) -> dict[str, float]:
        if self.val_set is None:
            return {}
        from ...train.validate import evaluate_model

        assert isinstance(model, CakdTrainee)
        val = evaluate_model(
            model.student,
            self.val_set,
            image_size=self.image_size,
            batch_size=self.val_batch_size,
            device=self.device,
            workers=self.workers,
            ctx=self.ctx,
            description="validate",
        )
        return {"top1": float(val["top1"]), "top5": float(val["top5"])}

    def epoch_record(self, summary: EpochSummary) -> dict[str, Any]:
        record: dict[str, Any] = {"kind": "epoch", "epoch": summary.epoch + 1}
        record.update(step=summary.global_step, lr=summary.lr, **summary.mean)
        record["images_per_s"] = summary.images / max(summary.seconds, 1e-9)
        record.update({f"val_{k}": v for k, v in summary.val.items()})
        return record

    def checkpoint_metrics(self, summary: EpochSummary | None) -> dict[str, Any]:
        return self.epoch_record(summary) if summary is not None else {}


# ------------------------------------------------------------------------------------- the run


def train_cakd(
    cfg: CakdTrainConfig,
    *,
    on_epoch_end: Callable[[int, dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Train (or resume) a CNN student from a live ViT teacher; returns the run's summary.

    Args:
        cfg: the run's configuration.
        on_epoch_end: called on every rank with (finished epochs, epoch record) after that
            epoch's checkpoint is on disk (tests that simulate an interruption).
    """
    from ...runtime.device import cpu_threads, resolve_device
    from ...runtime.distributed import init_distributed, shutdown

    device = resolve_device(cfg.device)
    ctx = init_distributed(device)
    try:
        with cpu_threads(cfg.threads, cfg.workers, device):
            return _train(cfg, device, ctx, on_epoch_end)
    finally:
        shutdown(ctx)


def _check_run_dir(cfg: CakdTrainConfig) -> Path:
    """The run directory, once ``--resume``/``--overwrite`` fit what it holds."""
    from ...runtime.atomic import check_output_dir

    check_output_dir(cfg.out)
    run_dir = Path(cfg.out)
    last = run_dir / LAST
    if cfg.resume:
        if not last.is_file():
            raise UserError(f"--resume: {last} does not exist; start without --resume")
    elif (last.exists() or (run_dir / FINAL).exists()) and not cfg.overwrite:
        raise UserError(
            f"{run_dir} already holds a run; pass --resume to continue it or --overwrite"
        )
    return run_dir


def _train(
    cfg: CakdTrainConfig,
    device: torch.device,
    ctx: DistContext,
    on_epoch_end: Callable[[int, dict[str, Any]], None] | None,
) -> dict[str, Any]:
    from ...augment.config import crop_flip, crop_flip_defaults
    from ...data.planning import shard_rows_for
    from ...data.shard_set import resolve_complete_shards
    from ...models.checkpoint import make_checkpoint
    from ...models.factory import count_parameters, create_model
    from ...replay.online_teachers import load_online_teachers
    from ...replay.segments import FreshViews, ViewSource
    from ...runtime.atomic import atomic_write_json
    from ...train.checkpointer import Checkpointer
    from ...train.loop import LoopConfig, fit
    from ...train.schedule import (
        MultiStepSchedule,
        OptimizerConfig,
        ScheduleConfig,
        build_optimizer,
    )

    run_dir = _check_run_dir(cfg)
    train_set = resolve_complete_shards(cfg.data)
    val_set = resolve_complete_shards(cfg.val) if cfg.val is not None else None
    index = train_set.index
    if val_set is not None and val_set.num_classes != train_set.num_classes:
        raise UserError(
            f"validation shards have {val_set.num_classes} classes, "
            f"training shards {train_set.num_classes}"
        )
    opt = resolve_optimization(cfg)
    if opt.batch_size % ctx.world_size:
        raise UserError(
            f"--batch-size {opt.batch_size} does not split evenly over {ctx.world_size} ranks"
        )
    online = load_online_teachers(
        [cfg.teacher],
        device,
        num_classes=index.num_classes,
        in_chans=index.channels,
        image_size=cfg.image_size,
    )
    teacher_name, teacher = next(iter(online.models.items()))
    image_size = online.image_size
    teacher_tap = None
    if cfg.method == "cakd":
        teacher_tap = ViTFeatureTap(teacher, block=cfg.block)

    torch.manual_seed(cfg.seed)  # the initial weights are a function of the seed alone
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
    projectors = None
    discriminator = None
    views = None
    if teacher_tap is not None:
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
        if cfg.multi_view:
            net = Discriminator(teacher_tap.dim, cfg.disc_widths).to(device)
            net.requires_grad_(False)
            params = list(net.parameters())
            discriminator = DiscriminatorTrainer(
                net=net,
                # Adam with β1 = 0.5, the usual choice for adversarial training (DCGAN).
                optimizer=torch.optim.Adam(params, lr=cfg.disc_lr, betas=(0.5, 0.999)),
                every=DISCRIMINATOR_EVERY,
                world_size=ctx.world_size,
            )
            views = MultiViewConfig(
                p=cfg.view_p,
                jitter=cfg.view_jitter,
                crop_scale=(cfg.view_crop, 1.0),
                rotation=cfg.view_rotation,
                mask_patch=teacher_tap.patch_size,  # "patch-wise": the teacher's patches
                mask_ratio=cfg.view_mask_ratio,
                noise_std=cfg.view_noise,
            )
    trainee = CakdTrainee(student, student_tap, projectors).to(device)

    # The one stream, as train-teacher draws it: crop/flip views keyed by (seed, epoch, key).
    native = max(index.image_size) if index.image_size is not None else image_size
    min_scale, hflip = crop_flip_defaults(image_size, native)
    augment = dataclasses.replace(
        crop_flip(image_size),
        scale=(cfg.min_scale if cfg.min_scale is not None else min_scale, 1.0),
        hflip=cfg.hflip if cfg.hflip is not None else hflip,
    )
    stream = FreshViews(
        source=ViewSource(
            aug=augment, seed=cfg.seed, num_classes=index.num_classes, channels=index.channels
        ),
        shards=shard_rows_for(train_set.paths, [s.num_samples for s in index.shards]),
        rank=ctx.rank,
        world_size=ctx.world_size,
        batch_size=opt.batch_size // ctx.world_size,
        shuffle_buffer=cfg.shuffle_buffer,
        workers=cfg.workers,
    )
    steps_per_epoch = stream.steps_per_epoch
    total = steps_per_epoch * opt.epochs
    warmup = min(total, round(opt.warmup_epochs * steps_per_epoch))
    schedule: ScheduleConfig
    if opt.milestones:
        schedule = MultiStepSchedule(
            base_lr=opt.lr,
            total_steps=total,
            warmup_steps=warmup,
            milestones=tuple(m * steps_per_epoch for m in opt.milestones),
        )
    else:
        schedule = ScheduleConfig(base_lr=opt.lr, total_steps=total, warmup_steps=warmup)
    optimizer = build_optimizer(
        trainee,
        OptimizerConfig(
            name=opt.optimizer,  # type: ignore[arg-type]
            lr=opt.lr,
            weight_decay=opt.weight_decay,
            nesterov=opt.nesterov,
        ),
    )
    identity = {
        "data_fingerprint": train_set.fingerprint(),
        "teacher_arch": online.archs[teacher_name],
        "teacher_sha256": online.checkpoint_sha256[teacher_name],
        "world_size": ctx.world_size,
        "image_size": image_size,
        "augment": augment.to_dict(),
        "optimization": opt.to_dict(),
        "steps_per_epoch": steps_per_epoch,
    }
    config = json.loads(json.dumps(cfg.to_dict()))

    def make(net: nn.Module, state: dict[str, Any] | None, metrics: Mapping[str, Any]) -> dict:
        assert isinstance(net, CakdTrainee)
        if state is not None:
            extra: dict[str, Any] = {}
            if net.projectors is not None:
                extra["projectors"] = net.projectors.state_dict()
            if discriminator is not None:
                extra["discriminator"] = discriminator.state_dict()
            state = {**state, "cakd": extra}
        return make_checkpoint(
            net.student,  # type: ignore[arg-type]
            class_names=index.class_names,
            metrics=metrics,
            config=config,
            train_state=state,
        )

    checkpointer = Checkpointer(
        path=run_dir / LAST,
        make=make,
        kind=student.kind,
        command="train-cakd",
        identity=identity,
        schedule=dataclasses.asdict(schedule),
        is_main=ctx.is_main,
    )
    resume_from = None
    if cfg.resume:
        point = checkpointer.load()
        checkpointer.check(point, CakdTrainConfig, config)
        resume_from = checkpointer.restore(point, student, optimizer)
        extra = point.checkpoint["train_state"].get("cakd") or {}
        if projectors is not None:
            projectors.load_state_dict(extra["projectors"])
        if discriminator is not None:
            discriminator.load_state_dict(extra["discriminator"])
            discriminator.clock = resume_from.global_step
        at = f"epoch {resume_from.epoch + 1}, step {resume_from.step_in_epoch}"
        info(f"resuming {run_dir} at {at}")
    if ctx.is_main:
        if cfg.overwrite:  # every check passed: only now does the old run go
            for name in (LAST, FINAL, METRICS, CONFIG):
                (run_dir / name).unlink(missing_ok=True)
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(
            run_dir / CONFIG,
            {**config, "resolved": identity, "hyperparameters": opt.provenance},
        )
        info(
            f"{cfg.method}: {cfg.model} ({count_parameters(student) / 1e6:.2f} M) from "
            f"{online.archs[teacher_name]}, {index.num_samples} images at {image_size} px; "
            f"{opt.epochs} epochs × {steps_per_epoch} steps, {opt.optimizer} lr {opt.lr:.3g}, "
            f"batch {opt.batch_size}"
        )

    task = _CakdTask(
        batches_of=stream.batches,
        cakd_step=CakdStep(
            method=cfg.method,
            teacher=teacher,
            device=device,
            teacher_tap=teacher_tap,
            feature_norm=cfg.feature_norm,
            discriminator=discriminator,
            views=views,
            lambda_mvg=cfg.lambda_mvg,
            tau=cfg.tau,
            alpha=cfg.alpha,
            label_smoothing=cfg.label_smoothing,
        ),
        val_set=val_set,
        image_size=image_size,
        val_batch_size=max(opt.batch_size // ctx.world_size, 64),
        workers=cfg.workers,
        ctx=ctx,
        device=device,
    )
    final = run_dir / FINAL
    loop = LoopConfig(
        epochs=opt.epochs,
        steps_per_epoch=steps_per_epoch,
        schedule=schedule,
        seed=cfg.seed,
        metrics_file=run_dir / METRICS,
        log_every=cfg.log_every,
        save_every=cfg.save_every,
        final=final,
        description=f"train-cakd {cfg.method}",
        tensorboard=run_dir / TENSORBOARD if cfg.tensorboard else None,
        progress=cfg.progress,
    )
    result = fit(
        task,
        trainee,
        optimizer,
        loop,
        checkpointer,
        ctx=ctx,
        device=device,
        resume_from=resume_from,
        on_epoch_end=on_epoch_end,
    )
    last = result.last_epoch
    return {
        "final_checkpoint": str(final),
        "last_checkpoint": str(run_dir / LAST),
        "method": cfg.method,
        "epochs": opt.epochs,
        "steps": result.global_step,
        "steps_per_epoch": steps_per_epoch,
        "seconds": result.seconds,
        "val": last.val if last is not None else {},
        "loss": last.mean if last is not None else {},
        "rank": ctx.rank,
    }
