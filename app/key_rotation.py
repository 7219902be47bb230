"""Key rotation without downtime (`switchboard keys rotate`, `switchboard keys status`).

A rotation of the keyring file (app/keys.py):
1. puts a new encryption key and a new signing key first; the old encryption keys are marked retired (they still
   decrypt) and the old signing keys get a `retire_after`: the longest life of a token they signed (a web chat
   session with its renewal grace, an access token). Signing keys past their `retire_after` are dropped;
2. waits until every process uses the new keys (they re-read the file within `keys.RELOAD_S`);
3. re-encrypts every stored secret under the new first key, a page at a time, each row compare-and-set (a
   secret changed meanwhile is left to the next pass, never overwritten);
4. checks that every stored secret now decrypts under the first key alone; if so, encryption keys retired by an
   EARLIER rotation are dropped (the one retired now stays until the next rotation: a process that encrypted
   just before it saw the new key may commit after the pass).

With keys from the environment (SWITCHBOARD_ENCRYPTION_KEYS...), rotation cannot write them: it re-encrypts
under the first key and reports which keys nothing uses any more, for the operator to remove (docs/operations.md).
"""

from __future__ import annotations

import contextlib
import fcntl
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography.fernet import InvalidToken
from sqlalchemy import select, update

from app import keys
from app.config import Settings, get_settings
from app.db import session_scope
from app.models import ChannelAccount, Tenant, TenantWebhook

# Every column that holds a secret encrypted by app/crypto.py.
ENCRYPTED_COLUMNS: tuple[tuple[Any, str], ...] = (
    (Tenant, "llm_api_key_encrypted"),
    (Tenant, "llm_provider_keys_encrypted"),
    (ChannelAccount, "credentials_encrypted"),
    (TenantWebhook, "secret_encrypted"),
)
PAGE = 200
TICKET_TTL_S = 300  # event-stream tickets last far less; a margin for clocks


def token_life_s(settings: Settings) -> int:
    """The longest a token signed today can still be presented: how long an old signing key must verify."""
    return max(settings.access_token_ttl_s,
               settings.widget_session_ttl_s + settings.widget_session_renew_grace_s, TICKET_TTL_S)


