"""The keyring: the keys that encrypt secrets at rest, and apart from them the keys that sign tokens.

Two lists, newest first, never one key for both jobs:
- **encryption** keys (Fernet): channel credentials, tenants' LLM keys, webhook secrets (app/crypto.py). The first
  encrypts; every key decrypts.
- **signing** keys: people's access tokens, web chat sessions and event-stream tickets. Each use derives a sub-key
  of its own from a signing key (app/accounts/tokens.py, gateways/webchat/sessions.py...). The first signs; every
  key verifies, so tokens signed before a rotation stay valid until they expire.

Where the keys come from, the first that is set:
1. `SWITCHBOARD_ENCRYPTION_KEYS` and `SWITCHBOARD_SIGNING_KEYS`: comma-separated, newest first (scale-out, from a
   secret store). Either may be left out when `SWITCHBOARD_SECRET_KEY` is set: that one key then fills the gap.
2. `SWITCHBOARD_SECRET_KEY` alone (as before keyrings): one key for both jobs, each use still under its sub-key.
3. The keyring file `$SWITCHBOARD_HOME/keyring.json` (0600), created on first use with two fresh keys; a home of
   an older version adopts its `secret.key` as the first key of both lists. Only this source can be rotated by
   `switchboard keys rotate` (app/key_rotation.py); processes re-read the file when it changes, within
   `RELOAD_S`, so a rotation needs no restart.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Any, Literal

import jwt
from cryptography.fernet import Fernet, MultiFernet

from app.config import Settings, get_settings
from app.files import private_dir, write_private

KEYRING_FILE = "keyring.json"
LEGACY_KEY_FILE = "secret.key"
RELOAD_S = 1.0  # a process notices a rotated keyring file at most this long after its next use of a key

Source = Literal["env", "file"]


class KeyringError(RuntimeError):
    """The keys cannot be used as configured; the message names the fix."""


@dataclass(frozen=True)
class Key:
    secret: str
    created_at: str | None = None
    retired_at: str | None = None  # encryption keys: replaced as the first key (still decrypts)
    retire_after: str | None = None  # signing keys: dropped at the next rotation after this time (ISO, UTC)

    @property
    def id(self) -> str:
        """A short public name of the key (a digest): shown by `keys status`, never the key itself."""
        return hashlib.sha256(self.secret.encode()).hexdigest()[:12]

    def as_json(self) -> dict[str, Any]:
        return {k: v for k, v in (("key", self.secret), ("created_at", self.created_at),
                                  ("retired_at", self.retired_at), ("retire_after", self.retire_after)) if v}


@dataclass(frozen=True)
class Keyring:
    source: Source
    encryption: tuple[Key, ...]
    signing: tuple[Key, ...]
    path: Path | None = None  # the file, when the source is the file

    @cached_property
    def fernet(self) -> MultiFernet:
        """Encrypts with the first encryption key, decrypts with any of them."""
        return MultiFernet([self.fernet_of(k) for k in self.encryption])

    @cached_property
    def primary_fernet(self) -> Fernet:
        """The first encryption key alone: what a ciphertext is re-encrypted to, and checked against."""
        return self.fernet_of(self.encryption[0])

    def fernet_of(self, key: Key) -> Fernet:
        try:
            return Fernet(key.secret.encode())
        except ValueError:
            raise KeyringError(
                f"encryption key {key.id} ({self._where('encryption')}) is not a Fernet key: generate one with "
                "python -c 'from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())'"
            ) from None

    def _where(self, kind: str) -> str:
        if self.source == "file":
            return str(self.path)
        return f"SWITCHBOARD_{kind.upper()}_KEYS or SWITCHBOARD_SECRET_KEY"


def new_encryption_key() -> str:
    return Fernet.generate_key().decode()


def new_signing_key() -> str:
    return secrets.token_urlsafe(48)


def _split(value: str | None) -> tuple[Key, ...]:
    return tuple(Key(part.strip()) for part in (value or "").split(",") if part.strip())


def _from_env(settings: Settings) -> Keyring | None:
    legacy = (Key(settings.secret_key),) if settings.secret_key else ()
    encryption = _split(settings.encryption_keys) or legacy
    signing = _split(settings.signing_keys) or legacy
    if not (settings.encryption_keys or settings.signing_keys or settings.secret_key):
        return None
    if not encryption or not signing:
        missing = "SWITCHBOARD_ENCRYPTION_KEYS" if not encryption else "SWITCHBOARD_SIGNING_KEYS"
        raise KeyringError(f"{missing} is not set: set it (comma-separated keys, newest first), or set neither "
                           "and let Switchboard keep its keyring file under SWITCHBOARD_HOME")
    return Keyring("env", encryption, signing)


def keyring_path(settings: Settings) -> Path:
    return settings.home_dir / KEYRING_FILE


def read_file(path: Path) -> Keyring:
    try:
        data = json.loads(path.read_text())
        encryption = tuple(Key(k["key"], k.get("created_at"), k.get("retired_at"), k.get("retire_after"))
                           for k in data["encryption"])
        signing = tuple(Key(k["key"], k.get("created_at"), k.get("retired_at"), k.get("retire_after"))
                        for k in data["signing"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise KeyringError(f"cannot read the keyring {path}: {exc}; restore it from your backup "
                           "(without it stored credentials cannot be decrypted)") from None
    if not encryption or not signing:
        raise KeyringError(f"the keyring {path} lists no encryption or no signing key; restore it from your backup")
    return Keyring("file", encryption, signing, path)


def write_file(path: Path, ring: Keyring, *, overwrite: bool = True) -> bool:
    data = {"version": 1, "encryption": [k.as_json() for k in ring.encryption],
            "signing": [k.as_json() for k in ring.signing]}
    return write_private(path, (json.dumps(data, indent=2) + "\n").encode(), overwrite=overwrite)


def _first_ring(settings: Settings) -> Keyring:
    """The keyring of a home that has none yet: the older `secret.key` for both lists, or two new keys."""
    legacy = settings.home_dir / LEGACY_KEY_FILE
    now = _now()
    if legacy.exists():
        key = Key(legacy.read_text().strip(), now)
        return Keyring("file", (key,), (key,))
    return Keyring("file", (Key(new_encryption_key(), now),), (Key(new_signing_key(), now),))


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


_lock = threading.Lock()
# (the settings read from, file stamp, checked at, ring); the settings object itself, compared with `is`.
_cached: tuple[Settings, tuple[int, int] | None, float, Keyring] | None = None


def _stamp(path: Path) -> tuple[int, int] | None:
    try:
        info = path.stat()
    except FileNotFoundError:
        return None
    return info.st_mtime_ns, info.st_size


def current() -> Keyring:
    """This process's keyring, re-read when the settings change or the keyring file changed (checked at most
    every RELOAD_S)."""
    global _cached
    settings = get_settings()
    now = time.monotonic()
    cached = _cached
    if cached is not None and cached[0] is settings and (cached[3].source == "env" or now - cached[2] < RELOAD_S):
        return cached[3]
    with _lock:
        ring = _from_env(settings)
        if ring is not None:
            _cached = (settings, None, now, ring)
            return ring
        path = keyring_path(settings)
        stamp = _stamp(path)
        if cached is not None and cached[0] is settings and stamp is not None and stamp == cached[1]:
            _cached = (settings, stamp, now, cached[3])
            return cached[3]
        if stamp is None:
            private_dir(settings.home_dir)
            # Never replaces a keyring another process wrote meanwhile: then that one is read below.
            write_file(path, _first_ring(settings), overwrite=False)
            stamp = _stamp(path)
        ring = read_file(path)
        _cached = (settings, stamp, now, ring)
        return ring


def forget() -> None:
    """Read the keys again at the next use (after a rotation in this process, and in tests)."""
    global _cached
    with _lock:
        _cached = None


def signing_secrets() -> list[bytes]:
    """Every signing key, the one that signs first."""
    return [k.secret.encode() for k in current().signing]


def reload_wait() -> float:
    """How long after a keyring file change every process uses the new keys (they check at most every
    RELOAD_S, at their next use of a key)."""
    return RELOAD_S + 0.1


@lru_cache(maxsize=256)
def _sub_key(derive: Callable[[bytes], bytes], secret: bytes) -> tuple[str, bytes]:
    key = derive(secret)
    return hashlib.sha256(key).hexdigest()[:16], key


def sub_keys(derive: Callable[[bytes], bytes]) -> list[tuple[str, bytes]]:
    """(kid, sub-key) of one use for every signing key, the signing one first. `kid` is a digest of the sub-key:
    it names the key in a token's header without revealing it."""
    return [_sub_key(derive, secret) for secret in signing_secrets()]


