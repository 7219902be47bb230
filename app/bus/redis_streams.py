"""The scale-out bus: one Redis Stream per (topic, tenant), consumer groups, batched reads and acks.

This class writes entries, reads them through consumer groups (new ones with one XREADGROUP over all of a
topic's streams, stale ones with XAUTOCLAIM), keeps held entries claimed and acknowledges them. Its parts:
app/bus/redis_keys.py (the key layout), app/bus/redis_registry.py (which tenants have a stream, groups created
on them), app/bus/redis_dead_letters.py (failure bookkeeping and dead letters), app/bus/redis_stats.py (figures).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Collection, Sequence
from typing import Any, cast

import redis

from app.bus.base import DeadLetter, Delivery, StreamStats, check_fields, entry_names
from app.bus.redis_dead_letters import DeadLetters
from app.bus.redis_keys import Entries, RedisKeys, StreamsReply, translate_errors
from app.bus.redis_registry import StreamRegistry
from app.bus.redis_stats import StreamInspector

log = logging.getLogger(__name__)

ERASE_PAGE = 1000
# Reset an entry's idle time if `consumer` still owns it: XCLAIM ... JUSTID leaves the delivery count alone, and
# checking the owner first (atomically, in the script) never takes back an entry another consumer has claimed.
_KEEP_ALIVE_LUA = """
local rows = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1)
if #rows == 0 or rows[1][2] ~= ARGV[2] then return 0 end
redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[3], 'JUSTID')
return 1
"""


class RedisStreamsBus:
    def __init__(
        self,
        url: str,
        *,
        namespace: str = "sb",
        maxlen: int = 100_000,
        registry_refresh_s: float = 1.0,
        socket_timeout_s: float = 30.0,
    ) -> None:
        self.namespace = namespace
        self.maxlen = maxlen
        self.registry_refresh_s = registry_refresh_s
        self._socket_timeout_s = socket_timeout_s
        self._redis = redis.Redis.from_url(
            url, decode_responses=True, socket_timeout=socket_timeout_s, socket_connect_timeout=5,
            socket_keepalive=True, health_check_interval=30,
        )
        self._keys = RedisKeys(namespace)
        self._registry = StreamRegistry(self._redis, self._keys, registry_refresh_s)
        self._dead_letters = DeadLetters(self._redis, self._keys, maxlen)
        self._inspector = StreamInspector(self._redis, self._keys, self._registry)
        self._lock = threading.Lock()  # guards the cursor: threads of a process share the bus
        self._cursor = 0  # rotates the window of streams read when there are more streams than `count`
        self._keep_alive_script = self._redis.register_script(_KEEP_ALIVE_LUA)

    def _delivery(self, topic: str, tenant: str, entry_id: str, fields: dict[str, str], n: int) -> Delivery:
        return Delivery(topic, tenant, entry_id, fields, n, self.namespace)

    # -- writing ---------------------------------------------------------------------------------------
    @translate_errors
    def publish(self, topic: str, tenant_id: str, fields: dict[str, str]) -> str:
        key = self._keys.stream(topic, tenant_id)
        pipe = self._redis.pipeline(transaction=True)  # never a stream the registry does not know about
        pipe.xadd(key, cast(Any, check_fields(fields)), maxlen=self.maxlen, approximate=True)
        pipe.sadd(self._keys.registry(topic), tenant_id)
        entry_id, _ = pipe.execute()
        self._registry.published(topic, [tenant_id])
        return str(entry_id)

    @translate_errors
    def publish_many(self, topic: str, entries: Sequence[tuple[str, dict[str, str]]]) -> list[str]:
        if not entries:
            return []
        keys = [self._keys.stream(topic, tenant) for tenant, _ in entries]  # validates every name first
        for _, fields in entries:
            check_fields(fields)
        tenants = sorted({tenant for tenant, _ in entries})
        pipe = self._redis.pipeline(transaction=True)  # MULTI/EXEC: one round trip, nothing interleaved
        for key, (_, fields) in zip(keys, entries, strict=True):
            pipe.xadd(key, cast(Any, fields), maxlen=self.maxlen, approximate=True)
        pipe.sadd(self._keys.registry(topic), *tenants)
        replies = pipe.execute()
        self._registry.published(topic, tenants)
        return [str(entry_id) for entry_id in replies[: len(entries)]]

    # -- groups ----------------------------------------------------------------------------------------
    @translate_errors
    def ensure_group(self, topic: str, group: str) -> None:
        self._registry.streams_for(topic, group, force_refresh=True)

    # -- reading ---------------------------------------------------------------------------------------
    @translate_errors
    def read(
        self, topic: str, group: str, consumer: str, *, count: int, block_ms: int, skip: Collection[str] = ()
    ) -> list[Delivery]:
        tenants = [t for t in self._registry.streams_for(topic, group) if t not in skip]
        if not tenants:
            if block_ms > 0:  # nothing to block on yet; wait as a blocking read would, then look again
                time.sleep(min(block_ms / 1000, self.registry_refresh_s))
            return []
        # Block no longer than the registry refresh, so a new tenant's stream is picked up promptly, and
        # well inside the socket timeout.
        block = min(block_ms, int(self.registry_refresh_s * 1000), int(self._socket_timeout_s * 500))
        try:
            return self._read_batch(topic, group, consumer, tenants, count, block)
        except redis.ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            # A stream or group vanished (deleted by an operator): recreate on the next read.
            log.warning("consumer group %s missing on a %s stream; recreating it", group, topic)
            self._registry.forget_groups(topic, group)
            return []

    def _read_batch(
        self, topic: str, group: str, consumer: str, tenants: list[str], count: int, block: int
    ) -> list[Delivery]:
        """At most `count` entries, spread over tenants. XREADGROUP's COUNT is per stream, so with more
        streams than `count` we read rotating windows of `count` streams, one entry each: a bigger batch would
        sit pending while it is worked through, go idle past `claim_idle_ms` and be claimed elsewhere."""
        if len(tenants) <= count:
            per = count // len(tenants)
            out = self._xreadgroup(topic, group, consumer, tenants, per, block)
        else:
            per, out = 1, []
            for _ in range(0, len(tenants), count):
                with self._lock:
                    start = self._cursor % len(tenants)
                    self._cursor = start + count
                window = (tenants[start:] + tenants[:start])[:count]
                if out := self._xreadgroup(topic, group, consumer, window, 1, None):
                    break
            else:  # all empty: block on every stream; Redis answers with the stream that woke it up
                out = self._xreadgroup(topic, group, consumer, tenants, 1, block)
        # Streams that filled their share may hold more (one tenant's backlog): top the batch up from them.
        last = out
        while last and len(out) < count:
            full = [t for t, n in Counter(d.tenant_id for d in last).items() if n >= per]
            room = count - len(out)
            if not full:
                break
            full = full[:room]
            per = room // len(full)
            last = self._xreadgroup(topic, group, consumer, full, per, None)
            out.extend(last)
        return out

    def _xreadgroup(
        self, topic: str, group: str, consumer: str, tenants: list[str], per_stream: int, block: int | None
    ) -> list[Delivery]:
        keys = {self._keys.stream(topic, t): t for t in tenants}
        streams = cast(Any, dict.fromkeys(keys, ">"))
        wait = block if block and block > 0 else None  # BLOCK 0 would mean "forever" to Redis
        reply = cast(StreamsReply | None,
                     self._redis.xreadgroup(group, consumer, streams, count=per_stream, block=wait))
        return [
            self._delivery(topic, keys[key], entry_id, fields, 1)
            for key, entries in (reply or [])
            for entry_id, fields in entries
        ]

    @translate_errors
    def claim_stale(
        self, topic: str, group: str, consumer: str, *, min_idle_ms: int, count: int
    ) -> list[Delivery]:
        tenants = self._registry.streams_for(topic, group)
        if not tenants:
            return []
        pipe = self._redis.pipeline(transaction=False)
        for tenant in tenants:
            pipe.xpending(self._keys.stream(topic, tenant), group)
        with_pending = [t for t, s in zip(tenants, pipe.execute(raise_on_error=False), strict=True)
                        if isinstance(s, dict) and s.get("pending")]
        claimed: list[tuple[str, str, dict[str, str]]] = []
        for tenant in with_pending:
            if len(claimed) >= count:
                break
            key = self._keys.stream(topic, tenant)
            _, entries, deleted = self._redis.xautoclaim(
                key, group, consumer, min_idle_ms, "0-0", count=count - len(claimed)
            )[:3]
            claimed.extend((tenant, entry_id, fields) for entry_id, fields in entries)
            for entry_id in deleted:  # trimmed while pending; Redis has dropped it from the PEL
                self._dead_letters.dead_letter_trimmed(topic, group, tenant, entry_id)
        if not claimed:
            return []
        # XAUTOCLAIM just incremented each entry's delivery count; XPENDING reports the new value.
        pipe = self._redis.pipeline(transaction=False)
        for tenant, entry_id, _ in claimed:
            pipe.xpending_range(self._keys.stream(topic, tenant), group, entry_id, entry_id, 1)
        counts = [rows[0]["times_delivered"] if rows else 1 for rows in pipe.execute()]
        return [self._delivery(topic, tenant, entry_id, fields, int(n))
                for (tenant, entry_id, fields), n in zip(claimed, counts, strict=True)]

    @translate_errors
    def keep_alive(self, group: str, consumer: str, deliveries: Sequence[Delivery]) -> list[Delivery]:
        if not deliveries:
            return []
        pipe = self._redis.pipeline(transaction=False)  # the pipeline loads the script first if Redis lacks it
        for d in deliveries:
            self._keep_alive_script(keys=[self._keys.stream(d.topic, d.tenant_id)], args=[group, consumer, d.id],
                                    client=pipe)
        return [d for d, kept in zip(deliveries, pipe.execute(), strict=True) if kept]

    # -- settling --------------------------------------------------------------------------------------
    @translate_errors
    def ack(self, group: str, deliveries: Sequence[Delivery]) -> None:
        if not deliveries:
            return
        by_stream: dict[str, list[str]] = {}
        for d in deliveries:
            by_stream.setdefault(self._keys.stream(d.topic, d.tenant_id), []).append(d.id)
        pipe = self._redis.pipeline(transaction=False)
        for key, ids in by_stream.items():
            pipe.xack(key, group, *ids)
        retried = [key for d in deliveries if d.deliveries > 1
                   for key in (self._keys.failure(group, d), self._keys.attempts(group, d))]
        if retried:  # only redelivered entries can have a recorded failure or counted attempts
            pipe.delete(*retried)
        pipe.execute()

    @translate_errors
    def erase(self, tenant_id: str, topics: Sequence[str], ids: set[str]) -> int:
        erased = 0
        for topic in topics:
            for key in (self._keys.stream(topic, tenant_id), self._keys.dead(topic, tenant_id)):
                doomed, start = [], "-"
                while True:  # the whole stream, a page at a time
                    page = cast(Entries, self._redis.xrange(key, min=start, count=ERASE_PAGE))
                    doomed += [entry_id for entry_id, fields in page if entry_names(fields, ids)]
                    if len(page) < ERASE_PAGE:
                        break
                    start = "(" + page[-1][0]
                if doomed:
                    erased += int(cast(int, self._redis.xdel(key, *doomed)))
        return erased

    # -- failures and dead letters (app/bus/redis_dead_letters.py) -----------------------------------------
    def dead_letter(self, group: str, delivery: Delivery, reason: str) -> None:
        self._dead_letters.dead_letter(group, delivery, reason)

    def dead_letters(self, topic: str, tenant_id: str, *, count: int = 100) -> list[DeadLetter]:
        return self._dead_letters.dead_letters(topic, tenant_id, count=count)

    def record_dead(self, topic: str, tenant_id: str, fields: dict[str, str], reason: str) -> None:
        self._dead_letters.record_dead(topic, tenant_id, fields, reason)

    def record_failure(self, group: str, delivery: Delivery, reason: str) -> None:
        self._dead_letters.record_failure(group, delivery, reason)

    def last_failure(self, group: str, delivery: Delivery) -> str | None:
        return self._dead_letters.last_failure(group, delivery)

    def count_attempt(self, group: str, delivery: Delivery) -> int:
        return self._dead_letters.count_attempt(group, delivery)

    # -- figures (app/bus/redis_stats.py) ------------------------------------------------------------------
    def pending_count(self, topic: str, group: str) -> int:
        return self._inspector.pending_count(topic, group)

    def stream_length(self, topic: str, tenant_id: str) -> int:
        return self._inspector.stream_length(topic, tenant_id)

    def stream_stats(self, topic: str, groups: Sequence[str]) -> StreamStats:
        return self._inspector.stream_stats(topic, groups)

    def drained(self, topic: str, group: str, tenant_id: str) -> bool:
        return self._inspector.drained(topic, group, tenant_id)

    def close(self) -> None:
        self._redis.close()
