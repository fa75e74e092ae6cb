"""Shard sources (make-shards), shard reading and sample identity."""
