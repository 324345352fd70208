"""Where ``privacy.secure_mode`` gets its randomness: torchcsprng, or nowhere.

Secure mode promises noise (and Poisson batches, and client sampling) that no one can predict or
reproduce, as Opacus's ``secure_mode``: draws from torchcsprng's ``/dev/urandom`` generator. A
seeded pseudo-random generator is not a substitute, so without torchcsprng secure mode is
refused, as Opacus refuses it. This module imports nothing heavy, so recipe validation can ask.
"""

from __future__ import annotations


def secure_mode_problem() -> str | None:
    """Why ``privacy.secure_mode: true`` cannot run in this environment (None when it can)."""
    try:
        import torchcsprng  # type: ignore[import-not-found]  # noqa: F401
    except ImportError:
        return (
            "privacy.secure_mode=true needs torchcsprng (cryptographically secure noise from /dev/urandom, "
            "as Opacus requires for secure_mode), which cannot be imported here; install a torchcsprng "
            "build that matches this torch, or set privacy.secure_mode=false"
        )
    return None
