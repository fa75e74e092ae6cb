"""Throughput collapse: a run whose images/s fall far below its first epoch's gets one hint.

The usual cause on a CPU is contention: other processes take the cores, and more torch
threads than free cores make every parallel region wait on a preempted thread (the CLI sets
OpenMP's passive wait policy, which removes the worst of it, but a user's ``OMP_WAIT_POLICY``
or ``--threads`` above the free cores brings it back). Nothing in the run's results changes
with the thread count, so the hint says what to try and the run goes on.
"""

from __future__ import annotations

from dataclasses import dataclass

COLLAPSE_FACTOR = 3.0
"""A rate this many times below the reference counts as a collapse (noise on a shared machine
moves rates by well under 2×)."""


@dataclass
class CollapseWatch:
    """Feed it the run's rates; it returns the hint line once, on the first collapse.

    The reference is the first finished epoch of this session (its rate covers every step,
    loader start-up included, so later epochs are rarely slower by accident).
    """

    cpu: bool
    """The model runs on the CPU (the hint names ``--threads``), else on an accelerator."""
    factor: float = COLLAPSE_FACTOR
    reference: float | None = None
    warned: bool = False

    def epoch_done(self, images: int, seconds: float) -> str | None:
        """An epoch finished: the first sets the reference, later ones are checked."""
        if seconds <= 0 or images <= 0:
            return None
        rate = images / seconds
        if self.reference is None:
            self.reference = rate
            return None
        return self.check(rate)

    def check(self, rate: float) -> str | None:
        """The hint line if ``rate`` (images/s) collapsed against the reference, once per run."""
        if self.warned or self.reference is None or rate * self.factor >= self.reference:
            return None
        self.warned = True
        fell = f"throughput fell to {rate:,.0f} img/s from {self.reference:,.0f} in the first epoch"
        if self.cpu:
            return (
                f"{fell}: the CPU is probably busy with other work; fewer threads usually help "
                "(--threads 1, or OMP_NUM_THREADS=1; results do not depend on it)"
            )
        return f"{fell}: another process may share the device, or loading starves it (--workers)"
