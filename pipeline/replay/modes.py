"""Choices of stage two that the command line needs without loading torch."""

VERIFY_MODES = ("all", "sample", "off")
"""Digest checks of replayed views: every block, the first block of each segment, or none."""
