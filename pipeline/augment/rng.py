"""The keyed RNG: every random number of a view comes from (global seed, view index, key).

Nothing here touches torch's or numpy's global RNG, so the draws of a view do not depend on
which process, worker or rank renders it, nor on what was drawn before.
"""

from __future__ import annotations

import math

import torch

from ..runtime.seeds import MASK63, keyed_seed

VIEW_DOMAIN = "civt-view-v1"
"""The keyed-seed domain of augmentation views. Every stored view was drawn under it: changing
it (or the encoding of :func:`~civt_pipe.pipeline.runtime.seeds.keyed_seed`) invalidates stores."""
_CHUNK = 64  # uniforms drawn per refill; one view typically needs fewer


def view_seed(seed: int, view: int, key: str) -> int:
    """A 63-bit seed for one view of one sample: ``keyed_seed("civt-view-v1", seed, view, key)``.

    That is blake2b of seed and view as little-endian signed 64-bit integers, then the key's
    UTF-8 bytes.
    """
    if not 0 <= seed <= MASK63:
        raise ValueError(f"seed must be in [0, 2**63), got {seed}")
    if not 0 <= view <= MASK63:
        raise ValueError(f"view must be in [0, 2**63), got {view}")
    return keyed_seed(VIEW_DOMAIN, seed, view, key)


def view_generator(seed: int, view: int, key: str) -> torch.Generator:
    """A CPU `torch.Generator` seeded with `view_seed(seed, view, key)`."""
    gen = torch.Generator(device="cpu")
    gen.manual_seed(view_seed(seed, view, key))
    return gen


class UniformStream:
    """Uniform float64 numbers in [0, 1) from a generator, drawn in chunks to keep calls few.

    The sequence is a pure function of the generator's seed: chunking only changes how many
    numbers are fetched at once, never their order. The derived draws (normal, gamma, beta)
    are written out here rather than taken from a library so they cannot change underneath a
    stored dataset.
    """

    def __init__(self, generator: torch.Generator) -> None:
        self._gen = generator
        self._buf: list[float] = []
        self._pos = 0

    def uniform(self, low: float = 0.0, high: float = 1.0) -> float:
        """One number in [low, high)."""
        if self._pos == len(self._buf):
            self._buf = torch.rand(_CHUNK, generator=self._gen, dtype=torch.float64).tolist()
            self._pos = 0
        u = self._buf[self._pos]
        self._pos += 1
        return low + u * (high - low)

    def randint(self, n: int) -> int:
        """An integer in [0, n), n >= 1."""
        return min(int(self.uniform() * n), n - 1)

    def bernoulli(self, p: float) -> bool:
        """True with probability p (always draws, so later draws do not depend on p)."""
        return self.uniform() < p

    def normal(self) -> float:
        """A standard normal number (Box–Muller, one of the pair)."""
        u1 = 1.0 - self.uniform()  # in (0, 1]: log is finite
        u2 = self.uniform()
        return math.sqrt(-2.0 * math.log(u1)) * math.cos(2.0 * math.pi * u2)

    def gamma(self, alpha: float) -> float:
        """Gamma(alpha, 1) by Marsaglia and Tsang (2000), boosted for alpha < 1."""
        if alpha < 1.0:
            boost = (1.0 - self.uniform()) ** (1.0 / alpha)
            return self.gamma(alpha + 1.0) * boost
        d = alpha - 1.0 / 3.0
        c = 1.0 / math.sqrt(9.0 * d)
        while True:
            x = self.normal()
            v = 1.0 + c * x
            if v <= 0.0:
                continue
            v = v * v * v
            u = 1.0 - self.uniform()
            if math.log(u) < 0.5 * x * x + d - d * v + d * math.log(v):
                return d * v

    def beta(self, alpha: float) -> float:
        """Beta(alpha, alpha) in [0, 1], the mixup/cutmix λ distribution."""
        x = self.gamma(alpha)
        y = self.gamma(alpha)
        total = x + y
        # Both draws can underflow to 0 for tiny alpha; the distribution is symmetric.
        return 0.5 if total == 0.0 else x / total


def view_stream(seed: int, view: int, key: str) -> UniformStream:
    """The `UniformStream` of one view of one sample."""
    return UniformStream(view_generator(seed, view, key))
