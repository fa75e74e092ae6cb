"""Stage two, ``train-student``: train a CivT (or another student) against stored teacher logits.

Flow (DESIGN §1, §4–§8): check the store against the shards before anything else (fingerprint,
shard names and counts, completeness, seed/augmentation taken from the store); build the student
with one token per stored teacher; each epoch stream the shards with the store's view
``epoch mod V`` replayed from the stored parameters (:mod:`.student_data`), and minimize paper
Eq. 5 (:func:`civt_pipe.pipeline.train.losses.civt_loss`) with AdamW under warm-up + cosine.

Online mode (``--teacher`` and no ``--store``) samples the same kind of views with
``views.sample_and_render`` and runs the teachers live (:mod:`.online_teachers`): the baseline
the stored logits replace.

Determinism: the data stream is a pure function of ``(seed, epoch, rank)``; torch's RNG is
re-seeded from ``(seed, epoch, step, rank)`` before every step; the learning rate is a function
of the global step. So ``--resume`` after a kill lands on the same weights as a run that never
stopped: ``RUN_DIR/last.pt`` records the data position and the stream skips what was consumed.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..replay.student_stream import VERIFY_MODES
from ..runtime.console import info, make_progress, warn
from ..runtime.errors import UserError

TOKEN_MODES = ("per-teacher", "shared", "none")
LAST = "last.pt"
FINAL = "final.pt"
METRICS = "metrics.jsonl"
CONFIG = "config.json"
TRAIN_STATE_VERSION = 1


def parse_per_teacher(values: Sequence[str], option: str) -> tuple[float, dict[str, float]]:
    """Parse ``--tau 2`` / ``--tau cnn=2 --tau inn=4`` into (default, per-teacher overrides)."""
    default = 1.0
    named: dict[str, float] = {}
    for text in values:
        name, sep, number = text.rpartition("=")
        try:
            value = float(number)
        except ValueError:
            raise UserError(f"{option} {text!r} is not a number or NAME=NUMBER") from None
        if not math.isfinite(value):
            raise UserError(f"{option} {text!r} is not a finite number")
        if sep:
            if not name:
                raise UserError(f"{option} {text!r} has an empty teacher name")
            named[name] = value
        else:
            default = value
    return default, named


@dataclass(kw_only=True)
class StudentTrainConfig:
    """Everything ``train-student`` needs; serialized to ``RUN_DIR/config.json`` and checkpoints."""

    data: str
    """Training shards (directory or brace pattern)."""
    out: str
    """Run directory: ``last.pt``, ``final.pt``, ``metrics.jsonl``, ``config.json``."""
    model: str = "civt-nano"
    """Student preset from the model registry."""
    store: str | None = None
    """Logit store written by ``dump-logits`` from the same shards (store mode)."""
    teachers: tuple[str, ...] = ()
    """Online mode: ``NAME=ARCH:CKPT`` teachers run live (only without ``store``)."""
    epochs: int = 10
    batch_size: int = 64
    """Per rank."""
    lr: float | None = None
    """Peak learning rate; default ``1e-3 × global batch / 512`` (paper)."""
    min_lr: float = 1e-6
    """Floor of the cosine (capped at ``lr``)."""
    weight_decay: float = 0.05
    warmup_epochs: float = 5.0
    """Linear warm-up; clamped to a fifth of the run for short runs."""
    tau: float = 1.0
    """Default distillation temperature τt."""
    taus: dict[str, float] = field(default_factory=dict)
    """Per-teacher τt overrides."""
    lambda_kd: float = 1.0
    """Default λt for each teacher's KL term."""
    lambdas: dict[str, float] = field(default_factory=dict)
    """Per-teacher λt overrides."""
    lambda_cls: float = 1.0
    """λ0, weight of the class-token cross-entropy."""
    label_smoothing: float = 0.0
    token_mode: str = "per-teacher"
    """One token per teacher, one ``shared`` token, or ``none`` (no distillation)."""
    patch_size: int | None = None
    val: str | None = None
    """Validation shards, evaluated at the end of every epoch."""
    resume: bool = False
    overwrite: bool = False
    """Start afresh in a run directory that already holds a run."""
    save_every: int = 0
    """Also write ``last.pt`` every this many steps (0: only at epoch ends)."""
    verify_replay: str = "sample"
    """Digest check of replayed views: ``all``, ``sample`` (first block of each shard), ``off``."""
    views: int = 1
    """Online mode: number of distinct views V (epoch e uses view e mod V)."""
    aug: str = "auto"
    """Online mode: augmentation preset (``auto``: ``small`` ≤ 32 px, else ``deit``)."""
    image_size: int | None = None
    """Online mode: view size (default: the teachers' input size)."""
    seed: int | None = None
    """Augmentation seed in online mode (default 0); the store's seed in store mode (must match
    when given). Also seeds the student's initialization and the data order."""
    shuffle_buffer: int = 512
    """Samples in the shuffle buffer."""
    workers: int = 0
    """DataLoader processes that decode and replay views."""
    threads: int | None = None
    """Torch CPU threads (default: this rank's cores minus one per DataLoader worker)."""
    device: str = "auto"
    log_every: int = 1
    """Write a step record to ``metrics.jsonl`` every this many steps."""
    progress: bool = True

    def __post_init__(self) -> None:
        if self.store is not None and self.teachers:
            raise UserError("give either --store (stored logits) or --teacher (online), not both")
        if self.epochs < 1:
            raise UserError(f"--epochs must be at least 1, got {self.epochs}")
        if self.batch_size < 1:
            raise UserError(f"--batch-size must be at least 1, got {self.batch_size}")
        if self.lr is not None and not self.lr > 0:
            raise UserError(f"--lr must be positive, got {self.lr}")
        if self.weight_decay < 0:
            raise UserError(f"--weight-decay must be 0 or more, got {self.weight_decay}")
        if self.warmup_epochs < 0:
            raise UserError(f"--warmup-epochs must be 0 or more, got {self.warmup_epochs}")
        tau_values = [("--tau", self.tau), *[(f"--tau {k}", v) for k, v in self.taus.items()]]
        for name, value in tau_values:
            if not value > 0:
                raise UserError(f"{name} must be positive, got {value}")
        lams = [("--lambda", self.lambda_kd), ("--lambda-cls", self.lambda_cls)]
        for name, value in [*lams, *[(f"--lambda {k}", v) for k, v in self.lambdas.items()]]:
            if value < 0:
                raise UserError(f"{name} must be 0 or more, got {value}")
        if not 0 <= self.label_smoothing < 1:
            raise UserError(f"--label-smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.token_mode not in TOKEN_MODES:
            raise UserError(
                f"--token-mode must be one of {', '.join(TOKEN_MODES)}, got {self.token_mode!r}"
            )
        if self.verify_replay not in VERIFY_MODES:
            raise UserError(
                f"--verify-replay must be one of {', '.join(VERIFY_MODES)}, "
                f"got {self.verify_replay!r}"
            )
        if self.save_every < 0:
            raise UserError(f"--save-every must be 0 or more, got {self.save_every}")
        if self.views < 1:
            raise UserError(f"--views must be at least 1, got {self.views}")
        if self.seed is not None and not 0 <= self.seed < 2**63:
            raise UserError(f"--seed must be in [0, 2**63), got {self.seed}")
        if self.workers < 0:
            raise UserError(f"--workers must be 0 or more, got {self.workers}")
        if self.shuffle_buffer < 1:
            raise UserError(f"the shuffle buffer needs at least 1 slot, got {self.shuffle_buffer}")
        if self.log_every < 1:
            raise UserError(f"log_every must be at least 1, got {self.log_every}")
        if self.resume and self.overwrite:
            raise UserError("--resume and --overwrite contradict each other; pick one")

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["teachers"] = list(self.teachers)
        return out


# Options that may change between a killed run and its --resume without changing the result.
_RESUME_FREE = {
    "resume",
    "overwrite",
    "workers",
    "threads",
    "device",
    "progress",
    "save_every",
    "log_every",
    "verify_replay",
    "val",
    "out",
    "data",
    "store",
    "teachers",
}


def step_seed(seed: int, epoch: int, step: int, rank: int) -> int:
    """The torch seed of one training step (dropout, drop-path), from its coordinates only."""
    payload = f"{seed}/{epoch}/{step}/{rank}".encode()
    return int.from_bytes(hashlib.blake2b(payload, digest_size=8).digest(), "little") >> 1


def warmup_steps_for(warmup_epochs: float, epochs: int, steps_per_epoch: int) -> int:
    """Warm-up in steps, clamped to a fifth of the run so short runs still decay."""
    return round(min(warmup_epochs, epochs / 5) * steps_per_epoch)


# --------------------------------------------------------------------------------------------
# What the run trains on


@dataclass
class _Setup:
    """Facts resolved from the store (or the teachers) before training."""

    shards: list[Any]  # list[ShardRows]
    aug: Any  # AugmentConfig
    seed: int
    num_views: int
    num_classes: int
    class_names: list[str]
    channels: int
    teacher_names: list[str]
    mean: list[float]
    std: list[float]
    store_path: str | None
    store_fingerprint: str | None
    targets_identity: dict[str, Any] = field(default_factory=dict)
    """What fixes the teachers' targets (checkpoint digests, k): a resume must not change it."""
    online: dict[str, nn.Module] = field(default_factory=dict)


def _check_names(option: str, given: Mapping[str, float], teachers: Sequence[str]) -> None:
    unknown = sorted(set(given) - set(teachers))
    if unknown:
        raise UserError(
            f"{option} names teacher {unknown[0]!r} but the teachers are {', '.join(teachers)}"
        )


def store_setup(
    store_path: str | Path,
    data: str,
    shard_set: Any,
    *,
    seed: int | None = None,
    image_size: int | None = None,
) -> _Setup:
    """Open a finished ``dump-logits`` store and check it matches the shards ``data`` names.

    Every mismatch (incomplete store, other shards or keys, another seed or view size, another
    class count) is a one-line :class:`UserError`, raised before any training or evaluation.
    ``seed``/``image_size`` are what the user asked for, if anything.
    """
    from ...stores.logit_store import LogitStore
    from ..augment.config import AugmentConfig
    from ..replay.student_stream import ShardRows

    seed_asked = seed
    store = LogitStore.open(store_path)
    dump = store.user_attrs  # what dump-logits recorded: fingerprint, seed, augment...
    for key in ("dataset_fingerprint", "seed", "augment"):
        if key not in dump:
            raise UserError(
                f"store {store_path} lacks the {key!r} attribute; was it made by dump-logits?"
            )
    if not store.is_complete():
        missing = list(store.missing_shards())
        raise UserError(
            f"store {store_path} is incomplete ({len(missing)} shard(s) missing, e.g. "
            f"{missing[0] if missing else '?'}); finish it with dump-logits first"
        )
    theirs = [(s.name, s.count) for s in store.shards]
    mine = [(s.name, s.num_samples) for s in shard_set.index.shards]
    if theirs != mine:
        diff = next(
            (
                f"store has {a} where the data has {b}"
                for a, b in zip(theirs, mine, strict=False)
                if a != b
            ),
            f"store lists {len(theirs)} shards, the data {len(mine)}",
        )
        raise UserError(f"store {store_path} was built from other shards than {data}: {diff}")
    if dump["dataset_fingerprint"] != shard_set.fingerprint():
        raise UserError(
            f"store {store_path} was built from other shards than {data}: the keys differ "
            "(dataset fingerprint mismatch)"
        )
    seed = int(dump["seed"])
    if seed_asked is not None and seed_asked != seed:
        raise UserError(
            f"store {store_path} was built with seed {seed}, but --seed is {seed_asked}"
        )
    aug = AugmentConfig.from_dict(dict(dump["augment"]))
    if image_size is not None and image_size != aug.image_size:
        raise UserError(
            f"store {store_path} holds {aug.image_size}px views, but --image-size is {image_size}"
        )
    index = shard_set.index
    if store.num_classes != index.num_classes:
        raise UserError(
            f"store {store_path} has {store.num_classes} classes, the data {index.num_classes}"
        )
    names = [t.name for t in store.teachers]
    rows = []
    for layout, path in zip(store.shards, shard_set.paths, strict=True):
        valid_mask = np.asarray(store.read_view(layout.name, 0).valid, dtype=bool)
        valid = np.flatnonzero(valid_mask).astype(np.int64)
        rows.append(ShardRows(name=layout.name, path=str(path), count=layout.count, valid=valid))
    return _Setup(
        shards=rows,
        aug=aug,
        seed=seed,
        num_views=store.num_views,
        num_classes=index.num_classes,
        class_names=list(index.class_names),
        channels=index.channels,
        teacher_names=names,
        mean=list(index.mean),
        std=list(index.std),
        store_path=str(store_path),
        store_fingerprint=str(dump["dataset_fingerprint"]),
        targets_identity={
            "topk": store.topk,
            "teachers": {t.name: t.checkpoint_sha256 for t in store.teachers},
        },
    )


def _online_setup(cfg: StudentTrainConfig, shard_set: Any, device: torch.device) -> _Setup:
    from ..augment.config import preset
    from ..replay.online_teachers import load_online_teachers
    from ..replay.student_stream import shard_rows_for

    index = shard_set.index
    loaded = load_online_teachers(
        cfg.teachers, device, num_classes=index.num_classes, in_chans=index.channels
    )
    teachers = loaded.models
    size = cfg.image_size or loaded.image_size
    if cfg.aug == "auto":
        aug = preset("small" if size <= 32 else "deit", size)
    else:
        aug = preset(cfg.aug, size)
    return _Setup(
        shards=shard_rows_for(shard_set.paths, [s.num_samples for s in index.shards]),
        aug=aug,
        seed=0 if cfg.seed is None else cfg.seed,
        num_views=cfg.views,
        num_classes=index.num_classes,
        class_names=list(index.class_names),
        channels=index.channels,
        teacher_names=list(teachers),
        mean=list(index.mean),
        std=list(index.std),
        store_path=None,
        store_fingerprint=None,
        targets_identity={
            "topk": index.num_classes,
            "teachers": loaded.checkpoint_sha256,
        },
        online=teachers,
    )


def teacher_targets(
    batch: Any,
    setup: _Setup,
    taus: Mapping[str, float],
    device: torch.device,
    images: Tensor,
) -> dict[str, Tensor]:
    """Per teacher the dense distribution at its τ: from the store's top-k, or live teachers."""
    if setup.online:
        from ..replay.online_teachers import teacher_probs

        return teacher_probs(setup.online, images, taus)
    from ...stores.topk import dense_target

    return {
        name: dense_target(lp, ix, setup.num_classes, taus[name]).to(device)
        for name, (lp, ix, _lse) in batch.teachers.items()
    }


# --------------------------------------------------------------------------------------------
# Checkpoints


def _run_identity(cfg: StudentTrainConfig, setup: _Setup, world_size: int) -> dict[str, Any]:
    """What a resumed run must share with the run it continues to reach the same weights."""
    ident = {k: v for k, v in cfg.to_dict().items() if k not in _RESUME_FREE}
    ident.update(
        world_size=world_size,
        resolved_seed=setup.seed,
        store_fingerprint=setup.store_fingerprint,
        teacher_names=setup.teacher_names,
        targets=setup.targets_identity,
        num_views=setup.num_views,
        augment=setup.aug.to_dict(),
    )
    return json.loads(json.dumps(ident))


def _rng_state() -> dict[str, Tensor]:
    # Only torch's state: every step re-seeds torch, and the data stream uses its own keyed
    # generators, so nothing else carries state across steps. Tensors keep the checkpoint
    # loadable with ``weights_only=True``.
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _checkpoint(
    model: nn.Module,
    setup: _Setup,
    cfg: StudentTrainConfig,
    *,
    train_state: dict[str, Any] | None,
    metrics: dict[str, Any],
) -> dict[str, Any]:
    """A plain-dict student checkpoint in the format ``evaluate`` reads (models/checkpoint)."""
    from ..models.checkpoint import make_checkpoint

    return make_checkpoint(
        model,  # type: ignore[arg-type]
        class_names=setup.class_names,
        metrics=metrics,
        config=json.loads(json.dumps(cfg.to_dict())),
        train_state=train_state,
    )


def _check_student_tokens(model_args: Mapping[str, Any], setup: _Setup, path: Path) -> None:
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
    from ..runtime.device import cpu_threads, resolve_device
    from ..runtime.distributed import init_distributed, shutdown

    if cfg.store is None and not cfg.teachers:
        raise UserError("train-student needs --store STORE (or --teacher NAME=ARCH:CKPT ...)")
    device = resolve_device(cfg.device)
    ctx = init_distributed(device)
    try:
        with cpu_threads(cfg.threads, cfg.workers, device):
            return _train(cfg, device, ctx)
    finally:
        shutdown(ctx)


def _prepare_run_dir(cfg: StudentTrainConfig, is_main: bool) -> Path:
    run_dir = Path(cfg.out)
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"--out {run_dir} exists and is not a directory")
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
    if is_main and cfg.overwrite:
        for name in (LAST, FINAL, METRICS, CONFIG):
            (run_dir / name).unlink(missing_ok=True)
    return run_dir


