"""Stage two, ``train-student``: train a CivT (or another student) against stored teacher logits.

Flow (DESIGN §1, §4–§8): check the store against the shards before anything else (fingerprint,
shard names and counts, completeness, seed/augmentation taken from the store:
:mod:`..replay.binding`); build the student with one token per stored teacher; each epoch stream
the shards with the store's view ``epoch mod V`` replayed from the stored parameters
(:mod:`..replay.segments`), and minimize paper Eq. 5 (:class:`..train.steps.DistillationStep`)
with AdamW under warm-up + cosine in the one training loop (:func:`..train.loop.fit`).

Online mode (``--teacher`` and no ``--store``) samples the same kind of views and runs the
teachers live (:mod:`..replay.online_teachers`): the baseline the stored logits replace.

Determinism: the data stream is a pure function of ``(seed, epoch, rank)``; torch's RNG is
re-seeded from ``(seed, epoch, step, rank)`` before every step; the learning rate is a function
of the global step. So ``--resume`` after a kill lands on the same weights as a run that never
stopped: ``RUN_DIR/last.pt`` records the data position and the stream skips what was consumed.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ...replay.binding import DataBinding, bind_online, bind_store
from ...replay.segments import ViewSource
from ...runtime.console import info, warn
from ...runtime.distributed import DistContext
from ...runtime.errors import UserError
from ...runtime.precision import PrecisionPolicy, check_compile
from ...train.loop import EpochSummary, StepResult
from ...train.recipes import HYPERPARAMETERS, resolve_hyperparameters
from ...train.steps import DistillationStep
from .config import (
    CONFIG,
    FINAL,
    FINAL_WEIGHTS,
    LAST,
    METRICS,
    TENSORBOARD,
    StudentTrainConfig,
)


def warmup_steps_for(warmup_epochs: float, epochs: int, steps_per_epoch: int) -> int:
    """Warm-up in steps, clamped to a fifth of the run so short runs still decay."""
    return round(min(warmup_epochs, epochs / 5) * steps_per_epoch)


# --------------------------------------------------------------------------------------------
# What the run trains on


def _check_names(option: str, given: Mapping[str, object], teachers: Sequence[str]) -> None:
    unknown = sorted(set(given) - set(teachers))
    if unknown:
        raise UserError(
            f"{option} names teacher {unknown[0]!r} but the teachers are {', '.join(teachers)}"
        )


def teacher_targets(
    batch: Any,
    setup: DataBinding,
    taus: Mapping[str, float],
    device: torch.device,
    images: Tensor,
    hard: Collection[str] = (),
) -> dict[str, Tensor]:
    """Per teacher the dense distribution at its τ, from the store's top-k or live teachers; for
    a teacher in ``hard``, its arg-max class ``[B]`` (the stored top-1, or the live arg-max)."""
    if setup.online:
        from ...replay.online_teachers import teacher_probs

        return teacher_probs(setup.online, images, taus, hard)
    return {
        # The stored top-k is sorted by descending logit: column 0 is the teacher's arg-max.
        name: topk.indices[..., 0].long().to(device)
        if name in hard
        else topk.dense(setup.num_classes, taus[name]).to(device)
        for name, topk in batch.teachers.items()
    }


def _hard_teachers(cfg: StudentTrainConfig, names: Sequence[str]) -> frozenset[str]:
    """The teachers distilled hard; a per-teacher τ for one of them is a contradiction."""
    _check_names("--distill", cfg.distills, names)
    hard = frozenset(n for n in names if cfg.distills.get(n, cfg.distill) == "hard")
    clash = sorted(hard & set(cfg.taus))
    if clash:
        raise UserError(
            f"--tau {clash[0]}=... contradicts --distill {clash[0]}=hard: hard distillation "
            "uses the teacher's arg-max, with no temperature"
        )
    return hard


# --------------------------------------------------------------------------------------------
# Checkpoints


def _run_identity(
    setup: DataBinding, world_size: int, align: Mapping[str, str] | None, precision: str
) -> dict[str, Any]:
    """Derived facts (no config fields) a resumed run must share to reach the same weights."""
    return {
        "precision": precision,
        "align": dict(align) if align is not None else None,
        "world_size": world_size,
        "resolved_seed": setup.seed,
        "store_fingerprint": setup.store_fingerprint,
        "teacher_names": setup.teacher_names,
        "targets": setup.targets_identity,
        "num_views": setup.num_views,
        "augment": setup.aug.to_dict(),
    }


def _check_student_tokens(model_args: Mapping[str, Any], setup: DataBinding, path: Path) -> None:
    names = list(model_args.get("teacher_names") or [])
    if names != setup.teacher_names:
        raise UserError(
            f"student checkpoint {path} has {len(names)} teacher token(s) {names}, but the "
            f"teachers are {setup.teacher_names}"
        )


# --------------------------------------------------------------------------------------------
# The run


def train_student(cfg: StudentTrainConfig) -> dict[str, Any]:
    """Run (or resume) stage two; returns the summary ``--json`` prints."""
    from ...runtime.device import cpu_threads, resolve_device
    from ...runtime.distributed import init_distributed, shutdown

    if cfg.store is None and not cfg.teachers:
        raise UserError("train-student needs --store STORE (or --teacher NAME=ARCH:CKPT ...)")
    device = resolve_device(cfg.device)
    policy = PrecisionPolicy.resolve(cfg.precision, device)
    if cfg.compile:
        check_compile(device)
    ctx = init_distributed(device)
    try:
        with cpu_threads(cfg.threads, cfg.workers, device):
            return _train(cfg, device, ctx, policy)
    finally:
        shutdown(ctx)


def _check_run_dir(cfg: StudentTrainConfig) -> Path:
    """The run directory, once it is clear ``--resume``/``--overwrite`` fit what it holds.

    Nothing is removed here: ``--overwrite`` clears the old run (:func:`_clear_run_dir`) only
    after every other check passed, so a typo in ``--store`` cannot empty a run directory.
    """
    run_dir = Path(cfg.out)  # check_output_dir already refused a file in its place
    last = run_dir / LAST
    if cfg.resume:
        if not last.is_file():
            raise UserError(f"--resume: {last} does not exist; start without --resume")
        return run_dir
    if (last.exists() or (run_dir / FINAL).exists()) and not cfg.overwrite:
        raise UserError(
            f"{run_dir} already holds a run; pass --resume to continue it "
            "or --overwrite to start over"
        )
    return run_dir


def _clear_run_dir(run_dir: Path) -> None:
    """``--overwrite``: remove the previous run's files (and only those) from ``run_dir``."""
    for name in (LAST, FINAL, FINAL_WEIGHTS, METRICS, CONFIG):
        (run_dir / name).unlink(missing_ok=True)


