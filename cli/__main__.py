"""``python -m civt_pipe.cli ...`` — the same as the ``civt-pipe`` script (handy under torchrun)."""

from .app import main

main()
