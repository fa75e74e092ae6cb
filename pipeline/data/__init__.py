"""Shard sources (make-shards), shard reading, sample identity, and the one stream planner."""
