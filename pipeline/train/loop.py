"""The one training loop: ``train-teacher`` and ``train-student`` both run :func:`fit`.

A stage builds its model and optimizer and hands :func:`fit` a :class:`TrainTask`: the batches
of an epoch (from a step on), one ``step`` (batch → loss terms), validation, and its checkpoint
metrics. The loop owns the rest, the same way for every stage:

- epochs, and inside the interrupted epoch the stream from the saved step on;
- torch re-seeded before every step from ``(seed, epoch, step, rank)`` (:func:`step_seed`), so
  drop-path and the like depend on the step's coordinates only, never on what ran before;
- the learning rate as a function of the global step (:func:`..train.schedule.lr_at`);
- loss terms accumulated on the device and synced to the host only when logged (a ``step``
  record every ``log_every`` steps, an epoch record at every epoch end), not every step;
- the resumable checkpoint every ``save_every`` steps and at every epoch end, after validation;
- metric records to ``metrics_file``, one format for every trainer (:func:`epoch_record`, and
  step records with the same keys less the epoch's), and, with ``tensorboard``, as TensorBoard
  scalars (:mod:`.tensorboard`);
- a loss that is not finite stops the run with one line naming the step and the term, and
  nothing poisoned is saved (:class:`Diverged`, :func:`first_non_finite`);
- DDP under torchrun (rank 0 writes, every rank validates its share), barriers at epoch ends,
  and the final checkpoint;
- one hint line when images/s collapse far below the first epoch's (:mod:`.throughput`).
- optionally, an early stop once a validation figure has not improved for ``until_plateau``
  epochs (:class:`Plateau`). The learning-rate schedule stays the one laid out for ``epochs``:
  stopping early ends it where it stands (the cosine has not reached its floor), so a run's
  rate at any step is the same whether or not it stops later.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from ..runtime.atomic import append_jsonl, atomic_write_bytes
from ..runtime.console import make_progress, warn
from ..runtime.distributed import DistContext, barrier
from ..runtime.errors import UserError
from ..runtime.precision import FP32, PrecisionPolicy, compile_model
from ..runtime.seeds import keyed_seed
from .checkpointer import Checkpointer
from .schedule import ScheduleConfig, lr_at, set_lr
from .state import TrainState
from .tensorboard import TensorBoardSink
from .throughput import CollapseWatch

_DISPLAY_EVERY = 25
_HINT_MIN_STEPS = 10
"""A step record's rate is checked for a collapse only over at least this many steps."""
"""Steps between host syncs for the progress bar's loss when no step records are written."""


class Diverged(UserError):
    """A loss term became NaN or infinite: the run stops, its last checkpoint stays as it was."""


def first_non_finite(window: list[Tensor]) -> tuple[int, list[int]] | None:
    """The first entry of ``window`` (one vector of loss terms per step) holding a NaN or an
    infinity, with the indices of those terms; None when every term is finite.

    One host sync for the whole window (a second only when something is not finite), so the
    check rides on the loop's existing syncs instead of costing one per step.
    """
    if not window:
        return None
    bad = ~torch.isfinite(torch.stack(window))
    if not bool(bad.any()):
        return None
    row = int(bad.any(dim=1).nonzero()[0].item())
    return row, [int(i) for i in bad[row].nonzero().flatten().tolist()]


