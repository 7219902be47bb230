"""The event bus: one interface, two implementations (Redis Streams for scale-out, in-process for embedded).

Streams are per tenant and per topic: `sb:{topic}:{tenant_id}`. A consumer group reads a topic across every
tenant's stream, so one noisy tenant cannot hide another's messages behind it, and no stream holds two tenants.

Semantics (both implementations, checked by tests/bus/test_contract.py):
- at-least-once: an entry stays pending for its group until `ack`; a consumer that dies holding entries loses
  them to `claim_stale` by another consumer once they have been idle for `min_idle_ms`;
- `Delivery.deliveries` counts how often the entry was handed out; the consumer runner dead-letters an entry
  after `max_deliveries` with the reason of its last failure (`sb:{topic}:{tenant_id}:dead`);
- reads and acks are batched; streams are trimmed to roughly `maxlen` entries.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol


def stream_key(topic: str, tenant_id: str) -> str:
    return f"sb:{topic}:{tenant_id}"


def dead_key(topic: str, tenant_id: str) -> str:
    return f"sb:{topic}:{tenant_id}:dead"


@dataclass(frozen=True)
class Delivery:
    topic: str
    tenant_id: str
    id: str  # the stream entry id
    fields: dict[str, str]
    deliveries: int = 1  # 1 on the first delivery

    @property
    def stream(self) -> str:
        return stream_key(self.topic, self.tenant_id)


@dataclass(frozen=True)
class DeadLetter:
    topic: str
    tenant_id: str
    original_id: str
    fields: dict[str, str]
    reason: str
    deliveries: int
    extra: dict[str, str] = field(default_factory=dict)


class Bus(Protocol):
    def publish(self, topic: str, tenant_id: str, fields: dict[str, str]) -> str:
        """Append an entry to the tenant's stream for `topic`; returns the entry id. Durable when it returns."""
        ...

    def ensure_group(self, topic: str, group: str) -> None:
        """Create the consumer group on every known stream of `topic` (idempotent)."""
        ...

    def read(self, topic: str, group: str, consumer: str, *, count: int, block_ms: int) -> list[Delivery]:
        """New entries (never delivered to this group) across all tenants' streams of `topic`."""
        ...

    def claim_stale(
        self, topic: str, group: str, consumer: str, *, min_idle_ms: int, count: int
    ) -> list[Delivery]:
        """Take over entries another consumer has held for longer than `min_idle_ms` (XAUTOCLAIM)."""
        ...

    def ack(self, group: str, deliveries: Sequence[Delivery]) -> None:
        """Acknowledge in one batch; only after the handler's work is committed."""
        ...

    def dead_letter(self, group: str, delivery: Delivery, reason: str) -> None:
        """Copy the entry to the tenant's dead-letter stream with its reason, then ack it."""
        ...

    def dead_letters(self, topic: str, tenant_id: str, *, count: int = 100) -> list[DeadLetter]:
        ...

    def pending_count(self, topic: str, group: str) -> int:
        """Entries delivered to the group but not acknowledged, across tenants."""
        ...

    def close(self) -> None:
        ...
