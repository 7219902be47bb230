"""The event bus: one interface, two implementations (Redis Streams for scale-out, in-process for embedded).

Streams are per tenant and per topic: `sb:{topic}:{tenant_id}`. A consumer group reads a topic across every
tenant's stream, so one noisy tenant cannot hide another's messages behind it, and no stream holds two
tenants.

Semantics (both implementations, checked by tests/bus/test_contract.py):
- at-least-once: an entry stays pending for its group until `ack`; a consumer that dies holding entries loses
  them to `claim_stale` by another consumer once they have been idle for `min_idle_ms`;
- `Delivery.deliveries` counts how often the entry was handed out; `Bus.count_attempt` how often a handler
  started on it; the consumer runner dead-letters an entry after `max_deliveries` started attempts, with the
  reason of its last failure (`sb:{topic}:{tenant_id}:dead`);
- reads and acks are batched; streams are trimmed to roughly `maxlen` entries;
- a group created on a stream starts at its beginning, so entries published before any consumer existed are
  delivered too (no silent drops); handlers must be idempotent anyway.

Topic and tenant ids are restricted to `[A-Za-z0-9][A-Za-z0-9_.-]*`, so no tenant id can spell another key
(e.g. `acme:dead`), and keys under `{namespace}:_` are free for the bus's own bookkeeping.
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

DEFAULT_NAMESPACE = "sb"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
TRIMMED_REASON = "entry was trimmed from the stream (maxlen) before it was acknowledged; its fields are lost"


def check_name(kind: str, value: str) -> str:
    if not isinstance(value, str) or not _NAME.fullmatch(value):
        raise ValueError(
            f"invalid {kind} {value!r}: use letters, digits, '_', '.' and '-' (no ':'), starting alphanumeric"
        )
    return value


def stream_key(topic: str, tenant_id: str, namespace: str = DEFAULT_NAMESPACE) -> str:
    return f"{namespace}:{check_name('topic', topic)}:{check_name('tenant id', tenant_id)}"


def dead_key(topic: str, tenant_id: str, namespace: str = DEFAULT_NAMESPACE) -> str:
    return stream_key(topic, tenant_id, namespace) + ":dead"


def check_fields(fields: dict[str, str]) -> dict[str, str]:
    """Entries are flat string maps (what Redis stores); reject anything that would not round-trip."""
    if not fields:
        raise ValueError("a bus entry needs at least one field")
    for k, v in fields.items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise TypeError(f"bus entry fields must be str -> str, got {k!r}: {type(v).__name__}")
    return fields


ERASED = {"type": "erased", "v": "1", "body": "{}"}  # what an erased entry reads as where it cannot be deleted
_NAMING_KEYS = ("message_id", "conversation_id", "escalation_id")


def entry_names(fields: dict[str, str], ids: set[str]) -> bool:
    """Whether a bus entry (an event: a JSON `body`; a dead letter: its JSON `dl` with the original fields
    inside) is about one of `ids`: as its message, conversation or escalation."""
    for raw in fields.values():
        try:
            data = json.loads(raw)
        except (TypeError, ValueError):
            continue
        if isinstance(data, dict) and _names(data, ids):
            return True
    return False


def _names(data: dict[str, Any], ids: set[str]) -> bool:
    if any(data.get(key) in ids for key in _NAMING_KEYS):
        return True
    nested = data.get("fields")
    return isinstance(nested, dict) and entry_names(nested, ids)


class BusUnavailable(Exception):
    """The bus cannot be reached right now (connection refused, timeout). Retry later; nothing was lost."""


class PermanentFailure(Exception):
    """Raised by a handler for an entry that can never succeed (bad payload, unknown event version):
    the consumer dead-letters it at once with `reason` instead of retrying."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class RetryLater(Exception):
    """Raised by a handler for an entry that cannot be finished now for an expected, passing reason (a
    provider's 5xx, timeout or rate limit; a USSD screen that may still show the reply): the entry is
    redelivered like after any error, and the consumer logs a warning without a traceback."""


@dataclass(frozen=True)
class Delivery:
    topic: str
    tenant_id: str
    id: str  # the stream entry id
    fields: dict[str, str]
    deliveries: int = 1  # 1 on the first delivery
    namespace: str = DEFAULT_NAMESPACE

    @property
    def stream(self) -> str:
        return stream_key(self.topic, self.tenant_id, self.namespace)


@dataclass(frozen=True)
class StreamStats:
    """A topic's streams summed over every tenant, for /metrics (app/metrics.py)."""

    length: int = 0  # entries in the streams (acknowledged or not; trimming bounds it)
    dead_letters: int = 0  # entries in the dead-letter streams
    pending: dict[str, int] = field(default_factory=dict)  # group -> delivered, not yet acknowledged
    lag: dict[str, int] = field(default_factory=dict)  # group -> entries not yet delivered to it