@dataclass(kw_only=True)
class _FiniteGuard:
    """The loss terms of the steps since the last check, checked where the loop syncs anyway
    (step records, progress display, checkpoints, epoch ends): a run that diverged stops there,
    before anything computed after the bad step is written."""

    ctx: DistContext
    device: torch.device
    checkpoint: Path
    saved_step: int | None
    """Global step of the last checkpoint of this run on disk (None: none yet)."""
    window: list[Tensor] = field(default_factory=list)
    first_step: int = 0
    """Global step (counted from 1, as in the records) of ``window[0]``."""

    def add(self, global_step: int, terms: Tensor) -> None:
        if not self.window:
            self.first_step = global_step
        self.window.append(terms)

    def check(
        self, names: list[str], epoch: int, global_step: int, model: nn.Module | None = None
    ) -> None:
        """Raise :class:`Diverged` if a term since the last check (or, given ``model`` before
        a save, a weight) is not finite on any rank; then start a new window."""
        window, self.window = self.window, []
        found = first_non_finite(window)
        weights_bad = False
        if found is None and model is not None:
            flags = [torch.isfinite(p.detach()).all() for p in model.parameters()]
            weights_bad = bool(flags) and not bool(torch.stack(flags).all())
        local_bad = found is not None or weights_bad
        any_bad = local_bad
        if self.ctx.is_distributed:  # every rank reaches the same checks: they agree to stop
            flag = torch.tensor([float(local_bad)], device=self.device)
            torch.distributed.all_reduce(flag)
            any_bad = bool(flag.item() > 0)
        if not any_bad:
            return
        kept = (
            f"{self.checkpoint} keeps step {self.saved_step}"
            if self.saved_step is not None
            else "no checkpoint of this run was written"
        )
        where = f"(epoch {epoch + 1})"
        if found is not None:
            row, terms = found
            values = ", ".join(f"{names[i]}={window[row][i].item():g}" for i in terms)
            what = f"the loss is not finite at step {self.first_step + row} {where}: {values}"
        elif weights_bad:
            what = f"the weights are not finite after step {global_step} {where}"
        else:
            what = f"the loss is not finite on another rank by step {global_step} {where}"
        raise Diverged(f"{what}; stopped without saving, {kept} (a lower --lr often helps)")


def step_seed(seed: int, epoch: int, step: int, rank: int) -> int:
    """The torch seed of one training step (dropout, drop-path), from its coordinates only."""
    return keyed_seed("civt-step-v1", seed, epoch, step, rank)


@dataclass(frozen=True, slots=True)
class StepResult:
    """What one step computed: the loss to minimize and the scalars to log."""

    loss: Tensor
    """The scalar ``backward()`` runs on."""
    terms: dict[str, Tensor]
    """Named scalars (loss parts, accuracy) averaged into the metric records; same names every
    step of a run."""
    batch_size: int
    """Samples of this rank's batch."""


StepFn = Callable[[nn.Module, Any], StepResult]
"""One step's forward: ``(model, batch) -> StepResult``; no optimizer work inside."""


@dataclass(frozen=True, slots=True)
class EpochSummary:
    """One finished epoch, as the loop measured it."""

    epoch: int
    """0-based."""
    global_step: int
    """Optimizer steps of the run after this epoch."""
    lr: float
    """Learning rate of the epoch's last step."""
    mean: dict[str, float]
    """Each term averaged over the steps this session took in the epoch, over all ranks."""
    last: dict[str, float]
    """Each term of the epoch's last step on this rank."""
    images: int
    """Samples trained on in this epoch (this session, all ranks)."""
    seconds: float
    val: dict[str, float]
    """What :meth:`TrainTask.validate` returned ({} without validation data)."""


def epoch_record(summary: EpochSummary) -> dict[str, Any]:
    """The metrics-file line of an epoch, one format for every trainer: ``epoch`` counts from 1
    (the epochs finished, as the console shows them), then the step, the learning rate, the
    throughput, each term of the step averaged over the epoch under its own name (``loss``,
    ``loss_cls``, a teacher's training ``top1``...) and ``val_<name>`` per validation figure."""
    return {
        "kind": "epoch",
        "epoch": summary.epoch + 1,
        "step": summary.global_step,
        "lr": summary.lr,
        "images_per_s": summary.images / max(summary.seconds, 1e-9),
        "epoch_seconds": summary.seconds,
        **summary.mean,
        **{f"val_{name}": value for name, value in summary.val.items()},
    }


