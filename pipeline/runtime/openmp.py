"""OpenMP's wait policy, chosen before torch loads (this module imports no torch).

torch's CPU kernels run on OpenMP (GNU libgomp in the PyPI wheels, Intel's libiomp in some
builds). Between parallel regions an idle OpenMP thread spin-waits by default (libgomp: about
3 ms per barrier; libiomp: 200 ms of ``KMP_BLOCKTIME``). On a machine whose cores are busy
with other work, a spinning thread burns the time slice its sibling needs to finish the
region, so every region waits on a preempted thread: a 2-thread ``train-student`` on a busy
2-core machine ran 9× slower than with one thread (docs/commands.md, "CPU threads").
Passive waiting (sleep at once) removes the collapse and costs little when the machine is
idle, because the regions of these models are long next to a futex wake-up.

The variables are read once, when the OpenMP runtime loads with torch; so the CLI calls
:func:`set_openmp_defaults` before any command imports torch. A value the user exported wins.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping

OPENMP_DEFAULTS: dict[str, str] = {
    "OMP_WAIT_POLICY": "PASSIVE",  # libgomp (and libiomp): sleep, do not spin, when idle
    "KMP_BLOCKTIME": "0",  # libiomp's spin time in ms (ignored by libgomp)
}
"""What :func:`set_openmp_defaults` sets where the environment says nothing."""


def set_openmp_defaults(environ: MutableMapping[str, str] | None = None) -> dict[str, str]:
    """Set every :data:`OPENMP_DEFAULTS` variable that ``environ`` (default ``os.environ``)
    lacks; return the ones set. ``GOMP_SPINCOUNT`` given by the user also leaves the wait
    policy alone (it is the user's own tuning of the same thing)."""
    env = os.environ if environ is None else environ
    if "GOMP_SPINCOUNT" in env:
        return {}
    applied = {name: value for name, value in OPENMP_DEFAULTS.items() if name not in env}
    env.update(applied)
    return applied
