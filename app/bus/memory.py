"""The in-process bus for embedded mode: the semantics of `RedisStreamsBus`, in memory, thread-safe.

Everything lives in one process (gateway, orchestrator thread, CLI), so "durable when `publish` returns" holds
only as long as the process does; the database rows the events point at are the durable record.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import deque
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field

from app.bus.base import (
    DEFAULT_NAMESPACE,
    ERASED,
    TRIMMED_REASON,
    DeadLetter,
    Delivery,
    StreamStats,
    check_fields,
    check_name,
    entry_names,
)


@dataclass
class _Stream:
    entries: dict[str, dict[str, str]] = field(default_factory=dict)
    order: deque[str] = field(default_factory=deque)
    first_seq: int = 0  # absolute position of order[0]; groups keep absolute cursors so trimming is O(1)


@dataclass
class _Pending:
    consumer: str
    deliveries: int
    delivered_at: float  # time.monotonic()


@dataclass
class _Group:
    cursors: dict[str, int] = field(default_factory=dict)  # tenant -> next absolute position to deliver
    pending: dict[tuple[str, str], _Pending] = field(default_factory=dict)  # (tenant, id) -> state
    failures: dict[tuple[str, str], str] = field(default_factory=dict)
    attempts: dict[tuple[str, str], int] = field(default_factory=dict)  # attempts started on redeliveries


class MemoryBus:
    def __init__(self, *, maxlen: int = 100_000) -> None:
        if maxlen < 1:
            raise ValueError("maxlen must be at least 1")
        self.maxlen = maxlen
        self._lock = threading.RLock()  # guards everything below
        # Readers wait on their topic's condition (all share the lock): an entry wakes the readers of its topic,
        # not every consumer thread of the process (the orchestrator's, the dispatcher's, the webhooks'...).
        self._arrivals: dict[str, threading.Condition] = {}
        self._streams: dict[str, dict[str, _Stream]] = {}  # topic -> tenant -> stream
        self._groups: dict[str, dict[str, _Group]] = {}  # topic -> group name -> state
        self._dead: dict[tuple[str, str], list[DeadLetter]] = {}
        self._last_ms = 0
        self._seq = 0
        self._rotation = itertools.count()

    # -- writing ---------------------------------------------------------------------------------------
    def publish(self, topic: str, tenant_id: str, fields: dict[str, str]) -> str:
        check_name("topic", topic)
        check_name("tenant id", tenant_id)
        entry = dict(check_fields(fields))
        with self._lock:
            entry_id = self._next_id()
            stream = self._streams.setdefault(topic, {}).setdefault(tenant_id, _Stream())
            stream.entries[entry_id] = entry
            stream.order.append(entry_id)
            while len(stream.order) > self.maxlen:
                del stream.entries[stream.order.popleft()]
                stream.first_seq += 1
            self._arrival(topic).notify_all()
        return entry_id

    def publish_many(self, topic: str, entries: Sequence[tuple[str, dict[str, str]]]) -> list[str]:
        check_name("topic", topic)
        for tenant_id, fields in entries:  # all or none: validate everything before appending anything
            check_name("tenant id", tenant_id)
            check_fields(fields)
        # Through `publish`, so a subclass that overrides it (a fault-injecting test bus) sees every entry.
        return [self.publish(topic, tenant_id, fields) for tenant_id, fields in entries]

    def _next_id(self) -> str:
        # Redis-style "ms-seq" ids, strictly increasing even if the wall clock steps back.
        now = int(time.time() * 1000)
        if now > self._last_ms:
            self._last_ms, self._seq = now, 0
        else:
            self._seq += 1
        return f"{self._last_ms}-{self._seq}"

    # -- groups and reading ----------------------------------------------------------------------------
    def ensure_group(self, topic: str, group: str) -> None:
        check_name("topic", topic)
        with self._lock:
            self._group(topic, group)

    def _arrival(self, topic: str) -> threading.Condition:
        arrival = self._arrivals.get(topic)
        if arrival is None:
            arrival = self._arrivals[topic] = threading.Condition(self._lock)
        return arrival

    def _group(self, topic: str, group: str) -> _Group:
        return self._groups.setdefault(topic, {}).setdefault(group, _Group())

    def read(
        self, topic: str, group: str, consumer: str, *, count: int, block_ms: int, skip: Collection[str] = ()
    ) -> list[Delivery]:
        deadline = time.monotonic() + max(block_ms, 0) / 1000
        with self._lock:
            state = self._group(topic, group)
            while True:
                out = self._take_new(topic, state, consumer, count, skip)
                remaining = deadline - time.monotonic()
                if out or remaining <= 0:
                    return out
                self._arrival(topic).wait(remaining)

    def _take_new(
        self, topic: str, state: _Group, consumer: str, count: int, skip: Collection[str]
    ) -> list[Delivery]:
        streams = self._streams.get(topic, {})
        tenants = [t for t in streams if t not in skip]
        if not tenants:
            return []
        # Round-robin one entry at a time from a rotating start, so a busy tenant cannot starve the others.
        start = next(self._rotation) % len(tenants)
        tenants = tenants[start:] + tenants[:start]
        out: list[Delivery] = []
        now = time.monotonic()
        while tenants and len(out) < count:
            with_more = []
            for tenant in tenants:
                if len(out) >= count:
                    break
                stream = streams[tenant]
                pos = max(state.cursors.get(tenant, 0), stream.first_seq)
                if pos - stream.first_seq >= len(stream.order):
                    continue
                entry_id = stream.order[pos - stream.first_seq]
                state.cursors[tenant] = pos + 1
                state.pending[(tenant, entry_id)] = _Pending(consumer, 1, now)
                out.append(_delivery(topic, tenant, entry_id, stream.entries[entry_id], 1))
                with_more.append(tenant)
            tenants = with_more  # later rounds only visit streams that still had entries
        return out

    def claim_stale(
        self, topic: str, group: str, consumer: str, *, min_idle_ms: int, count: int
    ) -> list[Delivery]:
        with self._lock:
            state = self._group(topic, group)
            now = time.monotonic()
            streams = self._streams.get(topic, {})
            out: list[Delivery] = []
            trimmed: list[tuple[str, str, int]] = []
            for (tenant, entry_id), pending in list(state.pending.items()):
                if len(out) >= count:
                    break
                if (now - pending.delivered_at) * 1000 < min_idle_ms:
                    continue
                entry = streams[tenant].entries.get(entry_id)
                if entry is None:  # trimmed while pending: like XAUTOCLAIM, drop it from the PEL
                    del state.pending[(tenant, entry_id)]
                    trimmed.append((tenant, entry_id, pending.deliveries))
                    continue
                pending.consumer, pending.delivered_at = consumer, now
                pending.deliveries += 1
                out.append(_delivery(topic, tenant, entry_id, entry, pending.deliveries))
            for tenant, entry_id, deliveries in trimmed:
                self._add_dead(DeadLetter(topic, tenant, entry_id, {}, TRIMMED_REASON, deliveries,
                                          {"group": group, "dead_at": _now_iso()}))
            return out

    def keep_alive(self, group: str, consumer: str, deliveries: Sequence[Delivery]) -> list[Delivery]:
        with self._lock:
            now = time.monotonic()
            kept = []
            for d in deliveries:
                state = self._groups.get(d.topic, {}).get(group)
                pending = state.pending.get((d.tenant_id, d.id)) if state else None
                if pending is not None and pending.consumer == consumer:
                    pending.delivered_at = now
                    kept.append(d)
            return kept

    # -- settling --------------------------------------------------------------------------------------
    def ack(self, group: str, deliveries: Sequence[Delivery]) -> None:
        with self._lock:
            for d in deliveries:
                state = self._groups.get(d.topic, {}).get(group)
                if state is not None:
                    state.pending.pop((d.tenant_id, d.id), None)
                    state.failures.pop((d.tenant_id, d.id), None)
                    state.attempts.pop((d.tenant_id, d.id), None)

    def dead_letter(self, group: str, delivery: Delivery, reason: str) -> None:
        with self._lock:
            self._add_dead(DeadLetter(delivery.topic, delivery.tenant_id, delivery.id, dict(delivery.fields),
                                      reason, delivery.deliveries, {"group": group, "dead_at": _now_iso()}))
            self.ack(group, [delivery])

    def _add_dead(self, letter: DeadLetter) -> None:
        letters = self._dead.setdefault((letter.topic, letter.tenant_id), [])
        letters.append(letter)
        del letters[: max(len(letters) - self.maxlen, 0)]

    def erase(self, tenant_id: str, topics: Sequence[str], ids: set[str]) -> int:
        erased = 0
        with self._lock:
            for topic in topics:
                stream = self._streams.get(topic, {}).get(tenant_id) or _Stream()
                for entry_id, fields in list(stream.entries.items()):
                    if fields is not ERASED and entry_names(fields, ids):
                        stream.entries[entry_id] = ERASED  # kept in place: groups' cursors count positions
                        erased += 1
                letters = self._dead.get((topic, tenant_id), [])
                kept = [d for d in letters if not entry_names(d.fields, ids)]
                erased += len(letters) - len(kept)
                letters[:] = kept
        return erased

    def dead_letters(self, topic: str, tenant_id: str, *, count: int = 100) -> list[DeadLetter]:
        with self._lock:
            return list(self._dead.get((topic, tenant_id), [])[:count])

    def record_dead(self, topic: str, tenant_id: str, fields: dict[str, str], reason: str) -> None:
        check_name("topic", topic)
        check_name("tenant id", tenant_id)
        letter = DeadLetter(topic, tenant_id, "", dict(check_fields(fields)), reason, 0,
                            {"group": "", "dead_at": _now_iso()})
        with self._lock:
            self._add_dead(letter)

    def record_failure(self, group: str, delivery: Delivery, reason: str) -> None:
        with self._lock:
            self._group(delivery.topic, group).failures[(delivery.tenant_id, delivery.id)] = reason

    def last_failure(self, group: str, delivery: Delivery) -> str | None:
        with self._lock:
            return self._group(delivery.topic, group).failures.get((delivery.tenant_id, delivery.id))

    def count_attempt(self, group: str, delivery: Delivery) -> int:
        if delivery.deliveries <= 1:
            return 1
        with self._lock:
            attempts = self._group(delivery.topic, group).attempts
            ref = (delivery.tenant_id, delivery.id)
            attempts[ref] = attempts.get(ref, 0) + 1
            return attempts[ref] + 1

    # -- introspection ---------------------------------------------------------------------------------
    def pending_count(self, topic: str, group: str) -> int:
        with self._lock:
            state = self._groups.get(topic, {}).get(group)
            return len(state.pending) if state else 0

    def stream_length(self, topic: str, tenant_id: str) -> int:
        with self._lock:
            stream = self._streams.get(topic, {}).get(tenant_id)
            return len(stream.order) if stream else 0

    def stream_stats(self, topic: str, groups: Sequence[str]) -> StreamStats:
        with self._lock:
            streams = self._streams.get(topic, {})
            end = {tenant: s.first_seq + len(s.order) for tenant, s in streams.items()}
            pending: dict[str, int] = {}
            lag: dict[str, int] = {}
            for group in groups:
                state = self._groups.get(topic, {}).get(group)
                pending[group] = len(state.pending) if state else 0
                lag[group] = sum(
                    last - max(state.cursors.get(tenant, 0) if state else 0, streams[tenant].first_seq)
                    for tenant, last in end.items()
                )
            return StreamStats(
                length=sum(len(s.order) for s in streams.values()),
                dead_letters=sum(len(v) for (t, _), v in self._dead.items() if t == topic),
                pending=pending, lag=lag,
            )

    def drained(self, topic: str, group: str, tenant_id: str) -> bool:
        with self._lock:
            stream = self._streams.get(topic, {}).get(tenant_id)
            if stream is None:
                return True
            state = self._groups.get(topic, {}).get(group)
            cursor = state.cursors.get(tenant_id, 0) if state else 0
            if max(cursor, stream.first_seq) < stream.first_seq + len(stream.order):
                return False  # entries not yet delivered to the group
            return state is None or not any(tenant == tenant_id for tenant, _ in state.pending)

    def close(self) -> None:
        with self._lock:
            for arrival in self._arrivals.values():
                arrival.notify_all()


def _delivery(topic: str, tenant: str, entry_id: str, fields: dict[str, str], n: int) -> Delivery:
    return Delivery(topic, tenant, entry_id, dict(fields), n, DEFAULT_NAMESPACE)


def _now_iso() -> str:
    from datetime import UTC, datetime

    return datetime.now(UTC).isoformat()