class TrainTask(Protocol):
    """What a stage supplies to :func:`fit`."""

    def batches(self, epoch: int, start_step: int) -> Iterable[Any]:
        """The epoch's batches from ``start_step`` on (the stream is planned per epoch)."""
        ...

    def step(self, model: nn.Module, batch: Any) -> StepResult:
        """Forward one batch through ``model`` (DDP-wrapped when distributed): a :data:`StepFn`."""
        ...

    def validate(self, model: nn.Module) -> dict[str, float]:
        """Figures on validation data after an epoch, on every rank ({} when there is none)."""
        ...

    def checkpoint_metrics(self, summary: EpochSummary | None) -> dict[str, Any]:
        """``metrics`` of a checkpoint written after ``summary`` (None: mid-epoch or final
        without a finished epoch in this session)."""
        ...


@dataclass(frozen=True, kw_only=True, slots=True)
class LoopConfig:
    """How :func:`fit` runs, resolved by the stage."""

    epochs: int
    steps_per_epoch: int
    schedule: ScheduleConfig
    seed: int
    """Base of every step's torch seed (:func:`step_seed`)."""
    metrics_file: Path
    log_every: int = 0
    """Write a ``step`` record every this many steps (0: epoch records only)."""
    save_every: int = 0
    """Also checkpoint every this many steps (0: only at epoch ends)."""
    final: Path | None = None
    """Where to write the finished model (None: the resumable checkpoint is the result)."""
    description: str = "train"
    """Label of the progress bar."""
    progress: bool = True
    clip_grad: float | None = None
    """Clip the gradients' global norm at this before every optimizer step (None: never)."""
    tensorboard: Path | None = None
    """Also write every metric record as TensorBoard scalars here (None: off)."""
    precision: PrecisionPolicy = FP32
    """Autocast of every step's forward and loss, and fp16's gradient scaler."""
    compile: bool = False
    """Run the steps through ``torch.compile`` (checkpoints and validation use the model)."""
    until_plateau: int | None = None
    """Stop once ``val[plateau_metric]`` has not improved for this many epochs in a row
    (None: train every epoch). Needs validation data."""
    plateau_metric: str = "top1"
    """The key of :meth:`TrainTask.validate`'s dict that :attr:`until_plateau` watches."""


PLATEAU_BEST = "plateau_best"
PLATEAU_SINCE = "plateau_since"
"""Keys the loop adds to every epoch record when it watches a plateau: the best value so far
and the epochs since it was reached. A resumed run reads them back from the metrics file."""


@dataclass(frozen=True, slots=True)
class Plateau:
    """Early stopping's state: the best value of the watched figure and the epochs since."""

    best: float | None = None
    since: int = 0
    """Finished epochs after the one that reached ``best``."""

    def after(self, value: float) -> Plateau:
        """The state after an epoch that measured ``value``: only a strict improvement resets
        the count (an equal value is no progress)."""
        if self.best is None or value > self.best:
            return Plateau(value, 0)
        return Plateau(self.best, self.since + 1)

    def stops(self, patience: int | None) -> bool:
        """Whether ``patience`` epochs without improvement have passed (never for None)."""
        return patience is not None and self.best is not None and self.since >= patience

    @staticmethod
    def from_records(lines: Iterable[str]) -> Plateau:
        """The state after the last epoch record of a metrics file that holds one."""
        state = Plateau()
        for line in lines:
            if PLATEAU_SINCE in line:
                record = json.loads(line)
                if PLATEAU_SINCE in record:
                    state = Plateau(float(record[PLATEAU_BEST]), int(record[PLATEAU_SINCE]))
        return state


