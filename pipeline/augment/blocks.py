"""Mix blocks and views: the block logic both stages share, so their tensors cannot drift apart.

A shard is cut into *mix blocks* of ``cfg.mix_block`` consecutive positions (the last one may be
shorter). Mixup/cutmix partners are drawn inside a block, so stage two can rebuild any mixed view
from a bounded buffer of decoded images.

- Stage one (``dump-logits``) calls :func:`sample_and_render`: it draws every view's parameters
  from the keyed RNG and renders the views the teachers will see.
- Stage two (``train-student``) calls :func:`replay` with the parameters stored for one view and
  gets the identical tensor back (same digest, bit for bit).

Samples that failed to decode (``Sample.image is None``, kept by ``--on-error skip`` so positions
stay aligned) have no view: their rows get neutral parameters (``empty_params``), an all-zero
view, digest 0 and view label -1, and a view whose drawn partner is such a sample is left unmixed
(``unmix_rows``), so the stored parameters say what the teachers really saw.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from ..data.reader import Sample
from .config import AugmentConfig
from .params import empty_params, sample_block_params, unmix_rows
from .render import (
    dominant_labels,
    lookup_partner_labels,
    mixed_targets,
    render_block,
    view_digests,
)

SKIPPED_LABEL = -1
"""View label of a row whose image could not be decoded (``--on-error skip``)."""


def iter_blocks(samples: Iterable[Sample], block: int) -> Iterator[list[Sample]]:
    """Group a shard's samples, in shard order, into mix blocks of ``block`` consecutive positions.

    Blocks are aligned on positions (``position // block``), not on arrival, so both stages agree
    on block boundaries even when they start reading at different places.
    """
    if block < 1:
        raise ValueError(f"mix block size must be at least 1, got {block}")
    current: list[Sample] = []
    current_id: int | None = None
    for sample in samples:
        block_id = sample.position // block
        if current and block_id != current_id:
            yield current
            current = []
        current_id = block_id
        current.append(sample)
    if current:
        yield current


@dataclass(slots=True)
class RenderedBlock:
    """One mix block after stage one: every view of every sample, rendered, with its parameters.

    Row ``i`` is ``block[i]``; skipped samples keep their row (see the module docstring).
    """

    keys: list[str]
    labels: np.ndarray
    """int64 [n] ground-truth labels (-1 for a skipped sample whose label is unknown)."""
    positions: np.ndarray
    """int64 [n] positions inside the shard."""
    params: dict[str, np.ndarray]
    """Augmentation parameters per field, ``[n, V, ...]`` (names and dtypes: ``param_fields``)."""
    views: torch.Tensor
    """float32 [n, V, C, S, S] in [0, 1] — exactly what the teachers see."""
    digests: np.ndarray
    """uint64 [n, V] digest of each view (0 for skipped rows)."""
    view_labels: np.ndarray
    """int64 [n, V] dominant label of each view (the larger share of a mix; -1 when skipped)."""
    valid: np.ndarray
    """bool [n] False for samples that failed to decode."""
    label_targets: torch.Tensor | None = None
    """float32 [n, V, num_classes] λ-mixed one-hot targets, when asked for."""

    @property
    def num_views(self) -> int:
        return int(self.views.shape[1])

    def __len__(self) -> int:
        return len(self.keys)


def _valid_mask(block: list[Sample]) -> np.ndarray:
    return np.array([s.image is not None for s in block], dtype=bool)


def skipped_params(n: int, num_views: int, cfg: AugmentConfig) -> dict[str, np.ndarray]:
    """Neutral ``[n, V, ...]`` parameters for rows that have no view (no crop, op or mix)."""
    flat = empty_params(cfg, n * num_views)
    return {name: v.reshape(n, num_views, *v.shape[1:]) for name, v in flat.items()}


def sample_and_render(
    block: list[Sample],
    seed: int,
    views: range | list[int],
    shard_count: int,
    cfg: AugmentConfig,
    *,
    num_classes: int | None = None,
    device: torch.device | None = None,
) -> RenderedBlock:
    """Stage one for one mix block: draw each view's parameters, render every view.

    Args:
        block: consecutive samples of one shard (from :func:`iter_blocks`).
        seed: the run's global seed; each view's RNG is keyed by ``(seed, view, key)``.
        views: view ids to draw (``range(V)`` in a dump).
        shard_count: samples in the shard (partners must exist in the shard).
        cfg: the augmentation recipe.
        num_classes: when given, also build the λ-mixed label targets.
        device: where the views are rendered and returned (default: the CPU).
    """
    where = torch.device("cpu") if device is None else device
    n, view_ids = len(block), list(views)
    valid = _valid_mask(block)
    keys = [s.key for s in block]
    labels = np.array([s.label for s in block], dtype=np.int64)
    positions = np.array([s.position for s in block], dtype=np.int64)
    good = np.flatnonzero(valid)
    params = skipped_params(n, len(view_ids), cfg)
    digests = np.zeros((n, len(view_ids)), dtype=np.uint64)
    view_labels = np.full((n, len(view_ids)), SKIPPED_LABEL, dtype=np.int64)
    channels = _channels(block, cfg)
    rendered = torch.zeros(n, len(view_ids), channels, cfg.image_size, cfg.image_size, device=where)
    targets = (
        torch.zeros(n, len(view_ids), num_classes, dtype=torch.float32)
        if num_classes is not None
        else None
    )
    if len(good):
        rows = torch.as_tensor(good)
        rows_on = rows.to(where)
        images = [im for im in (block[i].image for i in good) if im is not None]
        good_keys = [keys[i] for i in good]
        good_pos = positions[good]
        good_labels = labels[good]
        src_hws = [(int(im.shape[-2]), int(im.shape[-1])) for im in images]
        for j, view in enumerate(view_ids):
            vp = sample_block_params(
                seed, view, good_keys, good_pos.tolist(), src_hws, shard_count, cfg
            )
            # Partners are drawn over the whole block of positions; one that did not decode
            # cannot be shown, so that view stays unmixed.
            lost = ~np.isin(vp["mix_partner"], np.append(good_pos, -1))
            if lost.any():
                vp = unmix_rows(vp, lost)
            tensor = render_block(images, vp, good_pos.tolist(), cfg, where)
            rendered[rows_on, j] = tensor
            digests[good, j] = view_digests(tensor)
            partner_labels = lookup_partner_labels(good_labels, good_pos.tolist(), vp)
            view_labels[good, j] = dominant_labels(good_labels, partner_labels, vp).numpy()
            for name, value in vp.items():
                params[name][good, j] = value
            if targets is not None and num_classes is not None:
                targets[rows, j] = mixed_targets(good_labels, partner_labels, vp, num_classes)
    return RenderedBlock(
        keys=keys,
        labels=labels,
        positions=positions,
        params=params,
        views=rendered,
        digests=digests,
        view_labels=view_labels,
        valid=valid,
        label_targets=targets,
    )


def _channels(block: list[Sample], cfg: AugmentConfig) -> int:
    for sample in block:
        if sample.image is not None:
            return int(sample.image.shape[0])
    # A block where nothing decoded has no tensor to look at; its views are never used.
    return 1


@dataclass(slots=True)
class ReplayedView:
    """One view of a mix block rebuilt in stage two."""

    views: torch.Tensor
    """float32 [n, C, S, S]; all zeros for skipped rows."""
    digests: np.ndarray
    """uint64 [n]; 0 for skipped rows."""
    valid: np.ndarray
    """bool [n] rows that have a view."""


def replay(
    block: list[Sample],
    params: dict[str, np.ndarray],
    cfg: AugmentConfig,
    device: torch.device | None = None,
) -> ReplayedView:
    """Stage two for one mix block: rebuild one view from its stored parameters.

    ``params`` holds the stored fields for this view, ``[n, ...]``, row ``i`` for ``block[i]``.
    The tensor, rendered on ``device`` (default: the CPU), is bit-identical to the one
    :func:`sample_and_render` gave the teachers when rendered on the same kind of device.
    """
    where = torch.device("cpu") if device is None else device
    n = len(block)
    for name, value in params.items():
        if len(value) != n:
            raise ValueError(f"parameter {name!r} has {len(value)} rows for a block of {n}")
    valid = _valid_mask(block)
    good = np.flatnonzero(valid)
    channels = _channels(block, cfg)
    out = torch.zeros(n, channels, cfg.image_size, cfg.image_size, device=where)
    digests = np.zeros(n, dtype=np.uint64)
    if len(good):
        images = [im for im in (block[i].image for i in good) if im is not None]
        positions = [block[i].position for i in good]
        sub = {name: np.ascontiguousarray(value[good]) for name, value in params.items()}
        tensor = render_block(images, sub, positions, cfg, where)
        out[torch.as_tensor(good, device=where)] = tensor
        digests[good] = view_digests(tensor)
    return ReplayedView(views=out, digests=digests, valid=valid)
