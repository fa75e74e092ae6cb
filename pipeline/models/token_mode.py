"""The student token modes, defined once (models, stage configs and the CLI import them).

How many distillation tokens/heads stand behind a student's per-teacher outputs:

- ``"per-teacher"`` (Co-advise): one token and head per teacher; with one teacher this is DeiT;
- ``"shared"`` (paper Table 6): one token and head for all teachers, the same tensor under
  each teacher's name;
- ``"none"``: no distillation token, only ``"cls"``.

No torch here: the command line imports it to offer the choices without loading torch.
"""

from __future__ import annotations

from typing import Literal, get_args

TokenMode = Literal["per-teacher", "shared", "none"]
"""A student's token mode (see the module docstring)."""

TOKEN_MODES: tuple[TokenMode, ...] = get_args(TokenMode)
"""Every token mode, in the order the help text lists them."""