def _train(cfg: StudentTrainConfig, device: torch.device, ctx: Any) -> dict[str, Any]:
    from ..data.shard_set import resolve_shards
    from ..models.checkpoint import load_checkpoint, save_checkpoint
    from ..models.registry import build_student
    from ..replay.student_stream import ViewSource, iter_batches, plan_epoch
    from ..runtime.atomic import append_jsonl, atomic_write_json
    from ..runtime.distributed import barrier
    from ..train.losses import civt_loss
    from ..train.schedule import (
        OptimizerConfig,
        ScheduleConfig,
        build_optimizer,
        lr_at,
        set_lr,
    )

    run_dir = _prepare_run_dir(cfg, ctx.is_main)
    shard_set = resolve_shards(cfg.data)
    setup = (
        store_setup(cfg.store, cfg.data, shard_set, seed=cfg.seed, image_size=cfg.image_size)
        if cfg.store
        else _online_setup(cfg, shard_set, device)
    )
    val_set = resolve_shards(cfg.val) if cfg.val else None
    names = setup.teacher_names
    _check_names("--tau", cfg.taus, names)
    _check_names("--lambda", cfg.lambdas, names)
    taus = {n: cfg.taus.get(n, cfg.tau) for n in names}
    lambdas = {n: cfg.lambdas.get(n, cfg.lambda_kd) for n in names}
    if cfg.token_mode == "none":
        lambdas = {}
    if cfg.epochs > setup.num_views:
        warn(
            f"{cfg.epochs} epochs over {setup.num_views} stored view(s): views repeat "
            f"(epoch e uses view e mod {setup.num_views})"
        )

    world = ctx.world_size
    global_batch = cfg.batch_size * world
    lr = cfg.lr if cfg.lr is not None else 1e-3 * global_batch / 512
    num_valid = sum(len(s.valid) for s in setup.shards)
    steps_per_epoch = num_valid // global_batch
    if steps_per_epoch == 0:
        raise UserError(
            f"{num_valid} usable samples cannot fill one global batch of {global_batch}; "
            "lower --batch-size"
        )
    total_steps = steps_per_epoch * cfg.epochs
    schedule = ScheduleConfig(
        base_lr=lr,
        total_steps=total_steps,
        warmup_steps=warmup_steps_for(cfg.warmup_epochs, cfg.epochs, steps_per_epoch),
        min_lr=min(cfg.min_lr, lr),
    )

    torch.manual_seed(setup.seed)
    model = build_student(
        cfg.model,
        num_classes=setup.num_classes,
        in_chans=setup.channels,
        image_size=setup.aug.image_size,
        teacher_names=names if cfg.token_mode != "none" else (),
        token_mode=cfg.token_mode,
        patch_size=cfg.patch_size,
        mean=setup.mean,
        std=setup.std,
    ).to(device)
    optimizer = build_optimizer(model, OptimizerConfig(lr=lr, weight_decay=cfg.weight_decay))
    identity = _run_identity(cfg, setup, world)
    start_epoch, start_step, global_step = 0, 0, 0
    if cfg.resume:
        ckpt = load_checkpoint(run_dir / LAST)
        state = ckpt.get("train_state")
        if ckpt.get("kind") != "student" or not isinstance(state, dict):
            raise UserError(f"{run_dir / LAST} is not a resumable train-student checkpoint")
        if cfg.token_mode != "none":
            _check_student_tokens(ckpt.get("model_args", {}), setup, run_dir / LAST)
        theirs = state.get("identity", {})
        for key in sorted(set(identity) | set(theirs)):
            if identity.get(key) != theirs.get(key):
                raise UserError(
                    f"cannot resume {run_dir / LAST}: it was trained with {key}="
                    f"{theirs.get(key)!r}, this run has {identity.get(key)!r}"
                )
        model.load_state_dict(ckpt["state_dict"])
        optimizer.load_state_dict(state["optimizer"])
        start_epoch, start_step = int(state["epoch"]), int(state["step_in_epoch"])
        global_step = int(state["global_step"])
        rng = state.get("rng") or {}
        if "torch" in rng:
            torch.set_rng_state(rng["torch"])
        info(f"resuming {run_dir} at epoch {start_epoch + 1}, step {start_step}")

    train_model: nn.Module = model
    if ctx.is_distributed:
        from torch.nn.parallel import DistributedDataParallel

        train_model = DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )

    if ctx.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(run_dir / CONFIG, {**cfg.to_dict(), "resolved": identity, "lr": lr})

    source = ViewSource(
        aug=setup.aug,
        seed=setup.seed,
        num_classes=setup.num_classes,
        channels=setup.channels,
        store_path=setup.store_path,
        verify=cfg.verify_replay,
    )

    def save(epoch: int, step_in_epoch: int, path: Path, metrics: dict[str, Any]) -> None:
        if not ctx.is_main:
            return
        state = {
            "version": TRAIN_STATE_VERSION,
            "optimizer": optimizer.state_dict(),
            "schedule": asdict(schedule),
            "epoch": epoch,
            "step_in_epoch": step_in_epoch,
            "global_step": global_step,
            "rng": _rng_state(),
            "identity": identity,
        }
        save_checkpoint(path, _checkpoint(model, setup, cfg, train_state=state, metrics=metrics))

    val_metrics: dict[str, Any] = {}
    last_loss: dict[str, float] = {}
    started = time.perf_counter()
    images_seen = 0
    with make_progress(disable=not (cfg.progress and ctx.is_main)) as progress:
        task = progress.add_task("train-student", total=total_steps, unit="step")
        progress.update(task, completed=global_step)
        for epoch in range(start_epoch, cfg.epochs):
            plan = plan_epoch(
                setup.shards,
                seed=setup.seed,
                epoch=epoch,
                num_views=setup.num_views,
                rank=ctx.rank,
                world_size=world,
                batch_size=cfg.batch_size,
                shuffle_buffer=cfg.shuffle_buffer,
            )
            first = start_step if epoch == start_epoch else 0
            train_model.train()
            tick = time.perf_counter()
            for step, batch in enumerate(
                iter_batches(source, setup.shards, plan, start_step=first, workers=cfg.workers),
                start=first,
            ):
                torch.manual_seed(step_seed(setup.seed, epoch, step, ctx.rank))
                lr_now = lr_at(global_step, schedule)
                set_lr(optimizer, lr_now)
                images = batch.images.to(device, non_blocking=True)
                label_targets = batch.label_targets.to(device)
                probs = teacher_targets(batch, setup, taus, device, images)
                if cfg.token_mode == "none":
                    probs = {}
                outputs = train_model(images)
                loss = civt_loss(
                    outputs,
                    label_targets,
                    probs,
                    lambda_cls=cfg.lambda_cls,
                    lambdas=lambdas,
                    taus=taus,
                    label_smoothing=cfg.label_smoothing,
                )
                optimizer.zero_grad(set_to_none=True)
                loss.total.backward()
                optimizer.step()
                global_step += 1
                images_seen += len(images) * world
                now = time.perf_counter()
                rate = len(images) * world / max(now - tick, 1e-9)
                tick = now
                last_loss = {
                    "loss": float(loss.total.detach()),
                    "loss_cls": float(loss.cls.detach()),
                    **{f"loss_kd_{n}": float(v.detach()) for n, v in loss.kd.items()},
                }
                if ctx.is_main:
                    progress.update(
                        task,
                        advance=1,
                        info=f"epoch {epoch + 1}/{cfg.epochs} loss {last_loss['loss']:.4f}",
                    )
                    if global_step % cfg.log_every == 0 or step + 1 == plan.steps:
                        append_jsonl(
                            run_dir / METRICS,
                            {
                                "kind": "step",
                                "epoch": epoch,
                                "step": global_step,
                                "lr": lr_now,
                                "images_per_s": rate,
                                **last_loss,
                            },
                        )
                if cfg.save_every and global_step % cfg.save_every == 0 and step + 1 < plan.steps:
                    save(epoch, step + 1, run_dir / LAST, {})
            if val_set is not None:
                val_metrics = _validate(
                    model, val_set, setup.aug.image_size, cfg.batch_size, device, ctx, cfg.workers
                )
            if ctx.is_main:
                record = {"kind": "epoch", "epoch": epoch, "step": global_step, **last_loss}
                record.update({f"val_{k}": v for k, v in val_metrics.items()})
                append_jsonl(run_dir / METRICS, record)
                save(epoch + 1, 0, run_dir / LAST, {"val": val_metrics})
                if val_metrics:
                    heads = ", ".join(f"{k} {v:.3f}" for k, v in sorted(val_metrics.items()))
                    progress.console.print(f"epoch {epoch + 1}: val top-1 {heads}")
            barrier(ctx)
    elapsed = time.perf_counter() - started
    final = run_dir / FINAL
    if ctx.is_main:
        save_checkpoint(
            final, _checkpoint(model, setup, cfg, train_state=None, metrics={"val": val_metrics})
        )
        info(
            f"trained {cfg.model} for {cfg.epochs} epoch(s), {global_step} steps "
            f"({images_seen / max(elapsed, 1e-9):.0f} img/s this session) -> {final}"
        )
    barrier(ctx)
    return {
        "final_checkpoint": str(final),
        "last_checkpoint": str(run_dir / LAST),
        "epochs": cfg.epochs,
        "steps": global_step,
        "steps_per_epoch": steps_per_epoch,
        "val": val_metrics,
        "loss": last_loss,
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


def _validate(
    model: nn.Module,
    val_set: Any,
    image_size: int,
    batch_size: int,
    device: torch.device,
    ctx: Any,
    workers: int,
) -> dict[str, float]:
    """Top-1 per head on the validation shards (every rank takes its share; counts are summed)."""
    from .evaluate import evaluate_model

    result = evaluate_model(
        model,
        val_set,
        image_size=image_size,
        batch_size=batch_size,
        device=device,
        workers=workers,
        ctx=ctx,
        description="validate",
    )
    model.train()
    return {str(name): float(head["top1"]) for name, head in result["heads"].items()}
