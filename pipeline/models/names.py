"""The registered architecture names without importing a model (so without torch).

The command line refuses an unknown ``--arch``/``--model``/``--teacher NAME=ARCH:...`` before
torch is imported (a refusal that needs no data answers at once). The registry proper
(:mod:`.registry`) is filled by importing the model files, which import torch; the names are
read here from the same ``@register_model("name", kind=...)`` decorators in those files'
source, so there is no second list to keep in step (``tests/test_bad_input.py`` checks that
both agree).
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

from ..runtime.errors import UserError

_REGISTER_RE = re.compile(r'@register_model\(\s*"([^"]+)",\s*kind="(teacher|student)"')


@functools.cache
def registered_architectures() -> dict[str, str]:
    """``{name: kind}`` of every preset the model files register (file order, then line)."""
    found: dict[str, str] = {}
    for path in sorted(Path(__file__).parent.glob("*.py")):
        for name, kind in _REGISTER_RE.findall(path.read_text(encoding="utf-8")):
            found[name] = kind
    return found


def check_architecture(name: str, kind: str | None = None) -> None:
    """Torch-free: ``name`` is a registered preset (of ``kind``, if given); the one-line errors
    of :func:`.factory.get_preset`. A name with a ``:`` (a model from another library, e.g.
    ``timm:``) is left to the loader."""
    if ":" in name:
        return
    known = registered_architectures()
    if name not in known:
        ordered = [n for k in ("teacher", "student") for n, nk in known.items() if nk == k]
        raise UserError(f"unknown architecture {name!r}; known: {', '.join(ordered)}")
    if kind is not None and known[name] != kind:
        same = [n for n, k in known.items() if k == kind]
        raise UserError(
            f"{name} is a {known[name]} architecture, not a {kind}; {kind}s: {', '.join(same)}"
        )
