"""``civt-pipe evaluate``: top-1/top-5 accuracy of any checkpoint we make, on a shard set.

Teachers have one output, reported as the head ``"logits"``. Students report every head —
``"cls"``, one per teacher token, and ``"mean"`` (the mean of the distinct heads, as in the
official Co-advise code) — with the class-token head as the headline figure (the paper's text).

:func:`evaluate_model` is the loop the training stages call for validation; it takes extra
:class:`BatchObserver` objects so comparisons against other per-row data (e.g. stored teacher
logits, looked up by the batch's shard and position) can ride along the same pass.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from ..data.streams import EvalBatch, EvalStream, make_loader
from ..runtime.console import make_progress, warn
from ..runtime.distributed import DistContext
from ..runtime.errors import UserError
from ..train.metrics import TopKCounter

TEACHER_HEAD = "logits"
"""Head name under which a teacher's (single) output is reported."""
CLS_HEAD = "cls"
MEAN_HEAD = "mean"


class BatchObserver(Protocol):
    """Something that looks at every evaluation batch alongside the accuracy counts."""

    name: str
    """Key of :meth:`result` in the returned dict."""

    def observe(self, outputs: dict[str, Tensor], batch: EvalBatch) -> None:
        """See one batch: the model's logits per head and the batch (rows, labels)."""

    def result(self, ctx: DistContext, device: torch.device) -> Any:
        """The summary after the last batch (reduced over ranks when distributed)."""


def head_outputs(outputs: Tensor | dict[str, Tensor]) -> dict[str, Tensor]:
    """Every reported head of a model's forward output, by name.

    A teacher's tensor becomes ``{"logits": ...}``; a student's dict is kept and gains
    ``"mean"`` when it has more than the class head.
    """
    if isinstance(outputs, Tensor):
        return {TEACHER_HEAD: outputs}
    from ..models.heads import prediction

    heads = dict(outputs)
    if len(heads) > 1:
        heads[MEAN_HEAD] = prediction(outputs, MEAN_HEAD)
    return heads


def headline_head(heads: dict[str, Any]) -> str:
    """The head whose accuracy is the top-level figure: ``cls`` for students, else the only one."""
    return CLS_HEAD if CLS_HEAD in heads else next(iter(heads))


@torch.no_grad()
def evaluate_model(
    model: nn.Module,
    shard_set: object,
    *,
    image_size: int,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    workers: int = 0,
    ctx: DistContext | None = None,
    observers: tuple[BatchObserver, ...] = (),
    description: str = "evaluate",
) -> dict[str, Any]:
    """Top-1/top-5 accuracy of ``model`` on every sample of ``shard_set``.

    Under torchrun each rank evaluates its share of the samples and the counts are summed, so
    every rank returns the same figures. The model is put in eval mode and left there.

    Args:
        model: a teacher (logits tensor) or student (dict of logits per head), unwrapped.
        shard_set: the ``ShardSet`` to evaluate on.
        image_size: side of the center-cropped evaluation view (the model's input size).
        batch_size: samples per forward pass.
        device: where the model is.
        workers: DataLoader worker processes decoding the shards.
        ctx: distributed context (None: a single process).
        observers: extra per-batch consumers; their results are added under their ``name``.
        description: label of the progress bar.

    Returns:
        ``{"top1", "top5", "num_samples", "heads": {name: {"top1", "top5"}}}`` with
        fractions in [0, 1], plus one entry per observer.
    """
    ctx = ctx or DistContext()
    device = torch.device(device)
    model.eval()
    stream = EvalStream(
        shard_set,
        image_size=image_size,
        batch_size=batch_size,
        rank=ctx.rank,
        world_size=ctx.world_size,
        workers=workers,
    )
    counter = TopKCounter()
    total = shard_set.num_samples  # type: ignore[attr-defined]
    with make_progress(disable=not ctx.is_main) as progress:
        task = progress.add_task(description, total=total, unit="img")
        for batch in make_loader(stream, workers=workers):
            images = batch.images.to(device, non_blocking=True)
            heads = head_outputs(model(images))
            counter.update(heads, batch.labels)
            for observer in observers:
                observer.observe(heads, batch)
            progress.advance(task, len(batch.labels) * ctx.world_size)
    if ctx.is_distributed:
        _ensure_heads(counter, model, image_size, device, shard_set)
        counter.all_reduce(device if device.type == "cuda" else None)
    if counter.num_samples == 0:
        raise UserError("the evaluation data holds no samples")
    heads_acc = counter.result()
    top = heads_acc[headline_head(heads_acc)]
    result: dict[str, Any] = {
        "top1": top["top1"],
        "top5": top["top5"],
        "num_samples": counter.num_samples,
        "heads": heads_acc,
    }
    for observer in observers:
        result[observer.name] = observer.result(ctx, device)
    return result


