"""Replayable augmentation: parameters sampled from a keyed RNG, applied by pure functions.

Stage one samples each view's parameters (`sample_block_params`), stores them, and renders the
view (`render_block`); stage two renders the same bits from the stored parameters alone.
"""

from .config import AugmentConfig, crop_flip, deit, preset, small
from .params import (
    empty_params,
    param_fields,
    param_row,
    sample_block_params,
    sample_view_params,
    unmix_rows,
)
from .render import (
    dominant_labels,
    eval_view,
    lookup_partner_labels,
    mix_views,
    mixed_targets,
    render_block,
    render_view,
    view_digest,
    view_digests,
)
from .rng import view_generator, view_seed

__all__ = [
    "AugmentConfig",
    "crop_flip",
    "deit",
    "dominant_labels",
    "empty_params",
    "eval_view",
    "lookup_partner_labels",
    "mix_views",
    "mixed_targets",
    "param_fields",
    "param_row",
    "preset",
    "render_block",
    "render_view",
    "sample_block_params",
    "sample_view_params",
    "small",
    "unmix_rows",
    "view_digest",
    "view_digests",
    "view_generator",
    "view_seed",
]
