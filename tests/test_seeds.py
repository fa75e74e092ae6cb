"""The one keyed-seed function: canonical encoding, domain separation, and the view seed."""

from __future__ import annotations

import hashlib
import struct

import numpy as np
import pytest

from civt_pipe.pipeline.augment.rng import VIEW_DOMAIN, view_seed
from civt_pipe.pipeline.runtime.seeds import keyed_seed


def _old_view_seed(seed: int, view: int, key: str) -> int:
    """The view seed as it was written before keyed_seed existed: every store depends on it."""
    payload = struct.pack("<qq", seed, view) + key.encode("utf-8")
    digest = hashlib.blake2b(payload, digest_size=8, person=b"civt-view-v1").digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


@pytest.mark.parametrize(
    ("seed", "view", "key"), [(0, 0, "a"), (7, 3, "sample-000001"), (2**63 - 1, 2**40, "ключ")]
)
def test_view_seed_is_keyed_seed_and_bit_identical_to_the_stored_formula(
    seed: int, view: int, key: str
) -> None:
    expected = _old_view_seed(seed, view, key)
    assert view_seed(seed, view, key) == expected
    assert keyed_seed(VIEW_DOMAIN, seed, view, key) == expected
    assert view_seed(0, 0, "sample-000001") == 1938800549240447204  # the pinned value


def test_domains_and_parts_separate_seeds() -> None:
    base = keyed_seed("civt-shards-v1", 1, 2)
    assert base == keyed_seed("civt-shards-v1", 1, 2)
    assert base != keyed_seed("civt-shuffle-v1", 1, 2)
    assert base != keyed_seed("civt-shards-v1", 2, 1)
    assert base != keyed_seed("civt-shards-v1", 1, 2, 0)
    assert 0 <= base < 2**63
    assert keyed_seed("d", np.int64(5)) == keyed_seed("d", 5)  # numpy integers encode alike


def test_keyed_seed_refuses_ambiguous_or_out_of_range_parts() -> None:
    with pytest.raises(ValueError, match="last part"):
        keyed_seed("d", "key", 1)  # a string not last would make encodings collide
    with pytest.raises(ValueError, match=r"\[0, 2\*\*63\)"):
        keyed_seed("d", -1)
    with pytest.raises(TypeError):
        keyed_seed("d", 1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="16 ASCII bytes"):
        keyed_seed("a-domain-far-too-long", 1)
