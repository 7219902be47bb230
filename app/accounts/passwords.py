"""Password hashing: Argon2id through argon2-cffi's `PasswordHasher`, its cost from settings.

A stored hash carries its own parameters, so raising the cost never locks anyone out: the old hash still
verifies, and `verify` hands back a new hash to store (rehash on login). Checking a login for an unknown email
verifies against a dummy hash of the same cost, so it takes as long as a wrong password for a real account.
"""

from __future__ import annotations

import contextlib
import secrets
from functools import lru_cache

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from app.config import get_settings

MIN_LENGTH = 12
MAX_LENGTH = 1024  # hashing cost does not depend on length much, but a megabyte "password" is not one


class WeakPassword(ValueError):
    pass


def check_policy(password: str) -> None:
    """Length only (NIST SP 800-63B): no composition rules, which push people to predictable patterns."""
    if len(password) < MIN_LENGTH:
        raise WeakPassword(f"the password is too short: use at least {MIN_LENGTH} characters")
    if len(password) > MAX_LENGTH:
        raise WeakPassword(f"the password is too long: at most {MAX_LENGTH} characters")


@lru_cache(maxsize=4)
def _hasher(memory_kib: int, time_cost: int) -> PasswordHasher:
    return PasswordHasher(memory_cost=memory_kib, time_cost=time_cost)


def hasher() -> PasswordHasher:
    settings = get_settings()
    return _hasher(settings.password_hash_memory_kib, settings.password_hash_time_cost)


def hash_password(password: str) -> str:
    return hasher().hash(password)


@lru_cache(maxsize=4)
def _dummy_hash(memory_kib: int, time_cost: int) -> str:
    return _hasher(memory_kib, time_cost).hash(secrets.token_urlsafe(16))


def verify(stored_hash: str | None, password: str) -> tuple[bool, str | None]:
    """(whether `password` matches, a new hash to store when the stored one was made with other parameters).
    `stored_hash=None` (no such account) verifies against a dummy hash and never matches."""
    ph = hasher()
    if stored_hash is None:
        settings = get_settings()
        dummy = _dummy_hash(settings.password_hash_memory_kib, settings.password_hash_time_cost)
        with contextlib.suppress(VerificationError):
            ph.verify(dummy, password)
        return False, None
    try:
        ph.verify(stored_hash, password)
    except (VerificationError, InvalidHashError):
        return False, None
    return True, ph.hash(password) if ph.check_needs_rehash(stored_hash) else None
