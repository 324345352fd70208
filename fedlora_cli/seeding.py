"""Seeds derived from a run's seed, so every random draw is reproducible on its own."""

from __future__ import annotations

import hashlib

MAX_SEED = 2**32 - 1  # a seed every seeded library (numpy, torch, random) accepts


def derive_seed(*parts) -> int:
    """A 63-bit seed that depends only on ``parts`` (run seed, round, client, purpose)."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1