@dataclass(frozen=True, slots=True)
class FitResult:
    """What :func:`fit` reports."""

    global_step: int
    last_epoch: EpochSummary | None
    """The last epoch this session finished (None when it resumed a finished run)."""
    images: int
    """Samples trained on in this session, all ranks."""
    seconds: float
    stopped_at: int | None = None
    """Epochs finished when :attr:`LoopConfig.until_plateau` stopped the run (None: it ran
    every epoch)."""

    @property
    def epoch_loss(self) -> dict[str, float]:
        """Each loss term of the last epoch averaged over its steps (all ranks): the figures
        the console and ``metrics.jsonl``'s epoch record show, and every trainer's JSON
        ``"loss"``; {} when the session trained no epoch."""
        return dict(self.last_epoch.mean) if self.last_epoch is not None else {}


def train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    step: StepFn,
    batch: Any,
    lr: float,
    clip_grad: float | None = None,
    *,
    precision: PrecisionPolicy = FP32,
    scaler: torch.amp.GradScaler | None = None,
) -> StepResult:
    """One optimizer update at learning rate ``lr``: forward (under ``precision``'s autocast),
    backward, optionally clip the gradients' global norm at ``clip_grad``, step.

    With ``scaler`` (fp16) the loss is scaled before backward and the gradients unscaled before
    clipping; a step whose gradients overflowed is skipped and the scale lowered.
    """
    set_lr(optimizer, lr)
    with precision.autocast():
        result = step(model, batch)
    optimizer.zero_grad(set_to_none=True)
    (result.loss if scaler is None else scaler.scale(result.loss)).backward()
    if clip_grad is not None:
        if scaler is not None:
            scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip_grad)
    if scaler is None:
        optimizer.step()
    else:
        scaler.step(optimizer)
        scaler.update()
    return result


def truncate_metrics(path: Path, global_step: int) -> None:
    """Drop metric records past ``global_step`` (written between the last checkpoint and a
    kill), so a resumed run's file reads like an uninterrupted one's."""
    if not path.exists():
        return
    kept = [
        line
        for line in path.read_text(encoding="utf-8").splitlines()
        if line.strip() and json.loads(line).get("step", 0) <= global_step
    ]
    atomic_write_bytes(path, "".join(f"{line}\n" for line in kept).encode())


def _summed(terms: dict[str, Tensor]) -> Tensor:
    return torch.stack([t.detach().double() for t in terms.values()])


