"""Choices of training options that the command line needs without loading torch."""

OPTIMIZERS: tuple[str, ...] = ("sgd", "adamw")
"""``sgd`` (momentum 0.9, Nesterov) or ``adamw``."""