@dataclass(kw_only=True)
class _StudentTask:
    """train-student's part of :func:`..train.loop.fit`: replayed views, Eq. 5, val per head."""

    cfg: StudentTrainConfig
    setup: DataBinding
    source: ViewSource
    distill: DistillationStep
    val_set: Any
    ctx: DistContext
    device: torch.device
    precision: PrecisionPolicy

    def batches(self, epoch: int, start_step: int) -> Iterable[Any]:
        from ...data.planning import plan_training
        from ...replay.segments import epoch_view, iter_view_batches

        plan = plan_training(
            self.setup.shards,
            seed=self.setup.seed,
            epoch=epoch,
            rank=self.ctx.rank,
            world_size=self.ctx.world_size,
            batch_size=self.cfg.batch_size,
            shuffle_buffer=self.cfg.shuffle_buffer,
        )
        return iter_view_batches(
            self.source,
            self.setup.shards,
            plan,
            view=epoch_view(epoch, self.setup.num_views),
            start_step=start_step,
            workers=self.cfg.workers,
        )

    def step(self, model: nn.Module, batch: Any) -> StepResult:
        return self.distill(model, batch)

    def validate(self, model: nn.Module) -> dict[str, float]:
        """Top-1 per head on ``--val`` (every rank takes its share; counts are summed)."""
        if self.val_set is None:
            return {}
        from ...train.validate import evaluate_model

        result = evaluate_model(
            model,
            self.val_set,
            image_size=self.setup.aug.image_size,
            batch_size=self.cfg.batch_size,
            device=self.device,
            workers=self.cfg.workers,
            ctx=self.ctx,
            description="validate",
            precision=self.precision,
            decoder=self.setup.decoder,
        )
        return {str(name): float(head["top1"]) for name, head in result["heads"].items()}

    def epoch_record(self, summary: EpochSummary) -> dict[str, Any]:
        record: dict[str, Any] = {"kind": "epoch", "epoch": summary.epoch}
        record.update(step=summary.global_step, **summary.mean)
        record.update({f"val_{k}": v for k, v in summary.val.items()})
        return record

    def checkpoint_metrics(self, summary: EpochSummary | None) -> dict[str, Any]:
        return {"val": summary.val if summary is not None else {}}