def fit(
    task: TrainTask,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    cfg: LoopConfig,
    checkpointer: Checkpointer,
    *,
    ctx: DistContext,
    device: torch.device,
    resume_from: TrainState | None = None,
    on_epoch_end: Callable[[int, dict[str, Any]], None] | None = None,
) -> FitResult:
    """Train ``model`` for ``cfg.epochs`` epochs (the rest of them when resuming).

    Args:
        task: the stage's batches, step, validation and records.
        model: the unwrapped model (checkpointed and validated as is; DDP-wrapped for steps).
        optimizer: over ``model``'s parameters.
        cfg: epochs, schedule, seeds, files, cadences.
        checkpointer: writes the resumable checkpoint (main rank only).
        ctx: this process in the job.
        device: where the model is.
        resume_from: the restored position (:meth:`Checkpointer.restore`), or None.
        on_epoch_end: called on every rank with (finished epochs, epoch record) after that
            epoch's checkpoint is on disk.
    """
    start_epoch, start_step, global_step = 0, 0, 0
    if resume_from is not None:
        start_epoch, start_step = resume_from.epoch, resume_from.step_in_epoch
        global_step = resume_from.global_step
    if ctx.is_main:
        if resume_from is not None:
            truncate_metrics(cfg.metrics_file, global_step)
        else:
            cfg.metrics_file.unlink(missing_ok=True)
    plateau = Plateau()
    if resume_from is not None and cfg.until_plateau is not None:
        barrier(ctx)  # every rank reads the file rank 0 has just truncated
        if cfg.metrics_file.exists():
            lines = cfg.metrics_file.read_text(encoding="utf-8").splitlines()
            plateau = Plateau.from_records(lines)
    stopped_at: int | None = None

    net: nn.Module = model
    if ctx.is_distributed:
        net = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    if cfg.compile:
        net = compile_model(net, device)
    # fp16 only. Its state (loss scale, growth tracker) is checkpointed, so a resumed fp16 run
    # scales and skips exactly the steps an uninterrupted one would.
    scaler = cfg.precision.grad_scaler()
    if scaler is not None and resume_from is not None and resume_from.scaler:
        scaler.load_state_dict(resume_from.scaler)
    world = ctx.world_size
    guard = _FiniteGuard(
        ctx=ctx,
        device=device,
        checkpoint=checkpointer.path,
        saved_step=resume_from.global_step if resume_from is not None else None,
    )
    board = None
    if ctx.is_main and cfg.tensorboard is not None:
        resumed = resume_from.global_step if resume_from is not None else None
        board = TensorBoardSink(cfg.tensorboard, resumed_step=resumed)

    def log(record: dict[str, Any]) -> None:
        """Append one metric record (main rank): to metrics.jsonl, and to TensorBoard if on."""
        append_jsonl(cfg.metrics_file, record)
        if board is not None:
            board.write(record)

    last_epoch: EpochSummary | None = None
    watch = CollapseWatch(cpu=device.type == "cpu")

    def hint(line: str | None) -> None:
        if line is not None and ctx.is_main:
            warn(line)

    session_images = 0
    started = time.perf_counter()
    with (
        make_progress(disable=not (cfg.progress and ctx.is_main)) as progress,
        board if board is not None else contextlib.nullcontext(),
    ):
        bar = progress.add_task(
            cfg.description, total=cfg.steps_per_epoch * cfg.epochs, unit="step"
        )
        progress.update(bar, completed=global_step)
        for epoch in range(start_epoch, cfg.epochs):
            if plateau.stops(cfg.until_plateau):
                # Only at an epoch boundary: a plateau is judged after validation.
                stopped_at = epoch
                progress.update(bar, total=global_step)
                if ctx.is_main:
                    progress.console.print(
                        f"stopped after epoch {epoch}: val {cfg.plateau_metric} has not improved "
                        f"on {plateau.best:.4f} for {plateau.since} epochs (--until-plateau)"
                    )
                break
            first = start_step if epoch == start_epoch else 0
            net.train()
            epoch_started = log_started = time.perf_counter()
            epoch_sum: Tensor | None = None
            log_sum: Tensor | None = None
            last_terms: Tensor | None = None
            names: list[str] = []
            steps_done = log_steps = epoch_images = log_images = 0
            lr = lr_at(global_step, cfg.schedule)
            for step, batch in enumerate(task.batches(epoch, first), start=first):
                torch.manual_seed(step_seed(cfg.seed, epoch, step, ctx.rank))
                lr = lr_at(global_step, cfg.schedule)
                result = train_step(
                    net,
                    optimizer,
                    task.step,
                    batch,
                    lr,
                    cfg.clip_grad,
                    precision=cfg.precision,
                    scaler=scaler,
                )
                global_step += 1
                steps_done += 1
                log_steps += 1
                images = result.batch_size * world
                epoch_images += images
                log_images += images
                names = list(result.terms)
                last_terms = _summed(result.terms)
                guard.add(global_step, last_terms)
                epoch_sum = last_terms if epoch_sum is None else epoch_sum + last_terms
                log_sum = last_terms if log_sum is None else log_sum + last_terms
                last_of_epoch = step + 1 == cfg.steps_per_epoch
                log_now = cfg.log_every > 0 and (global_step % cfg.log_every == 0 or last_of_epoch)
                display_now = cfg.log_every == 0 and global_step % _DISPLAY_EVERY == 0
                if log_now or display_now:  # a sync anyway: nothing non-finite is logged
                    guard.check(names, epoch, global_step)
                if ctx.is_main and (log_now or display_now):
                    means = dict(zip(names, (log_sum / log_steps).tolist(), strict=True))
                    now = time.perf_counter()
                    # Not over a window holding the epoch's loader start-up.
                    if log_now and log_steps >= _HINT_MIN_STEPS and step + 1 - log_steps > first:
                        hint(watch.check(log_images / max(now - log_started, 1e-9)))
                    if log_now:
                        log(
                            {
                                "kind": "step",
                                "epoch": epoch + 1,  # counted from 1, as in epoch records
                                "step": global_step,
                                "lr": lr,
                                "images_per_s": log_images / max(now - log_started, 1e-9),
                                **means,
                            },
                        )
                    progress.update(
                        bar, info=f"epoch {epoch + 1}/{cfg.epochs} loss {means['loss']:.4f}"
                    )
                if log_now or display_now:
                    log_sum, log_steps, log_images = None, 0, 0
                    log_started = time.perf_counter()
                progress.update(bar, advance=1)
                if cfg.save_every and global_step % cfg.save_every == 0 and not last_of_epoch:
                    guard.check(names, epoch, global_step, model)
                    checkpointer.save(
                        model,
                        optimizer,
                        epoch=epoch,
                        step_in_epoch=step + 1,
                        global_step=global_step,
                        metrics=task.checkpoint_metrics(None),
                        scaler=scaler,
                    )
                    guard.saved_step = global_step
            totals = epoch_sum if epoch_sum is not None else torch.zeros(0, dtype=torch.float64)
            if ctx.is_distributed:
                torch.distributed.all_reduce(totals)
            guard.check(names, epoch, global_step, model)
            mean = dict(zip(names, (totals / max(steps_done * world, 1)).tolist(), strict=True))
            last = {} if last_terms is None else dict(zip(names, last_terms.tolist(), strict=True))
            seconds = time.perf_counter() - epoch_started
            hint(watch.epoch_done(epoch_images, seconds))
            val = task.validate(model)
            session_images += epoch_images
            last_epoch = EpochSummary(
                epoch=epoch,
                global_step=global_step,
                lr=lr,
                mean=mean,
                last=last,
                images=epoch_images,
                seconds=seconds,
                val=val,
            )
            record = epoch_record(last_epoch)
            if cfg.until_plateau is not None:
                if cfg.plateau_metric not in val:
                    raise UserError(
                        f"stopping at a plateau watches the validation {cfg.plateau_metric!r}, "
                        "which this run does not measure (give it validation data)"
                    )
                plateau = plateau.after(float(val[cfg.plateau_metric]))
                record.update({PLATEAU_BEST: plateau.best, PLATEAU_SINCE: plateau.since})
            if ctx.is_main:
                log(record)
                checkpointer.save(
                    model,
                    optimizer,
                    epoch=epoch + 1,
                    step_in_epoch=0,
                    global_step=global_step,
                    metrics=task.checkpoint_metrics(last_epoch),
                    scaler=scaler,
                )
                guard.saved_step = global_step
                progress.console.print(_epoch_line(last_epoch, cfg.epochs))
            barrier(ctx)
            if on_epoch_end is not None:
                on_epoch_end(epoch + 1, record)
    seconds = time.perf_counter() - started
    if cfg.final is not None:
        checkpointer.save_final(model, cfg.final, task.checkpoint_metrics(last_epoch))
        barrier(ctx)
    return FitResult(
        global_step=global_step,
        last_epoch=last_epoch,
        images=session_images,
        seconds=seconds,
        stopped_at=stopped_at,
    )


def _epoch_line(summary: EpochSummary, epochs: int) -> str:
    terms = " ".join(f"{name} {value:.4f}" for name, value in summary.mean.items())
    val = "".join(f" val {name} {value:.3f}" for name, value in sorted(summary.val.items()))
    rate = summary.images / max(summary.seconds, 1e-9)
    return (
        f"epoch {summary.epoch + 1}/{epochs}: {terms}{val} lr {summary.lr:.2e} "
        f"{rate:,.0f} img/s ({summary.seconds:.1f} s)"
    )
