"""``civt-pipe predict``: one row per image of a shard set — key, label, the top-k classes and
probabilities of every head (optionally every logit) — written as JSONL, CSV, ``.npz`` or
``.npy`` (:mod:`.rows`).

The pass is the one ``evaluate`` makes (:func:`..train.validate.head_batches`: same loading,
views, precision and heads), so the rows' top-1 agrees with ``evaluate``'s figures. Rows come
out in the shard set's order (shard, then position in the tar) whatever the worker count.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from ...runtime.atomic import check_output_file
from ...runtime.errors import UserError
from .config import PredictConfig
from .rows import HeadRows, Rows, write_rows


def predict(cfg: PredictConfig) -> dict[str, Any]:
    """Write ``cfg.out`` and return a summary: the file, rows, heads, ``topk``, the source and
    each written head's top-1 over the rows (fractions in [0, 1])."""
    from ...data.imageio import resolve_decoder
    from ...data.shard_set import resolve_complete_shards, shard_keys
    from ...models.heads import inference_head
    from ...runtime.device import cpu_threads, resolve_device
    from ...runtime.precision import PrecisionPolicy
    from ...train.validate import TEACHER_HEAD, head_batches, load_for_data

    check_output_file(cfg.out)
    if cfg.out.exists() and not cfg.overwrite:
        raise UserError(f"{cfg.out} exists; pass --overwrite to replace it")
    device = resolve_device(cfg.device)
    policy = PrecisionPolicy.resolve(cfg.precision, device)
    decoder = resolve_decoder(cfg.decoder, device_type=device.type, workers=cfg.workers)
    shard_set = resolve_complete_shards(cfg.data)
    model, scored, meta, weights = load_for_data(
        cfg.checkpoint, shard_set, device=device, arch=cfg.arch
    )
    wanted = cfg.head
    if wanted is None and cfg.out.suffix == ".npy":
        wanted = TEACHER_HEAD if meta["kind"] == "teacher" else inference_head(model)
    keep_logits = cfg.logits or cfg.out.suffix == ".npy"
    keys = shard_keys(shard_set)
    where: list[Tensor] = []
    labels: list[Tensor] = []
    parts: dict[str, list[tuple[Tensor, Tensor, Tensor | None]]] = {}
    with cpu_threads(cfg.threads, cfg.workers, device):
        for heads, batch in head_batches(
            scored,
            shard_set,
            image_size=int(meta["image_size"]),
            batch_size=cfg.batch_size,
            device=device,
            workers=cfg.workers,
            precision=policy,
            decoder=decoder,
            description="predict",
        ):
            if wanted is not None:
                if wanted not in heads:
                    raise UserError(
                        f"unknown head {wanted!r}; {meta['arch']} has: {', '.join(heads)}"
                    )
                heads = {wanted: heads[wanted]}
            where.append(torch.stack([batch.shards, batch.positions], dim=1))
            labels.append(batch.labels)
            for name, logits in heads.items():
                probs = logits.softmax(dim=1)
                top = probs.topk(min(cfg.topk, probs.shape[1]), dim=1)
                parts.setdefault(name, []).append(
                    (top.indices.cpu(), top.values.cpu(), logits.cpu() if keep_logits else None)
                )
    if not where:
        raise UserError("the data holds no samples")
    at = torch.cat(where).numpy()
    order = np.lexsort((at[:, 1], at[:, 0]))  # shard, then position in the tar
    rows = Rows(
        keys=[keys[s][p] for s, p in at[order].tolist()],
        labels=torch.cat(labels).numpy()[order],
        heads={name: _head_rows(chunks, order) for name, chunks in parts.items()},
        class_names=tuple(shard_set.class_names),
    )
    write_rows(rows, cfg.out)
    return {
        "out": str(cfg.out),
        "rows": len(rows.keys),
        "heads": list(rows.heads),
        "topk": cfg.topk,
        "logits": keep_logits,
        "top1": {
            name: float((head.classes[:, 0] == rows.labels).mean())
            for name, head in rows.heads.items()
        },
        "checkpoint": str(weights),
        "arch": meta["arch"],
        "kind": meta["kind"],
        "precision": policy.precision,
    }


def _head_rows(chunks: list[tuple[Tensor, Tensor, Tensor | None]], order: np.ndarray) -> HeadRows:
    classes, probs, logits = zip(*chunks, strict=True)
    return HeadRows(
        classes=torch.cat(classes).numpy()[order],
        probs=torch.cat(probs).numpy()[order],
        logits=None if logits[0] is None else torch.cat(logits).numpy()[order],  # type: ignore[arg-type]
    )
