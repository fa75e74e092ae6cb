"""``civt-pipe predict``: per-image predictions of a checkpoint."""
