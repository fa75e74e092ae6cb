"""The one JSON writer rule: what we write is valid JSON, never ``NaN`` or ``Infinity``.

Python's ``json`` writes a non-finite float as the bare words ``NaN``/``Infinity``, which no
strict parser (``jq``, JavaScript, Go, pandas' ``lines=True``) accepts. Every JSON we write —
``--json`` results, ``metrics.jsonl``, ``config.json``, manifests — goes through
:func:`json_text`, which writes such a figure as ``null`` (a value that does not exist, e.g. the
accuracy of an empty split), then serializes with ``allow_nan=False`` so nothing slips past.
A loss never gets here non-finite: the training loop stops the run first
(:func:`..train.loop.fit`).
"""

from __future__ import annotations

import json
import math
from typing import Any


def finite_or_none(obj: Any) -> Any:
    """``obj`` with every non-finite float (also inside dicts, lists, tuples) replaced by None."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {key: finite_or_none(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_or_none(value) for value in obj]
    return obj


def json_text(obj: Any, *, indent: int | None = None) -> str:
    """``obj`` as JSON text with sorted keys; non-finite floats become ``null``."""
    return json.dumps(finite_or_none(obj), sort_keys=True, indent=indent, allow_nan=False)
