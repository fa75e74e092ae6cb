"""Replayable augmentation: parameters sampled from a keyed RNG, applied by pure functions.

Stage one samples each view's parameters (`sample_block_params`), stores them, and renders the
view (`render_block`); stage two renders the same bits from the stored parameters alone.
"""
