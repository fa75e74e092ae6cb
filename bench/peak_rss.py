"""Peak resident memory of one stage, run alone in a fresh process.

``python bench/peak_rss.py dump|train '<json kwargs>'`` runs ``dump-logits`` or
``train-student`` with those config keyword arguments and prints one JSON object: the stage's
summary plus ``ru_maxrss`` of this process and of its largest finished child (DataLoader
workers), in MiB. :func:`measure` is the parent side.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path
from typing import Any

_HERE = Path(__file__).resolve().parent


def maxrss_mb(who: int) -> float:
    """``ru_maxrss`` of ``RUSAGE_SELF`` or ``RUSAGE_CHILDREN`` in MiB (Linux reports KiB)."""
    return resource.getrusage(who).ru_maxrss / 1024.0


def measure(stage: str, kwargs: dict[str, Any], *, env: dict[str, str] | None = None) -> dict:
    """Run ``stage`` in a subprocess; returns its summary and peak RSS (raises on failure)."""
    if stage not in ("dump", "train"):
        raise ValueError(f"stage must be 'dump' or 'train', got {stage!r}")
    proc = subprocess.run(
        [sys.executable, str(_HERE / "peak_rss.py"), stage, json.dumps(kwargs)],
        capture_output=True,
        text=True,
        env={**os.environ, "CIVT_PIPE_NO_PROGRESS": "1", **(env or {})},
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{stage} subprocess failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _main(stage: str, payload: str) -> None:
    sys.path.insert(0, str(_HERE))
    from stages import run_dump_from_kwargs, run_student_from_kwargs

    kwargs = json.loads(payload)
    summary = run_dump_from_kwargs(kwargs) if stage == "dump" else run_student_from_kwargs(kwargs)
    out = {
        "summary": summary,
        "peak_rss_mb": maxrss_mb(resource.RUSAGE_SELF),
        "peak_rss_children_mb": maxrss_mb(resource.RUSAGE_CHILDREN),
    }
    print(json.dumps(out, default=str))


if __name__ == "__main__":
    _main(sys.argv[1], sys.argv[2])
