"""Stage two, ``train-student``: train a CivT (or another student) against stored teacher logits.

Flow (docs/architecture.md, docs/train-student.md): check the store against the shards before
anything else (fingerprint, shard names and counts, completeness, seed/augmentation taken from the
store: :mod:`..replay.binding`); build the student with one token per stored teacher; each epoch
stream the shards with the store's view ``epoch mod V`` replayed from the stored parameters
(:mod:`..replay.segments`), and minimize paper Eq. 5 (:class:`..train.steps.DistillationStep`) with
AdamW under warm-up + cosine in the one training loop (:func:`..train.loop.fit`).

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
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ...models.factory import create_model, get_preset
from ...models.heads import inference_head
from ...models.token_mode import AlignRole
from ...replay.binding import DataBinding, bind_online, bind_store
from ...replay.segments import ViewSource
from ...runtime.console import info, warn
from ...runtime.errors import UserError
from ...runtime.run_layout import FINAL
from ...train.loop import EpochSummary, FitResult, StepResult
from ...train.recipes import HYPERPARAMETERS, resolve_hyperparameters
from ...train.skeleton import Optimization, RunEnv, RunPlan, run_training
from ...train.steps import DistillationStep
from .config import StudentTrainConfig

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


def _run_identity(setup: DataBinding, align: Mapping[str, str] | None) -> dict[str, Any]:
    """Derived facts (no config fields) a resumed run must share to reach the same weights
    (the skeleton adds the resolved precision and the world size)."""
    return {
        "align": dict(align) if align is not None else None,
        "resolved_seed": setup.seed,
        "store_fingerprint": setup.store_fingerprint,
        "teacher_names": setup.teacher_names,
        "targets": setup.targets_identity,
        "num_views": setup.num_views,
        "augment": setup.aug.to_dict(),
    }


def _check_student_tokens(checkpoint: Mapping[str, Any], setup: DataBinding) -> None:
    names = list(checkpoint.get("model_args", {}).get("teacher_names") or [])
    if names != setup.teacher_names:
        raise UserError(
            f"the student checkpoint has {len(names)} teacher token(s) {names}, but the "
            f"teachers are {setup.teacher_names}"
        )


@dataclass(kw_only=True)
class _StudentTask:
    """train-student's part of :func:`..train.loop.fit`: replayed views, Eq. 5, val per head."""

    cfg: StudentTrainConfig
    setup: DataBinding
    source: ViewSource
    distill: DistillationStep
    env: RunEnv

    def batches(self, epoch: int, start_step: int) -> Iterable[Any]:
        from ...replay.segments import ViewStream

        stream = ViewStream(
            self.source,
            self.setup.shards,
            rank=self.env.ctx.rank,
            world_size=self.env.ctx.world_size,
            batch_size=self.cfg.batch_size,
            shuffle_buffer=self.cfg.shuffle_buffer,
            workers=self.cfg.workers,
            num_views=self.setup.num_views,
        )
        return stream.batches(epoch, start_step)

    def step(self, model: nn.Module, batch: Any) -> StepResult:
        return self.distill(model, batch)

    def validate(self, model: nn.Module) -> dict[str, float]:
        """Top-1 per head on ``--val`` (every rank takes its share; counts are summed)."""
        result = self.env.validate(
            model,
            image_size=self.setup.aug.image_size,
            batch_size=self.cfg.batch_size,
            decoder=self.setup.decoder,
        )
        if result is None:
            return {}
        return {str(name): float(head["top1"]) for name, head in result["heads"].items()}

    def checkpoint_metrics(self, summary: EpochSummary | None) -> dict[str, Any]:
        return {"val": summary.val if summary is not None else {}}


# --------------------------------------------------------------------------------------------
# The run


def train_student(cfg: StudentTrainConfig) -> dict[str, Any]:
    """Run (or resume) stage two through the one skeleton; returns the summary ``--json`` prints."""
    if cfg.store is None and not cfg.teachers:
        raise UserError("train-student needs --store STORE (or --teacher NAME=ARCH:CKPT ...)")
    return run_training(_StudentSpec(cfg), cfg, workers=cfg.workers)


def _bind(cfg: StudentTrainConfig, env: RunEnv) -> DataBinding:
    """The target source: a finished store (store mode) or live teachers (online mode)."""
    if cfg.store:
        return bind_store(
            cfg.store,
            cfg.data,
            env.train_set,
            seed=cfg.seed,
            image_size=cfg.image_size,
            views=cfg.store_views,
            topk=cfg.store_topk,
            teachers=cfg.store_teachers,
            decoder=cfg.decoder,
            device_type=env.device.type,
            workers=cfg.workers,
            render_device=cfg.render_device,
        )
    return bind_online(
        cfg.teachers,
        env.train_set,
        env.device,
        aug=cfg.aug,
        image_size=cfg.image_size,
        seed=cfg.seed,
        views=cfg.views,
        decoder=cfg.decoder,
        workers=cfg.workers,
        render_device=cfg.render_device,
    )


