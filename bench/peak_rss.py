"""Peak memory of one stage, run alone in a fresh process.

``python bench/peak_rss.py dump|train '<json kwargs>'`` runs ``dump-logits`` or
``train-student`` with those config keyword arguments and prints one JSON object: the stage's
summary, the process's peak RSS (``VmHWM``) and the peak proportional set size of the process
plus its DataLoader workers, sampled every 0.2 s, in MiB. :func:`measure` is the parent side.

Why not ``ru_maxrss``: Linux keeps it across ``fork`` and ``exec``, so a child of a large
parent reports the parent's peak; and forked workers share most pages with their parent, so
their RSS double-counts. ``VmHWM`` is per address space (reset by ``exec``) and PSS splits
shared pages between the processes that map them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

_HERE = Path(__file__).resolve().parent


def status_kib(field: str, pid: int | str = "self") -> int:
    """A ``kB`` field of ``/proc/<pid>/status`` (e.g. ``VmHWM``); 0 when it cannot be read."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except (OSError, ValueError):
        return 0
    return 0


def pss_kib(pid: int | str) -> int:
    """Proportional set size of one process in KiB (0 if it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        return 0
    return 0


def child_pids(pid: int) -> list[int]:
    """Direct children of ``pid`` (every thread's), from ``/proc``."""
    out: list[int] = []
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            text = (task / "children").read_text().split()
            out.extend(int(c) for c in text)
    except OSError:
        return out
    return out


class TreeSampler:
    """Background thread tracking the peak PSS of this process plus its children."""

    def __init__(self, interval: float = 0.2) -> None:
        self.interval = interval
        self.peak_kib = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        me = os.getpid()
        while not self._stop.is_set():
            total = pss_kib(me) + sum(pss_kib(c) for c in child_pids(me))
            self.peak_kib = max(self.peak_kib, total)
            self._stop.wait(self.interval)

    def __enter__(self) -> TreeSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


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
    with TreeSampler() as sampler:
        if stage == "dump":
            summary = run_dump_from_kwargs(kwargs)
        else:
            summary = run_student_from_kwargs(kwargs)
    out = {
        "summary": summary,
        "peak_rss_mb": status_kib("VmHWM") / 1024.0,
        "peak_pss_with_workers_mb": sampler.peak_kib / 1024.0,
    }
    print(json.dumps(out, default=str))


if __name__ == "__main__":
    _main(sys.argv[1], sys.argv[2])