@dataclass
class Report:
    source: str
    encryption_key: str  # id of the key that encrypts now
    signing_key: str  # id of the key that signs now
    reencrypted: dict[str, int] = field(default_factory=dict)  # per `table.column`
    on_old_keys: int = 0  # secrets that still need an old key (0 after a complete pass)
    encryption_keys: list[dict[str, Any]] = field(default_factory=list)
    signing_keys: list[dict[str, Any]] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)  # ids of keys removed from the keyring
    removable: list[str] = field(default_factory=list)  # env source: ids of keys nothing needs any more

    def as_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _describe(key: keys.Key) -> dict[str, Any]:
    return {"id": key.id, "created_at": key.created_at, "retired_at": key.retired_at,
            "retire_after": key.retire_after}


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """One rotation at a time on this keyring (an advisory lock beside the file)."""
    with open(path.with_suffix(".lock"), "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def reencrypt(ring: keys.Keyring, progress: Callable[[str], None] | None = None) -> tuple[dict[str, int], int]:
    """Re-encrypt every stored secret that the first key alone cannot decrypt. Returns (re-encrypted per
    column, secrets still needing an old key afterwards)."""
    done: dict[str, int] = {}
    for model, name in ENCRYPTED_COLUMNS:
        column, label = getattr(model, name), f"{model.__tablename__}.{name}"
        done[label], last = 0, ""
        while True:
            with session_scope(cross_tenant="key rotation over every stored secret") as session:
                rows = session.execute(select(model.id, column).where(column.is_not(None), model.id > last)
                                       .order_by(model.id).limit(PAGE)).all()
                for row_id, token in rows:
                    if _primary_decrypts(ring, token):
                        continue
                    rotated = ring.fernet.rotate(token.encode()).decode()
                    result = session.execute(update(model).where(model.id == row_id, column == token)
                                             .values({name: rotated}).execution_options(synchronize_session=False))
                    done[label] += result.rowcount  # type: ignore[attr-defined]
            if not rows:
                break
            last = rows[-1][0]
            if progress:
                progress(f"{label}: {done[label]} re-encrypted so far")
    return done, count_on_old_keys(ring)


def _primary_decrypts(ring: keys.Keyring, token: str) -> bool:
    try:
        ring.primary_fernet.decrypt(token.encode())
    except InvalidToken:
        return False
    return True


def _stored_secrets() -> Iterator[str]:
    """Every stored ciphertext, column after column."""
    for model, name in ENCRYPTED_COLUMNS:
        column = getattr(model, name)
        with session_scope(cross_tenant="key rotation over every stored secret") as session:
            yield from session.scalars(select(column).where(column.is_not(None)))


def count_on_old_keys(ring: keys.Keyring) -> int:
    return sum(not _primary_decrypts(ring, token) for token in _stored_secrets())


def usage(ring: keys.Keyring) -> dict[str, int]:
    """How many stored secrets each encryption key decrypts (by key id; `none` for secrets no key decrypts)."""
    counts = {k.id: 0 for k in ring.encryption}
    counts["none"] = 0
    for token in _stored_secrets():
        counts[_key_of(ring, token)] += 1
    return counts


def _key_of(ring: keys.Keyring, token: str) -> str:
    for key in ring.encryption:
        try:
            ring.fernet_of(key).decrypt(token.encode())
        except InvalidToken:
            continue
        return key.id
    return "none"


def rotate(*, now: datetime | None = None, wait: bool = True,
           progress: Callable[[str], None] | None = None) -> Report:
    settings = get_settings()
    ring = keys.current()
    if ring.source == "env":
        return _rotate_env(ring, progress)
    path = ring.path
    assert path is not None
    now = now or datetime.now(UTC)
    stamp = now.strftime("%Y-%m-%dT%H:%M:%SZ")
    with _locked(path):
        ring = keys.read_file(path)
        retire_after = (now + timedelta(seconds=token_life_s(settings))).strftime("%Y-%m-%dT%H:%M:%SZ")
        signing = [replace(k, retire_after=k.retire_after or retire_after) for k in ring.signing]
        kept_signing = [k for k in signing if k.retire_after is None or k.retire_after > stamp]
        retired_before = [k for k in ring.encryption if k.retired_at]
        encryption = [replace(k, retired_at=k.retired_at or stamp) for k in ring.encryption]
        new = keys.Keyring("file", (keys.Key(keys.new_encryption_key(), stamp), *encryption),
                           (keys.Key(keys.new_signing_key(), stamp), *kept_signing), path)
        keys.write_file(path, new)
        keys.forget()
        if progress:
            progress(f"new keys written to {path}; waiting {keys.reload_wait():.1f} s for every process to "
                     "read them")
        if wait:
            time.sleep(keys.reload_wait())
        counts, on_old = reencrypt(new, progress)
        dropped = [k.id for k in signing if k not in kept_signing]
        if on_old == 0 and retired_before:
            gone = {k.id for k in retired_before}
            new = replace(new, encryption=tuple(k for k in new.encryption if k.id not in gone))
            keys.write_file(path, new)
            keys.forget()
            dropped += sorted(gone)
    return Report("file", new.encryption[0].id, new.signing[0].id, counts, on_old,
                  [_describe(k) for k in new.encryption], [_describe(k) for k in new.signing], dropped)


def _rotate_env(ring: keys.Keyring, progress: Callable[[str], None] | None) -> Report:
    counts, on_old = reencrypt(ring, progress)
    removable = [k.id for k in ring.encryption[1:]] if on_old == 0 else []
    return Report("env", ring.encryption[0].id, ring.signing[0].id, counts, on_old,
                  [_describe(k) for k in ring.encryption], [_describe(k) for k in ring.signing],
                  removable=removable)


def status() -> dict[str, Any]:
    ring = keys.current()
    counts = usage(ring)
    return {
        "source": ring.source, "path": str(ring.path) if ring.path else None,
        "encryption_keys": [{**_describe(k), "secrets": counts[k.id]} for k in ring.encryption],
        "signing_keys": [_describe(k) for k in ring.signing],
        "undecryptable_secrets": counts["none"],
    }