class TokenError(Exception):
    """A signed token (a person's access token, a web chat session) that cannot be used, with the message to
    answer; `expired` when it was ours but is too old (ordinary use, not a forgery)."""

    def __init__(self, message: str, *, expired: bool = False) -> None:
        super().__init__(message)
        self.expired = expired


def decode_jwt(token: str, candidates: list[tuple[str, bytes]], **options: Any) -> dict[str, Any]:
    """`jwt.decode` under the key the token's `kid` names, or (no such kid: a token from before kids, or forged)
    under each candidate in turn. Raises PyJWT's errors, as `jwt.decode` does."""
    kid = jwt.get_unverified_header(token).get("kid")
    keys = [key for name, key in candidates if name == kid] or [key for _, key in candidates]
    for key in keys[:-1]:
        try:
            return jwt.decode(token, key, **options)
        except jwt.InvalidSignatureError:
            continue
    return jwt.decode(token, keys[-1], **options)


def _ticket_key(label: bytes, secret: bytes) -> bytes:
    return hashlib.sha256(label + secret).digest()


def sign(label: bytes, message: bytes) -> str:
    """HMAC-SHA256 of `message` (hex) under the first signing key's sub-key for `label` (one label per use, so
    no signature of one use passes for another)."""
    return hmac.new(_ticket_key(label, signing_secrets()[0]), message, hashlib.sha256).hexdigest()


def signed(label: bytes, message: bytes, signature: str) -> bool:
    """True when `signature` is `sign(label, message)` under any signing key. Constant time per key."""
    given = signature.encode(errors="replace")
    return any(hmac.compare_digest(given, hmac.new(_ticket_key(label, secret), message, hashlib.sha256)
                                   .hexdigest().encode()) for secret in signing_secrets())