@dataclass(frozen=True)
class _StudentSpec:
    """train-student's part of the skeleton: a store or live teachers, the student, Eq. 5."""

    cfg: StudentTrainConfig
    command: str = "train-student"

    def bind(self, env: RunEnv) -> DataBinding:
        return _bind(self.cfg, env)

    def build(self, env: RunEnv, bound: DataBinding) -> RunPlan:
        cfg, setup = self.cfg, bound
        names = setup.teacher_names
        _check_names("--tau", cfg.taus, names)
        _check_names("--lambda", cfg.lambdas, names)
        distill = cfg.token_mode != "none"
        hard = _hard_teachers(cfg, names) if distill else frozenset()
        align = _alignment(cfg, setup)
        taus = {n: cfg.taus.get(n, cfg.tau) for n in names}
        global_batch = cfg.batch_size * env.ctx.world_size
        hyper, drop_path = _hyperparameters(cfg, global_batch)
        num_valid = sum(len(s.valid) for s in setup.shards)
        steps_per_epoch = num_valid // global_batch
        if steps_per_epoch == 0:
            raise UserError(
                f"{num_valid} usable samples cannot fill one global batch of {global_batch}; "
                "lower --batch-size"
            )
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
        ).to(env.device)
        step = DistillationStep(
            targets=lambda batch, images: teacher_targets(
                batch, setup, taus, env.device, images, hard
            ),
            taus=taus,
            lambdas={n: cfg.lambdas.get(n, cfg.lambda_kd) for n in names},
            lambda_cls=cfg.lambda_cls,
            label_smoothing=float(hyper["label_smoothing"].value or 0),
            distill=distill,
            hard=hard,
            distill_smoothing=cfg.distill_smoothing,
            device=env.device,
        )
        if cfg.epochs > setup.num_views:
            warn(
                f"{cfg.epochs} epochs over {setup.num_views} stored view(s): views repeat "
                f"(epoch e uses view e mod {setup.num_views})"
            )
        provenance: dict[str, Any] = {"recipe": cfg.recipe}
        provenance.update({name: value.to_dict() for name, value in hyper.items()})
        clip_grad = hyper["clip_grad"].value
        return RunPlan(
            model=model,
            task=_StudentTask(
                cfg=cfg,
                setup=setup,
                source=setup.view_source(cfg.verify_replay),
                distill=step,
                env=env,
            ),
            steps_per_epoch=steps_per_epoch,
            optimization=Optimization(
                epochs=cfg.epochs,
                lr=float(hyper["lr"].value or 0),
                min_lr=float(hyper["min_lr"].value or 0),
                weight_decay=float(hyper["weight_decay"].value or 0),
                warmup_epochs=float(hyper["warmup_epochs"].value or 0),
                clip_grad=None if clip_grad is None else float(clip_grad),
            ),
            kind="student",
            class_names=setup.class_names,
            config=json.loads(json.dumps(cfg.to_dict())),
            config_type=StudentTrainConfig,
            identity=_run_identity(setup, align),
            provenance=provenance,
            description="train-student",
            log_every=cfg.log_every,
            progress=cfg.progress,
            plateau_metric=inference_head(model),  # the headline head's top-1
            on_resume=(
                (lambda point: _check_student_tokens(point.checkpoint, setup)) if distill else None
            ),
        )

    def summary(
        self, env: RunEnv, bound: DataBinding, plan: RunPlan, result: FitResult
    ) -> dict[str, Any]:
        if env.ctx.is_main:
            info(
                f"trained {self.cfg.model} for {result.stopped_at or self.cfg.epochs} epoch(s), "
                f"{result.global_step} "
                f"steps ({result.images / max(result.seconds, 1e-9):.0f} img/s this session) "
                f"-> {env.run_dir / FINAL}"
            )
        return {
            "loss": result.epoch_loss,
            "teachers": bound.teacher_names,
            "mode": "online" if bound.online else "store",
            "weights_sha256": state_digest(plan.model),
        }


def _alignment(cfg: StudentTrainConfig, setup: DataBinding) -> dict[str, AlignRole] | None:
    if cfg.token_mode != "aligned":
        return None
    from ...models.alignment import resolve_alignment

    return resolve_alignment(dict(setup.teacher_archs), cfg.align)


def _hyperparameters(cfg: StudentTrainConfig, global_batch: int) -> tuple[dict, float | None]:
    """The recipe's values with their sources, and the student's drop path."""
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
    drop_path = hyper["drop_path"].value
    return hyper, None if drop_path is None else float(drop_path)


def state_digest(model: nn.Module) -> str:
    """sha256 over the model's tensors (names, shapes, bytes): equal digests, equal weights."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}{tuple(t.shape)}{t.dtype}".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