@dataclass(frozen=True)
class DeadLetter:
    topic: str
    tenant_id: str
    original_id: str
    fields: dict[str, str]
    reason: str
    deliveries: int
    extra: dict[str, str] = field(default_factory=dict)  # group, dead_at (ISO 8601)


class Bus(Protocol):
    def publish(self, topic: str, tenant_id: str, fields: dict[str, str]) -> str:
        """Append an entry to the tenant's stream for `topic`; returns the entry id. Durable when it
        returns."""
        ...

    def publish_many(self, topic: str, entries: Sequence[tuple[str, dict[str, str]]]) -> list[str]:
        """Append several (tenant_id, fields) entries in one round trip; returns their ids in order. Durable
        when it returns. Every name and field is checked before anything is appended; if it raises anyway (the
        connection dropped), assume any subset was appended: consumers are idempotent."""
        ...

    def ensure_group(self, topic: str, group: str) -> None:
        """Create the consumer group on every known stream of `topic` (idempotent)."""
        ...

    def read(
        self, topic: str, group: str, consumer: str, *, count: int, block_ms: int, skip: Collection[str] = ()
    ) -> list[Delivery]:
        """New entries (never delivered to this group) across all tenants' streams of `topic`, at most
        `count`, shared fairly between tenants. Waits up to `block_ms` for one (`block_ms <= 0`: no wait).
        Tenants in `skip` are left unread (a consumer that holds as much of a tenant's work as it may)."""
        ...

    def claim_stale(
        self, topic: str, group: str, consumer: str, *, min_idle_ms: int, count: int
    ) -> list[Delivery]:
        """Take over entries another consumer has held for longer than `min_idle_ms` (XAUTOCLAIM)."""
        ...

    def keep_alive(self, group: str, consumer: str, deliveries: Sequence[Delivery]) -> list[Delivery]:
        """Reset the idle time of entries `consumer` still holds (queued or being handled in its process), so
        `claim_stale` elsewhere leaves them alone; their delivery counts do not change. An entry another consumer
        has claimed meanwhile stays with that consumer. Returns the entries still held."""
        ...

    def ack(self, group: str, deliveries: Sequence[Delivery]) -> None:
        """Acknowledge in one batch; only after the handler's work is committed."""
        ...

    def dead_letter(self, group: str, delivery: Delivery, reason: str) -> None:
        """Copy the entry to the tenant's dead-letter stream with its reason, then ack it."""
        ...

    def erase(self, tenant_id: str, topics: Sequence[str], ids: set[str]) -> int:
        """Remove the tenant's entries and dead letters on these topics that are about one of `ids`
        (`entry_names`): a contact's erasure. Returns how many. An entry a group still holds reads as `ERASED`
        (in-process) or is gone from the group's pending list (Redis)."""
        ...

    def dead_letters(self, topic: str, tenant_id: str, *, count: int = 100) -> list[DeadLetter]:
        ...

    def record_dead(self, topic: str, tenant_id: str, fields: dict[str, str], reason: str) -> None:
        """Write an entry that was never published straight to the tenant's dead-letter stream with its reason
        (`original_id` empty, 0 deliveries): a gateway's signed delivery that can never be read is acknowledged
        to the provider, which would otherwise retry it forever, and kept here."""
        ...

    def record_failure(self, group: str, delivery: Delivery, reason: str) -> None:
        """Remember why handling `delivery` failed, so whichever consumer reclaims it later (maybe in another
        process) can dead-letter it with that reason. Forgotten on ack or dead-letter."""
        ...

    def last_failure(self, group: str, delivery: Delivery) -> str | None:
        ...

    def count_attempt(self, group: str, delivery: Delivery) -> int:
        """Count that a handler starts on `delivery` now; returns the attempts started so far, this one included.
        A first delivery's attempt is presumed (1, nothing stored); a redelivered one's are counted on the bus,
        across processes, and forgotten on ack or dead-letter. `max_deliveries` applies to these, not to how often
        the entry was claimed: a consumer that died while the entry only waited in it (behind its
        conversation's earlier message) had not started it, so the entry did not crash it."""
        ...

    def pending_count(self, topic: str, group: str) -> int:
        """Entries delivered to the group but not acknowledged, across tenants."""
        ...

    def stream_length(self, topic: str, tenant_id: str) -> int:
        """Entries currently in the tenant's stream (acknowledged or not; trimming bounds it)."""
        ...

    def stream_stats(self, topic: str, groups: Sequence[str]) -> StreamStats:
        """Lengths, dead letters, and each group's pending entries and lag, summed over the topic's tenants."""
        ...

    def drained(self, topic: str, group: str, tenant_id: str) -> bool:
        """True when `group` is done with the tenant's stream of `topic`: every entry delivered and acknowledged,
        none waiting, none pending (a stream that does not exist is drained). A stored message whose event should
        be there yet is unhandled then lost its event: the redrive sweep may publish it again."""
        ...

    def close(self) -> None:
        ...
