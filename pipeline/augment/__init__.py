"""Replayable augmentation: parameters sampled from a keyed RNG, applied by pure functions."""
