"""The one keyed-seed function: every seed the pipeline derives is a hash of named coordinates.

View seeds, the shard order, the shuffle buffer and the per-step torch seed all come from
:func:`keyed_seed`, each under its own *domain* (blake2b's personalisation string), so two uses
of the same numbers never share a stream, and a seed is a function of its coordinates only —
never of the process, the worker or what was drawn before.
"""

from __future__ import annotations

import hashlib
import operator
import struct

MASK63 = (1 << 63) - 1
"""Seeds are non-negative 63-bit integers: they fit int64, numpy and ``torch.manual_seed``."""


def keyed_seed(domain: str, *parts: int | str) -> int:
    """A 63-bit seed from ``parts`` under ``domain``: blake2b, digest 8 bytes, little-endian.

    The encoding is canonical: every integer part as a little-endian signed 64-bit integer, in
    order, then at most one string part, last, as its UTF-8 bytes (last, so it needs no length
    or separator). With the domain ``"civt-view-v1"`` and parts ``(seed, view, key)`` this is
    exactly the view seed every stored augmentation was drawn from.

    Args:
        domain: what the seed is for, at most 16 ASCII bytes (e.g. ``"civt-shards-v1"``).
        parts: integers in ``[0, 2**63)``, optionally followed by one string.
    """
    person = domain.encode("ascii")
    if not 0 < len(person) <= 16:
        raise ValueError(f"a seed domain takes 1 to 16 ASCII bytes, got {domain!r}")
    payload = bytearray()
    for i, part in enumerate(parts):
        if isinstance(part, str):
            if i != len(parts) - 1:
                raise ValueError("only the last part of a keyed seed may be a string")
            payload += part.encode("utf-8")
            continue
        number = operator.index(part)  # numpy integers too; floats are refused
        if not 0 <= number <= MASK63:
            raise ValueError(f"seed part {i} must lie in [0, 2**63), got {number}")
        payload += struct.pack("<q", number)
    digest = hashlib.blake2b(bytes(payload), digest_size=8, person=person).digest()
    return int.from_bytes(digest, "little") & MASK63
