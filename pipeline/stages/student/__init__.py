"""Stage two, ``train-student``."""
