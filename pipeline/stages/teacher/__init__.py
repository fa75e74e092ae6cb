"""``train-teacher``: teachers trained on the shards, checkpoints that every stage reads."""