def _train(
    cfg: StudentTrainConfig, device: torch.device, ctx: DistContext, policy: PrecisionPolicy
) -> dict[str, Any]:
    from ...data.shard_set import resolve_complete_shards
    from ...models.checkpoint import make_checkpoint
    from ...models.factory import create_model, get_preset
    from ...runtime.atomic import atomic_write_json, check_output_dir
    from ...train.checkpointer import Checkpointer
    from ...train.loop import LoopConfig, fit
    from ...train.schedule import OptimizerConfig, ScheduleConfig, build_optimizer
    from ...train.steps import DistillationStep

    check_output_dir(cfg.out)
    run_dir = _check_run_dir(cfg)
    shard_set = resolve_complete_shards(cfg.data)
    setup = (
        bind_store(
            cfg.store,
            cfg.data,
            shard_set,
            seed=cfg.seed,
            image_size=cfg.image_size,
            views=cfg.store_views,
            topk=cfg.store_topk,
            teachers=cfg.store_teachers,
            decoder=cfg.decoder,
            device_type=device.type,
            workers=cfg.workers,
        )
        if cfg.store
        else bind_online(
            cfg.teachers,
            shard_set,
            device,
            aug=cfg.aug,
            image_size=cfg.image_size,
            seed=cfg.seed,
            views=cfg.views,
            decoder=cfg.decoder,
            workers=cfg.workers,
        )
    )
    val_set = resolve_complete_shards(cfg.val) if cfg.val else None
    names = setup.teacher_names
    _check_names("--tau", cfg.taus, names)
    _check_names("--lambda", cfg.lambdas, names)
    distill = cfg.token_mode != "none"
    hard = _hard_teachers(cfg, names) if distill else frozenset()
    align = None
    if cfg.token_mode == "aligned":
        from ...models.alignment import resolve_alignment

        align = resolve_alignment(dict(setup.teacher_archs), cfg.align)
    taus = {n: cfg.taus.get(n, cfg.tau) for n in names}
    lambdas = {n: cfg.lambdas.get(n, cfg.lambda_kd) for n in names}
    world = ctx.world_size
    global_batch = cfg.batch_size * world
    preset = get_preset(cfg.model, kind="student")  # a teacher's name is an error of its own
    drop_path_param = preset.parameters.get("drop_path_rate")
    if drop_path_param is None and cfg.drop_path is not None:
        raise UserError(f"--drop-path: {cfg.model} has no stochastic depth to set")
    hyper = resolve_hyperparameters(
        cfg.recipe,
        {name: getattr(cfg, name) for name in HYPERPARAMETERS},
        global_batch=global_batch,
        preset_drop_path=None if drop_path_param is None else float(drop_path_param.default),
        sources=cfg.sources,
    )
    lr = float(hyper["lr"].value or 0)
    num_valid = sum(len(s.valid) for s in setup.shards)
    steps_per_epoch = num_valid // global_batch
    if steps_per_epoch == 0:
        raise UserError(
            f"{num_valid} usable samples cannot fill one global batch of {global_batch}; "
            "lower --batch-size"
        )
    warmup_epochs = float(hyper["warmup_epochs"].value or 0)
    warmup_steps = warmup_steps_for(warmup_epochs, cfg.epochs, steps_per_epoch)
    schedule = ScheduleConfig(
        base_lr=lr,
        total_steps=steps_per_epoch * cfg.epochs,
        warmup_steps=warmup_steps,
        min_lr=float(hyper["min_lr"].value or 0),
    )
    provenance: dict[str, Any] = {"recipe": cfg.recipe}
    provenance.update({name: value.to_dict() for name, value in hyper.items()})
    provenance["warmup_steps"] = {
        "value": warmup_steps,
        "from": f"min({warmup_epochs:g} warm-up epochs, a fifth of {cfg.epochs} epochs) × "
        f"{steps_per_epoch} steps per epoch",
    }
    clip_grad = hyper["clip_grad"].value
    drop_path = hyper["drop_path"].value

    # Seeded right before building: the initial weights are a function of the seed alone.
    torch.manual_seed(setup.seed)
    model = create_model(
        cfg.model,
        num_classes=setup.num_classes,
        in_chans=setup.channels,
        image_size=setup.aug.image_size,
        teacher_names=names if distill else (),
        token_mode=cfg.token_mode,
        align=align,
        patch_size=cfg.patch_size,
        drop_path_rate=drop_path,
        mean=setup.mean,
        std=setup.std,
    ).to(device)
    weight_decay = float(hyper["weight_decay"].value or 0)
    optimizer = build_optimizer(model, OptimizerConfig(lr=lr, weight_decay=weight_decay))
    identity = _run_identity(setup, world, align, policy.precision)
    config = json.loads(json.dumps(cfg.to_dict()))

    def make(net: nn.Module, state: dict[str, Any] | None, metrics: Mapping[str, Any]) -> dict:
        return make_checkpoint(
            net,  # type: ignore[arg-type]
            class_names=setup.class_names,
            metrics=metrics,
            config=config,
            train_state=state,
        )

    checkpointer = Checkpointer(
        path=run_dir / LAST,
        make=make,
        kind="student",
        command="train-student",
        identity=identity,
        schedule=asdict(schedule),
        is_main=ctx.is_main,
    )
    resume_from = None
    if cfg.resume:
        point = checkpointer.load()
        if distill:
            _check_student_tokens(point.checkpoint.get("model_args", {}), setup, checkpointer.path)
        checkpointer.check(point, StudentTrainConfig, config)
        resume_from = checkpointer.restore(point, model, optimizer)
        at = f"epoch {resume_from.epoch + 1}, step {resume_from.step_in_epoch}"
        info(f"resuming {run_dir} at {at}")

    if cfg.epochs > setup.num_views:  # after the checks: a refused run prints one line
        warn(
            f"{cfg.epochs} epochs over {setup.num_views} stored view(s): views repeat "
            f"(epoch e uses view e mod {setup.num_views})"
        )
    if ctx.is_main:
        if cfg.overwrite:  # every check passed: only now does the old run go
            _clear_run_dir(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(
            run_dir / CONFIG, {**config, "resolved": identity, "hyperparameters": provenance}
        )

    source = ViewSource(
        aug=setup.aug,
        seed=setup.seed,
        num_classes=setup.num_classes,
        channels=setup.channels,
        store_path=setup.store_path,
        verify=cfg.verify_replay,
        teachers=tuple(setup.teacher_names) if setup.store_path is not None else None,
        topk=setup.topk,
        decoder=setup.decoder,
    )
    task = _StudentTask(
        cfg=cfg,
        setup=setup,
        source=source,
        distill=DistillationStep(
            targets=lambda batch, images: teacher_targets(batch, setup, taus, device, images, hard),
            taus=taus,
            lambdas=lambdas,
            lambda_cls=cfg.lambda_cls,
            label_smoothing=float(hyper["label_smoothing"].value or 0),
            distill=distill,
            hard=hard,
            distill_smoothing=cfg.distill_smoothing,
            device=device,
        ),
        val_set=val_set,
        ctx=ctx,
        device=device,
        precision=policy,
    )
    final = run_dir / FINAL
    loop = LoopConfig(
        epochs=cfg.epochs,
        steps_per_epoch=steps_per_epoch,
        schedule=schedule,
        seed=setup.seed,
        metrics_file=run_dir / METRICS,
        log_every=cfg.log_every,
        save_every=cfg.save_every,
        final=final,
        description="train-student",
        progress=cfg.progress,
        clip_grad=None if clip_grad is None else float(clip_grad),
        tensorboard=run_dir / TENSORBOARD if cfg.tensorboard else None,
        precision=policy,
        compile=cfg.compile,
    )
    result = fit(
        task, model, optimizer, loop, checkpointer, ctx=ctx, device=device, resume_from=resume_from
    )
    if ctx.is_main:
        info(
            f"trained {cfg.model} for {cfg.epochs} epoch(s), {result.global_step} steps "
            f"({result.images / max(result.seconds, 1e-9):.0f} img/s this session) -> {final}"
        )
    last = result.last_epoch
    return {
        "final_checkpoint": str(final),
        "last_checkpoint": str(run_dir / LAST),
        "epochs": cfg.epochs,
        "steps": result.global_step,
        "steps_per_epoch": steps_per_epoch,
        "val": last.val if last is not None else {},
        "loss": result.epoch_loss,
        "teachers": names,
        "mode": "online" if setup.online else "store",
        "rank": ctx.rank,
        "weights_sha256": state_digest(model),
    }


def state_digest(model: nn.Module) -> str:
    """sha256 over the model's tensors (names, shapes, bytes): equal digests, equal weights."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}{tuple(t.shape)}{t.dtype}".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
