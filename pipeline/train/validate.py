"""Validation: top-1/top-5 accuracy of a model on a shard set, one pass, every rank its share.

Teachers have one output, reported as the head ``"logits"``. Students report every head —
``"cls"``, one per teacher token, and ``"mean"`` (the mean of the distinct heads, as in the
official Co-advise code) — with the model's inference head (:func:`..models.heads.inference_head`:
the class token for most students, the mean for the aligned CivT) as the headline figure.

:func:`evaluate_model` is what the training stages call at epoch ends and what ``evaluate`` runs;
extra :class:`BatchObserver` objects let comparisons against other per-row data (e.g. stored
teacher logits, looked up by the batch's shard and position) ride along the same pass.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import torch
from torch import Tensor, nn

from ..data.imageio import Decoder
from ..data.streams import EvalBatch, eval_batches
from ..data.zoo_eval import ZooEval
from ..runtime.console import make_progress, warn
from ..runtime.distributed import DistContext
from ..runtime.errors import UserError
from ..runtime.precision import FP32, PrecisionPolicy
from .metrics import TopKCounter

if TYPE_CHECKING:
    from ..models.normalize import NormalizedModel

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


def headline_head(heads: dict[str, Any], preferred: str = CLS_HEAD) -> str:
    """The head whose accuracy is the top-level figure: ``preferred`` (a student's inference
    head) when reported, else ``cls``, else the only one (a teacher's)."""
    if preferred in heads:
        return preferred
    return CLS_HEAD if CLS_HEAD in heads else next(iter(heads))


@torch.no_grad()
def load_for_data(
    checkpoint: Path | None,
    shard_set: Any,
    *,
    device: torch.device,
    compile: bool = False,
    arch: str | None = None,
) -> tuple[NormalizedModel, nn.Module, dict[str, Any], Path]:
    """The model in ``checkpoint`` (with ``arch``: a published weights file or timm model,
    loaded as dump-logits loads a teacher), checked against ``shard_set`` (classes, channels),
    for a scoring pass: ``(model, scored, meta, weights)`` where ``scored`` is what to call
    (channels-last for a convolutional teacher on CUDA, compiled with ``compile``) and
    ``weights`` the file the weights came from (a timm model's may be in timm's cache). Class
    names that differ from the data's with the same count are a warning: scoring is by class
    index."""
    from ..models.checkpoint import model_from_checkpoint
    from ..models.factory import is_convolutional
    from ..models.teacher_spec import TeacherSpec, check_model_source
    from ..runtime.precision import prepare_model

    check_model_source(checkpoint, arch)
    if arch is not None:
        from ..models.teachers import load_teacher, teacher_weights

        spec = TeacherSpec(name="teacher", arch=arch, checkpoint=checkpoint)
        weights = teacher_weights(spec)
        model, meta = load_teacher(
            spec, device, num_classes=shard_set.num_classes, channels=shard_set.channels
        )
    else:
        assert checkpoint is not None  # check_model_source
        weights = checkpoint
        model, meta = model_from_checkpoint(
            checkpoint,
            device=device,
            expect_num_classes=shard_set.num_classes,
            in_chans=shard_set.channels,
        )
    theirs = list(meta.get("class_names") or [])
    if theirs and theirs != list(shard_set.class_names):
        # Same count, other names: most likely another dataset; foreign shards scanned without
        # an index.json are named "0".."C-1", so this is a warning, not an error.
        warn(
            f"{weights} was trained on classes {theirs[:3]}... but the data names them "
            f"{list(shard_set.class_names)[:3]}...; scoring by class index"
        )
    convolutional = meta["kind"] == "teacher" and is_convolutional(meta["arch"])
    scored = prepare_model(model, device, convolutional=convolutional, compile=compile)
    return model, scored, meta, Path(weights)


@torch.no_grad()
def head_batches(
    model: nn.Module,
    shard_set: object,
    *,
    image_size: int,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    workers: int = 0,
    ctx: DistContext | None = None,
    description: str = "evaluate",
    precision: PrecisionPolicy = FP32,
    decoder: Decoder = "torchvision",
    zoo: ZooEval | None = None,
    render_device: str = "cpu",
) -> Iterator[tuple[dict[str, Tensor], EvalBatch]]:
    """Every evaluation batch of this rank's share of ``shard_set`` with ``model``'s float32
    logits per head (:func:`head_outputs`), under a progress bar (arguments as
    :func:`evaluate_model`). The one forward pass of ``evaluate`` and ``predict``; the model is
    put in eval mode and left there."""
    ctx = ctx or DistContext()
    device = torch.device(device)
    model.eval()
    total = shard_set.num_samples  # type: ignore[attr-defined]
    with make_progress(disable=not ctx.is_main) as progress:
        task = progress.add_task(description, total=total, unit="img")
        batches = eval_batches(
            shard_set,
            image_size=image_size,
            batch_size=batch_size,
            rank=ctx.rank,
            world_size=ctx.world_size,
            workers=workers,
            decoder=decoder,
            zoo=zoo,
            render_device=render_device,
        )
        for batch in batches:
            images = batch.images.to(device, non_blocking=True)
            with precision.autocast():
                outputs = model(images)
            yield {name: logits.float() for name, logits in head_outputs(outputs).items()}, batch
            progress.advance(task, len(batch.labels) * ctx.world_size)


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
    precision: PrecisionPolicy = FP32,
    decoder: Decoder = "torchvision",
    zoo: ZooEval | None = None,
    render_device: str = "cpu",
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
        precision: autocast of the forwards (default: plain fp32); heads are scored in float32.
        decoder: the image decoder (:mod:`..data.imageio`, resolved).
        zoo: a zoo model's own evaluation view (``evaluate --preprocess zoo``) instead of ours.
        render_device: where the views are made (resolved: ``cpu`` or ``cuda:N``, the latter
            with ``workers`` 0; :mod:`..augment.render_device`).

    Returns:
        ``{"top1", "top5", "num_samples", "heads": {name: {"top1", "top5"}}}`` with
        fractions in [0, 1] (the top level is the model's inference head), plus one entry per
        observer.
    """
    ctx = ctx or DistContext()
    device = torch.device(device)
    counter = TopKCounter()
    for heads, batch in head_batches(
        model,
        shard_set,
        image_size=image_size,
        batch_size=batch_size,
        device=device,
        workers=workers,
        ctx=ctx,
        description=description,
        precision=precision,
        decoder=decoder,
        zoo=zoo,
        render_device=render_device,
    ):
        counter.update(heads, batch.labels)
        for observer in observers:
            observer.observe(heads, batch)
    if ctx.is_distributed:
        _ensure_heads(counter, model, image_size, device, shard_set)
        counter.all_reduce(device if device.type == "cuda" else None)
    if counter.num_samples == 0:
        raise UserError("the evaluation data holds no samples")
    from ..models.heads import inference_head

    heads_acc = counter.result()
    top = heads_acc[headline_head(heads_acc, inference_head(model))]
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
