"""Stage one, ``dump-logits``."""
