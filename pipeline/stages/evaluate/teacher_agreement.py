"""``evaluate --store``: how far each head of a model is from each teacher (paper Table 4).

The store written by ``dump-logits`` on the evaluation shards holds, per (row, view), every
teacher's top-k log-probabilities for an *augmented* view whose parameters are stored. The KL is
only meaningful on those same views, so this module rebuilds them exactly as ``train-student``
does (:func:`..replay.segments.render_segment`: key check, replay from the
stored parameters, digest check), runs the model on them and averages, per head ``h`` and teacher
``t``, ``KL(p_t ‖ softmax(z_h))`` at τ = 1 over every valid (row, view), where ``p_t`` is the
store's dense target (:func:`civt_pipe.stores.topk.dense_target`).

:class:`KLAccumulator` is the pure part (tensors in, means out); :func:`teacher_agreement` is the
loop over the store.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ...runtime.errors import UserError


def kl_per_row(target: Tensor, logits: Tensor) -> Tensor:
    """``KL(target ‖ softmax(logits))`` per row, float64 ``[N]``; ``0·log 0`` counts as 0."""
    p = target.to(torch.float64)
    log_q = torch.log_softmax(logits.to(torch.float64), dim=-1)
    return (torch.xlogy(p, p) - p * log_q).sum(-1)


@dataclass(slots=True)
class KLAccumulator:
    """Running mean over (row, view) of ``KL(p_t ‖ softmax(z_h))`` for every head and teacher."""

    sums: dict[str, dict[str, float]] = field(default_factory=dict)
    """Per head, per teacher: the sum of the per-row KL seen so far."""
    count: int = 0
    """Rows seen so far (each one a (row, view) pair)."""

    def update(self, heads: Mapping[str, Tensor], targets: Mapping[str, Tensor]) -> None:
        """Add a batch: ``heads`` maps head name → logits ``[N, C]``, ``targets`` maps teacher
        name → dense probabilities ``[N, C]`` of the same rows."""
        n = None
        for tensor in [*heads.values(), *targets.values()]:
            if n is None:
                n = int(tensor.shape[0])
            elif int(tensor.shape[0]) != n:
                raise ValueError("every head and target of a batch must have the same rows")
        if not n:
            return
        for head, logits in heads.items():
            row = self.sums.setdefault(head, {})
            for teacher, target in targets.items():
                kl = kl_per_row(target.to(logits.device), logits.detach())
                row[teacher] = row.get(teacher, 0.0) + float(kl.sum())
        self.count += n

    def result(self) -> dict[str, dict[str, float]]:
        """``{head: {teacher: mean KL}}`` (nats)."""
        if self.count == 0:
            raise UserError("the store holds no valid row to compare the model with")
        return {
            head: {teacher: total / self.count for teacher, total in row.items()}
            for head, row in self.sums.items()
        }


@torch.inference_mode()
def teacher_agreement(
    model: nn.Module,
    meta: Mapping[str, Any],
    shard_set: Any,
    *,
    store: str | Path,
    data: str,
    views: int | None = None,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    progress: bool = True,
    decoder: str = "auto",
    render_device: str = "auto",
) -> dict[str, dict[str, float]]:
    """Mean ``KL(teacher ‖ head)`` at τ = 1 over the store's views, ``{head: {teacher: kl}}``.

    Args:
        model: the evaluated model (as from ``model_from_checkpoint``); put in eval mode.
        meta: its checkpoint metadata (``num_classes``, ``image_size``).
        shard_set: the evaluation ``ShardSet`` the store was dumped from.
        store: the ``dump-logits`` store of ``shard_set``.
        data: how the user named the shards (for error messages).
        views: compare on the first ``views`` views only (None: all of them).
        batch_size: rows per forward pass.
        device: where the model is.
        progress: show a progress bar.
        decoder: ``--decoder``; must be ``auto`` or the store's decoder (the views are replayed).
        render_device: ``--render-device``; must be ``auto`` or the store's render device type.
    """
    from ....stores.logit_store import LogitStore
    from ...data.planning import Segment
    from ...replay.binding import bind_store
    from ...replay.segments import ViewSource, render_segment
    from ...runtime.console import make_progress
    from ...train.validate import head_outputs

    store = Path(store)
    if not store.exists():
        raise UserError(f"store {store} does not exist")
    # The checks train-student makes, as is, and its --store-views range.
    device = torch.device(device)
    setup = bind_store(
        store,
        data,
        shard_set,
        views=views,
        decoder=decoder,
        device_type=device.type,
        render_device=render_device,
    )
    # bind_store opened and checked the whole store; repeating the check would re-read every file.
    logits_store = LogitStore.open(store, check=False)
    if logits_store.num_classes != int(meta["num_classes"]):
        raise UserError(
            f"store {store} has {logits_store.num_classes} classes but the checkpoint has "
            f"{meta['num_classes']}"
        )
    if setup.aug.image_size != int(meta["image_size"]):
        raise UserError(
            f"store {store} holds {setup.aug.image_size}px views but the checkpoint takes "
            f"{meta['image_size']}px images"
        )
    num_views = setup.num_views
    source = ViewSource(
        aug=setup.aug,
        seed=setup.seed,
        num_classes=setup.num_classes,
        channels=setup.channels,
        store=setup.store,
        verify="all",
        decoder=setup.decoder,
        render_device=setup.render_device,
    )
    model.eval()
    acc = KLAccumulator()
    pending: list[tuple[Tensor, dict[str, Tensor]]] = []
    pending_rows = 0

    def flush() -> None:
        nonlocal pending_rows
        if not pending:
            return
        images = torch.cat([im for im, _ in pending]).to(device)
        targets = {t: torch.cat([tg[t] for _, tg in pending]).to(device) for t in pending[0][1]}
        acc.update(head_outputs(model(images)), targets)
        pending.clear()
        pending_rows = 0

    total = sum(len(s.valid) for s in setup.shards) * num_views
    with make_progress(disable=not progress) as bar:
        task = bar.add_task("KL to teachers", total=total, unit="view")
        for shard in setup.shards:
            if not len(shard.valid):
                continue
            segment = Segment(shard=0, positions=shard.valid, start=0)
            needed = np.ones(len(shard.valid), dtype=bool)
            for view in range(num_views):
                for block in render_segment(source, logits_store, shard, segment, view, needed):
                    targets = {
                        name: topk.dense(setup.num_classes) for name, topk in block.teachers.items()
                    }
                    pending.append((block.images, targets))
                    pending_rows += len(block.images)
                    if pending_rows >= batch_size:
                        flush()
                    bar.advance(task, len(block.images))
        flush()
    return acc.result()
