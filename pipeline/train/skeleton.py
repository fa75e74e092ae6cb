"""The one training run: ``train-teacher``, ``train-student`` and ``train-cakd`` are each a
small :class:`TrainSpec` that :func:`run_training` runs (in the manner of torchtitan's
``Trainer`` + ``TrainSpec``).

The skeleton owns, the same way for every trainer (docs/architecture.md draws it):

1. device, precision policy, ``--compile`` check, the process group and the CPU threads;
2. the run directory and its resume/overwrite policy (:func:`check_run_dir`; ``--overwrite``
   clears the old run only after every other check passed);
3. the training shards and ``--val``, with the class-count and class-name check
   (:func:`resolve_validation`);
4. seeding right before the model is built, so the initial weights are a function of the seed;
5. the schedule and optimizer from the spec's resolved :class:`Optimization` (one warm-up
   rule: :func:`..train.run_options.warmup_steps_for`);
6. the :class:`..train.checkpointer.Checkpointer`, the run identity (the resolved precision and
   world size are always part of it) and the resume check;
7. ``config.json``, :class:`..train.loop.LoopConfig` + :func:`..train.loop.fit` (TensorBoard,
   precision, compile), ``final.pt`` + ``final.safetensors``, and the summary JSON.

A spec supplies how it binds its data (:meth:`TrainSpec.bind`), builds its model(s), task and
recipe (:meth:`TrainSpec.build` → :class:`RunPlan`), and what it adds to the summary.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from ..data.imageio import Decoder
from ..data.shard_set import check_same_classes, resolve_complete_shards
from ..runtime.console import info
from ..runtime.distributed import DistContext
from ..runtime.errors import UserError
from ..runtime.options import check_resumable
from ..runtime.precision import PrecisionPolicy
from ..runtime.run_layout import CONFIG, FINAL, FINAL_WEIGHTS, LAST, METRICS, RUN_FILES, TENSORBOARD
from .checkpointer import ResumePoint
from .loop import FitResult, TrainTask
from .run_options import RunOptions, warmup_steps_for
from .schedule import ScheduleConfig


@dataclass(frozen=True, kw_only=True)
class RunEnv:
    """What the skeleton resolved before a spec binds its data."""

    device: torch.device
    ctx: DistContext
    precision: PrecisionPolicy
    run_dir: Path
    train_set: Any
    """The training shards (:class:`..data.shard_set.ShardSet`), complete."""
    val_set: Any
    """``--val`` (a ShardSet with the training set's classes), or None."""
    workers: int
    """Data-loading processes per rank."""

    def validate(
        self,
        model: nn.Module,
        *,
        image_size: int,
        batch_size: int,
        decoder: Decoder = "torchvision",
    ) -> dict[str, Any] | None:
        """``model`` on ``--val`` (every rank its share, counts summed; the run's precision):
        :func:`..train.validate.evaluate_model`'s result, or None without ``--val``."""
        if self.val_set is None:
            return None
        from .validate import evaluate_model

        return evaluate_model(
            model,
            self.val_set,
            image_size=image_size,
            batch_size=batch_size,
            device=self.device,
            workers=self.workers,
            ctx=self.ctx,
            description="validate",
            precision=self.precision,
            decoder=decoder,
        )


@dataclass(frozen=True, kw_only=True)
class Optimization:
    """A run's resolved recipe: what the skeleton builds the optimizer and schedule from."""

    epochs: int
    lr: float
    """Peak learning rate (already scaled with the global batch where a recipe gave it)."""
    weight_decay: float
    warmup_epochs: float
    """Before the one warm-up rule clamps it to a fifth of the run."""
    optimizer: str = "adamw"
    min_lr: float = 0.0
    milestones: tuple[int, ...] = ()
    """Epochs at which the rate drops ×0.1; empty: cosine decay."""
    nesterov: bool = True
    clip_grad: float | None = None


class ExtraState(Protocol):
    """Training state beyond the model and its optimizer (CAKD's projectors, discriminator)."""

    def state_dict(self) -> dict[str, Any]: ...

    def restore(self, state: Mapping[str, Any], global_step: int) -> None: ...


@dataclass(kw_only=True)
class RunPlan:
    """What a spec built; the skeleton trains it."""

    model: nn.Module
    """What the optimizer trains and the loop runs (CAKD: the student with its projectors)."""
    task: TrainTask
    steps_per_epoch: int
    optimization: Optimization
    kind: str
    """The checkpoint kind (a resume refuses another)."""
    class_names: list[str]
    config: dict[str, Any]
    """The JSON config in every checkpoint; the resume rule compares it through ``config_type``."""
    config_type: type
    identity: dict[str, Any]
    """Derived facts a resumed run must share (see :mod:`.checkpointer`)."""
    provenance: dict[str, Any] = field(default_factory=dict)
    """Each resolved hyper-parameter with its source (config.json ``hyperparameters``)."""
    description: str
    banner: str | None = None
    """One line about the run, printed once on rank 0."""
    log_every: int = 0
    progress: bool = True
    saved: Callable[[nn.Module], nn.Module] | None = None
    """The part of ``model`` the checkpoints hold (None: all of it)."""
    extra_state: ExtraState | None = None
    """Saved under ``train_state[extra_key]`` in ``last.pt``."""
    extra_key: str = "extra"
    on_resume: Callable[[ResumePoint], None] | None = None
    """Checks of the spec's own on the loaded checkpoint, before the resume rule."""
    plateau_metric: str = "top1"
    """The key of the task's validation figures that ``--until-plateau`` watches."""


class TrainSpec(Protocol):
    """A trainer, as the skeleton runs it."""

    @property
    def command(self) -> str:
        """The command's name (in errors and checkpoints)."""
        ...

    def bind(self, env: RunEnv) -> Any:
        """Open and check the data (and teachers); the result has the run's ``seed``."""
        ...

    def build(self, env: RunEnv, bound: Any) -> RunPlan:
        """Model(s), task and recipe, called right after torch is seeded with ``bound.seed``."""
        ...

    def summary(self, env: RunEnv, bound: Any, plan: RunPlan, result: FitResult) -> dict[str, Any]:
        """What the trainer adds to the summary ``--json`` prints."""
        ...


# ----------------------------------------------------------------------------- the pieces


def check_run_dir(opts: RunOptions) -> Path:
    """The run directory, once it is clear ``--resume``/``--overwrite`` fit what it holds.

    Nothing is removed here: ``--overwrite`` clears the old run (:func:`clear_run_dir`) only
    after every other check passed, so a typo in another option cannot empty a run directory.
    """
    from ..runtime.atomic import check_output_dir

    check_output_dir(opts.out)
    run_dir = Path(opts.out)
    last = run_dir / LAST
    if opts.resume:
        check_resumable(last)
    elif (last.exists() or (run_dir / FINAL).exists()) and not opts.overwrite:
        raise UserError(
            f"{run_dir} already holds a run; pass --resume to continue it "
            "or --overwrite to start over"
        )
    return run_dir


def clear_run_dir(run_dir: Path) -> None:
    """``--overwrite``: remove the previous run's files (and only those) from ``run_dir``."""
    for name in RUN_FILES:
        (run_dir / name).unlink(missing_ok=True)


def resolve_validation(val: str | None, train_set: Any) -> Any:
    """``--val`` opened and checked against the training shards (:func:`check_same_classes`);
    None without ``--val``."""
    if val is None:
        return None
    val_set = resolve_complete_shards(val)
    check_same_classes(val_set, train_set)
    return val_set


def build_schedule(opt: Optimization, steps_per_epoch: int) -> ScheduleConfig:
    """Warm-up (the one rule) then cosine, or step decay at ``opt.milestones``."""
    from .schedule import MultiStepSchedule

    total = steps_per_epoch * opt.epochs
    warmup = warmup_steps_for(opt.warmup_epochs, opt.epochs, steps_per_epoch)
    if opt.milestones:
        return MultiStepSchedule(
            base_lr=opt.lr,
            total_steps=total,
            warmup_steps=warmup,
            min_lr=opt.min_lr,
            milestones=tuple(m * steps_per_epoch for m in opt.milestones),
        )
    return ScheduleConfig(base_lr=opt.lr, total_steps=total, warmup_steps=warmup, min_lr=opt.min_lr)


def fresh_views(env: RunEnv, aug: Any, seed: int, batch_size: int, shuffle_buffer: int) -> Any:
    """The one stream of fresh labelled views over the training shards, for the trainers that
    train on labels with live models (train-teacher, train-cakd): ``batch_size`` per rank,
    views keyed by ``(seed, view = epoch, key)`` (:class:`..replay.segments.FreshViews`)."""
    from ..data.planning import shard_rows_for
    from ..replay.segments import FreshViews, ViewSource, ViewStream

    index = env.train_set.index
    return FreshViews(
        ViewStream(
            ViewSource(aug=aug, seed=seed, num_classes=index.num_classes, channels=index.channels),
            shard_rows_for(env.train_set.paths, [s.num_samples for s in index.shards]),
            rank=env.ctx.rank,
            world_size=env.ctx.world_size,
            batch_size=batch_size,
            shuffle_buffer=shuffle_buffer,
            workers=env.workers,
        )
    )


def _plain(value: Any) -> Any:
    return json.loads(json.dumps(value))


# ------------------------------------------------------------------------------- the run


def run_training(
    spec: TrainSpec,
    opts: RunOptions,
    *,
    workers: int,
    on_epoch_end: Callable[[int, dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Run (or resume) ``spec`` with its shared options ``opts``; returns the summary.

    Args:
        spec: the trainer.
        opts: its config (every trainer's config is a :class:`RunOptions`).
        workers: data-loading processes per rank (the CPU thread budget leaves them room).
        on_epoch_end: called on every rank with (finished epochs, epoch record) after that
            epoch's checkpoint is on disk (progress hooks, tests that simulate a kill).
    """
    from ..runtime.device import cpu_threads, resolve_device
    from ..runtime.distributed import init_distributed, shutdown
    from ..runtime.precision import check_compile

    device = resolve_device(opts.device)
    policy = PrecisionPolicy.resolve(opts.precision, device)
    if opts.compile:
        check_compile(device)
    ctx = init_distributed(device)
    try:
        with cpu_threads(opts.threads, workers, device):
            return _run(spec, opts, device, ctx, policy, workers, on_epoch_end)
    finally:
        shutdown(ctx)


def _run(
    spec: TrainSpec,
    opts: RunOptions,
    device: torch.device,
    ctx: DistContext,
    policy: PrecisionPolicy,
    workers: int,
    on_epoch_end: Callable[[int, dict[str, Any]], None] | None,
) -> dict[str, Any]:
    from ..models.checkpoint import make_checkpoint
    from ..runtime.atomic import atomic_write_json
    from .checkpointer import Checkpointer
    from .loop import LoopConfig, fit
    from .schedule import OptimizerConfig, build_optimizer

    run_dir = check_run_dir(opts)
    train_set = resolve_complete_shards(opts.data)
    env = RunEnv(
        device=device,
        ctx=ctx,
        precision=policy,
        run_dir=run_dir,
        train_set=train_set,
        val_set=resolve_validation(opts.val, train_set),
        workers=workers,
    )
    bound = spec.bind(env)
    torch.manual_seed(bound.seed)  # the initial weights are a function of the seed alone
    plan = spec.build(env, bound)
    opt = plan.optimization
    schedule = build_schedule(opt, plan.steps_per_epoch)
    optimizer = build_optimizer(
        plan.model,
        OptimizerConfig(
            name=opt.optimizer,  # type: ignore[arg-type]
            lr=opt.lr,
            weight_decay=opt.weight_decay,
            nesterov=opt.nesterov,
        ),
    )
    identity = {**plan.identity, "precision": policy.precision, "world_size": ctx.world_size}
    provenance = {
        **plan.provenance,
        "warmup_steps": {
            "value": schedule.warmup_steps,
            "from": f"min({opt.warmup_epochs:g} warm-up epochs, a fifth of {opt.epochs} epochs) "
            f"× {plan.steps_per_epoch} steps per epoch",
        },
    }
    saved = plan.saved or (lambda net: net)
    extra = plan.extra_state

    def make(net: nn.Module, state: dict[str, Any] | None, metrics: Mapping[str, Any]) -> dict:
        if state is not None and extra is not None:
            state = {**state, plan.extra_key: extra.state_dict()}
        return make_checkpoint(
            saved(net),  # type: ignore[arg-type]
            class_names=plan.class_names,
            metrics=metrics,
            config=plan.config,
            train_state=state,
        )

    checkpointer = Checkpointer(
        path=run_dir / LAST,
        make=make,
        kind=plan.kind,
        command=spec.command,
        identity=identity,
        schedule=asdict(schedule),
        is_main=ctx.is_main,
    )
    resume_from = None
    if opts.resume:
        point = checkpointer.load()
        if plan.on_resume is not None:
            plan.on_resume(point)
        checkpointer.check(point, plan.config_type, plan.config)
        resume_from = checkpointer.restore(point, saved(plan.model), optimizer)
        if extra is not None:
            extra.restore(point.checkpoint["train_state"][plan.extra_key], resume_from.global_step)
        at = f"epoch {resume_from.epoch + 1}, step {resume_from.step_in_epoch}"
        info(f"resuming {run_dir} at {at}")
    if ctx.is_main:
        if opts.overwrite:  # every check passed: only now does the old run go
            clear_run_dir(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(
            run_dir / CONFIG,
            _plain({**plan.config, "resolved": identity, "hyperparameters": provenance}),
        )
        if plan.banner is not None:
            info(plan.banner)

    loop = LoopConfig(
        epochs=opt.epochs,
        steps_per_epoch=plan.steps_per_epoch,
        schedule=schedule,
        seed=bound.seed,
        metrics_file=run_dir / METRICS,
        log_every=plan.log_every,
        save_every=opts.save_every,
        final=run_dir / FINAL,
        description=plan.description,
        progress=plan.progress,
        clip_grad=opt.clip_grad,
        tensorboard=run_dir / TENSORBOARD if opts.tensorboard else None,
        precision=policy,
        compile=opts.compile,
        until_plateau=opts.until_plateau,
        plateau_metric=plan.plateau_metric,
    )
    result = fit(
        plan.task,
        plan.model,
        optimizer,
        loop,
        checkpointer,
        ctx=ctx,
        device=device,
        resume_from=resume_from,
        on_epoch_end=on_epoch_end,
    )
    last = result.last_epoch
    session_steps = result.global_step - (resume_from.global_step if resume_from else 0)
    return {
        "run_dir": str(run_dir),
        "final_checkpoint": str(run_dir / FINAL),
        "last_checkpoint": str(run_dir / LAST),
        "weights_file": str(run_dir / FINAL_WEIGHTS),
        "metrics_file": str(run_dir / METRICS),
        "config_file": str(run_dir / CONFIG),
        "epochs": opt.epochs,
        "stopped_at": result.stopped_at,
        "steps": result.global_step,
        "steps_per_epoch": plan.steps_per_epoch,
        # Measured, not configured: images all ranks consumed per optimizer step this session.
        "images_per_step": result.images // session_steps if session_steps else None,
        "seconds": result.seconds,
        "val": last.val if last is not None else {},
        "rank": ctx.rank,
        **spec.summary(env, bound, plan, result),
    }
