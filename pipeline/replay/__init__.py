"""Stage two's inputs: a store bound to its shards, replayed views, teacher targets."""