def _ensure_heads(
    counter: TopKCounter, model: nn.Module, image_size: int, device: torch.device, shard_set: object
) -> None:
    """Give a rank that saw no samples the same head names as the others (for all_reduce)."""
    if counter.hits:
        return
    channels = shard_set.channels  # type: ignore[attr-defined]
    probe = torch.zeros(1, channels, image_size, image_size, device=device)
    for name in head_outputs(model(probe)):
        counter.hits[name] = [0] * len(counter.ks)


@dataclass(kw_only=True, slots=True)
class EvaluateConfig:
    """What ``civt-pipe evaluate`` runs."""

    checkpoint: Path
    """A teacher or student checkpoint (``train-teacher`` output, ``last.pt``, ``final.pt``)."""
    data: str
    """Shard directory or brace pattern."""
    batch_size: int = 256
    """Samples per forward pass."""
    device: str = "auto"
    """``auto``, ``cpu``, ``cuda`` or ``cuda:N``."""
    workers: int = 0
    """DataLoader worker processes decoding the shards."""
    threads: int | None = None
    """Torch CPU threads (default: this process's cores minus one per DataLoader worker)."""
    store: Path | None = None
    """A ``dump-logits`` store of the same shards: also report each head's KL to each teacher."""
    store_views: int | None = None
    """Compare on the store's first N views only (None: all of them)."""

    def __post_init__(self) -> None:
        self.checkpoint = Path(self.checkpoint)
        if self.store is not None:
            self.store = Path(self.store)
        if self.store_views is not None and self.store is None:
            raise UserError("--store-views needs --store")
        if self.batch_size < 1:
            raise UserError(f"--batch-size must be at least 1, got {self.batch_size}")
        if self.workers < 0:
            raise UserError(f"--workers must be 0 or more, got {self.workers}")


def evaluate(cfg: EvaluateConfig) -> dict[str, Any]:
    """Load ``cfg.checkpoint``, check it fits the data, and return :func:`evaluate_model`'s dict
    plus ``checkpoint``, ``arch`` and ``kind`` (and, with ``cfg.store``, ``kl_to_teachers``:
    ``{head: {teacher: KL}}`` from :func:`~civt_pipe.pipeline.stages.teacher_agreement.
    teacher_agreement`, and ``store``)."""
    from ..data.shard_set import resolve_shards
    from ..models.checkpoint import model_from_checkpoint
    from ..runtime.device import cpu_threads, resolve_device

    device = resolve_device(cfg.device)
    shard_set = resolve_shards(cfg.data)
    if not cfg.checkpoint.is_file():
        raise UserError(f"checkpoint file {cfg.checkpoint} does not exist")
    model, meta = model_from_checkpoint(
        cfg.checkpoint,
        device=device,
        expect_num_classes=shard_set.num_classes,
        in_chans=shard_set.channels,
    )
    theirs = list(meta.get("class_names") or [])
    if theirs and theirs != list(shard_set.class_names):
        # Same count, other names: most likely another dataset; foreign shards scanned without
        # an index.json are named "0".."C-1", so this is a warning, not an error.
        warn(
            f"{cfg.checkpoint} was trained on classes {theirs[:3]}... but {cfg.data} names them "
            f"{list(shard_set.class_names)[:3]}...; scoring by class index"
        )
    with cpu_threads(cfg.threads, cfg.workers, device):
        agreement = None
        if cfg.store is not None:
            from .teacher_agreement import teacher_agreement

            # Before the accuracy pass, so a store that does not fit fails at once.
            agreement = teacher_agreement(
                model,
                meta,
                shard_set,
                store=cfg.store,
                data=cfg.data,
                views=cfg.store_views,
                batch_size=cfg.batch_size,
                device=device,
            )
        result = evaluate_model(
            model,
            shard_set,
            image_size=int(meta["image_size"]),
            batch_size=cfg.batch_size,
            device=device,
            workers=cfg.workers,
        )
    result.update(checkpoint=str(cfg.checkpoint), arch=meta["arch"], kind=meta["kind"])
    if agreement is not None:
        result.update(kl_to_teachers=agreement, store=str(cfg.store))
    return result
