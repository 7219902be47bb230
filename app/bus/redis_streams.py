"""The scale-out bus: one Redis Stream per (topic, tenant), consumer groups, batched reads and acks.

Keys (`ns` is the namespace, "sb" in production):
- `{ns}:{topic}:{tenant}`            the tenant's stream, trimmed with MAXLEN ~ maxlen
- `{ns}:{topic}:{tenant}:dead`       its dead letters: one JSON field `dl` per entry (original fields inside)
- `{ns}:_streams:{topic}`            SET of tenant ids that have a stream: readers discover new tenants here
- `{ns}:_fail:{topic}:{group}:{tenant}:{id}`  last failure reason of a pending entry, with a TTL

A reader re-reads the registry every `registry_refresh_s` and creates its group (from id 0) on newly seen
streams, then reads all streams of the topic with one XREADGROUP.
"""

from __future__ import annotations

import functools
import json
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Collection, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar, cast

import redis

from app.bus.base import (
    TRIMMED_REASON,
    BusUnavailable,
    DeadLetter,
    Delivery,
    StreamStats,
    check_fields,
    check_name,
    dead_key,
    entry_names,
    stream_key,
)

log = logging.getLogger(__name__)

T = TypeVar("T")
FAILURE_TTL_S = 7 * 24 * 3600
# Reply shapes with decode_responses=True (redis-py's own annotations cover bytes and async clients too).
_Entries = list[tuple[str, dict[str, str]]]
ERASE_PAGE = 1000
_StreamsReply = list[tuple[str, _Entries]]
# Reset an entry's idle time if `consumer` still owns it: XCLAIM ... JUSTID leaves the delivery count alone, and
# checking the owner first (atomically, in the script) never takes back an entry another consumer has claimed.
_KEEP_ALIVE_LUA = """
local rows = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1)
if #rows == 0 or rows[1][2] ~= ARGV[2] then return 0 end
redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[3], 'JUSTID')
return 1
"""


def _translate_errors(fn: Callable[..., T]) -> Callable[..., T]:
    """Callers see one typed error for "Redis is unreachable", whatever redis-py raised."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        try:
            return fn(*args, **kwargs)
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise BusUnavailable(f"Redis unreachable ({exc}); check REDIS_URL and that Redis runs") from exc

    return wrapper


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
        self._lock = threading.Lock()
        self._tenants: dict[str, set[str]] = {}  # topic -> tenants with a stream
        self._refreshed_at: dict[str, float] = {}
        self._groups: dict[tuple[str, str], set[str]] = {}  # (topic, group) -> tenants where the group exists
        self._cursor = 0  # rotates the window of streams read when there are more streams than `count`
        self._keep_alive_script = self._redis.register_script(_KEEP_ALIVE_LUA)

    # -- keys ------------------------------------------------------------------------------------------
    def stream_key(self, topic: str, tenant_id: str) -> str:
        return stream_key(topic, tenant_id, self.namespace)

    def dead_key(self, topic: str, tenant_id: str) -> str:
        return dead_key(topic, tenant_id, self.namespace)

    def _registry_key(self, topic: str) -> str:
        return f"{self.namespace}:_streams:{check_name('topic', topic)}"

    def _failure_key(self, group: str, d: Delivery) -> str:
        return f"{self.namespace}:_fail:{d.topic}:{group}:{d.tenant_id}:{d.id}"

    def _attempts_key(self, group: str, d: Delivery) -> str:
        return f"{self.namespace}:_tries:{d.topic}:{group}:{d.tenant_id}:{d.id}"

    def _delivery(self, topic: str, tenant: str, entry_id: str, fields: dict[str, str], n: int) -> Delivery:
        return Delivery(topic, tenant, entry_id, fields, n, self.namespace)

    # -- writing ---------------------------------------------------------------------------------------
    @_translate_errors
    def publish(self, topic: str, tenant_id: str, fields: dict[str, str]) -> str:
        key = self.stream_key(topic, tenant_id)
        pipe = self._redis.pipeline(transaction=True)  # never a stream the registry does not know about
        pipe.xadd(key, cast(Any, check_fields(fields)), maxlen=self.maxlen, approximate=True)
        pipe.sadd(self._registry_key(topic), tenant_id)
        entry_id, _ = pipe.execute()
        with self._lock:
            self._tenants.setdefault(topic, set()).add(tenant_id)
        return str(entry_id)

    @_translate_errors
    def publish_many(self, topic: str, entries: Sequence[tuple[str, dict[str, str]]]) -> list[str]:
        if not entries:
            return []
        keys = [self.stream_key(topic, tenant) for tenant, _ in entries]  # validates every name first
        for _, fields in entries:
            check_fields(fields)
        tenants = sorted({tenant for tenant, _ in entries})
        pipe = self._redis.pipeline(transaction=True)  # MULTI/EXEC: one round trip, nothing interleaved
        for key, (_, fields) in zip(keys, entries, strict=True):
            pipe.xadd(key, cast(Any, fields), maxlen=self.maxlen, approximate=True)
        pipe.sadd(self._registry_key(topic), *tenants)
        replies = pipe.execute()
        with self._lock:
            self._tenants.setdefault(topic, set()).update(tenants)
        return [str(entry_id) for entry_id in replies[: len(entries)]]

    # -- groups ----------------------------------------------------------------------------------------
    @_translate_errors
    def ensure_group(self, topic: str, group: str) -> None:
        self._streams_for(topic, group, force_refresh=True)

    def _streams_for(self, topic: str, group: str, *, force_refresh: bool = False) -> list[str]:
        """The topic's tenants, with `group` created on each of their streams."""
        with self._lock:
            stale = time.monotonic() - self._refreshed_at.get(topic, float("-inf")) > self.registry_refresh_s
        if stale or force_refresh:
            members = cast(set[str], self._redis.smembers(self._registry_key(topic)))
            with self._lock:
                self._tenants.setdefault(topic, set()).update(members)
                self._refreshed_at[topic] = time.monotonic()
        with self._lock:
            tenants = sorted(self._tenants.get(topic, ()))
            missing = [t for t in tenants if t not in self._groups.get((topic, group), set())]
        if missing:
            self._create_groups(topic, group, missing)
        return tenants

    def _create_groups(self, topic: str, group: str, tenants: list[str]) -> None:
        pipe = self._redis.pipeline(transaction=False)
        for tenant in tenants:
            # From id 0: entries published before this group existed are delivered too.
            pipe.xgroup_create(self.stream_key(topic, tenant), group, id="0", mkstream=True)
        for result in pipe.execute(raise_on_error=False):
            if isinstance(result, Exception) and "BUSYGROUP" not in str(result):
                raise result
        with self._lock:
            self._groups.setdefault((topic, group), set()).update(tenants)

    def _forget_groups(self, topic: str, group: str) -> None:
        with self._lock:
            self._groups.pop((topic, group), None)

    # -- reading ---------------------------------------------------------------------------------------
    @_translate_errors
    def read(
        self, topic: str, group: str, consumer: str, *, count: int, block_ms: int, skip: Collection[str] = ()
    ) -> list[Delivery]:
        tenants = [t for t in self._streams_for(topic, group) if t not in skip]
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
            self._forget_groups(topic, group)
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
        keys = {self.stream_key(topic, t): t for t in tenants}
        streams = cast(Any, dict.fromkeys(keys, ">"))
        wait = block if block and block > 0 else None  # BLOCK 0 would mean "forever" to Redis
        reply = cast(_StreamsReply | None,
                     self._redis.xreadgroup(group, consumer, streams, count=per_stream, block=wait))
        return [
            self._delivery(topic, keys[key], entry_id, fields, 1)
            for key, entries in (reply or [])
            for entry_id, fields in entries
        ]

    @_translate_errors
    def claim_stale(
        self, topic: str, group: str, consumer: str, *, min_idle_ms: int, count: int
    ) -> list[Delivery]:
        tenants = self._streams_for(topic, group)
        if not tenants:
            return []
        pipe = self._redis.pipeline(transaction=False)
        for tenant in tenants:
            pipe.xpending(self.stream_key(topic, tenant), group)
        with_pending = [t for t, s in zip(tenants, pipe.execute(raise_on_error=False), strict=True)
                        if isinstance(s, dict) and s.get("pending")]
        claimed: list[tuple[str, str, dict[str, str]]] = []
        for tenant in with_pending:
            if len(claimed) >= count:
                break
            key = self.stream_key(topic, tenant)
            _, entries, deleted = self._redis.xautoclaim(
                key, group, consumer, min_idle_ms, "0-0", count=count - len(claimed)
            )[:3]
            claimed.extend((tenant, entry_id, fields) for entry_id, fields in entries)
            for entry_id in deleted:  # trimmed while pending; Redis has dropped it from the PEL
                self._dead_letter_trimmed(topic, group, tenant, entry_id)
        if not claimed:
            return []
        # XAUTOCLAIM just incremented each entry's delivery count; XPENDING reports the new value.
        pipe = self._redis.pipeline(transaction=False)
        for tenant, entry_id, _ in claimed:
            pipe.xpending_range(self.stream_key(topic, tenant), group, entry_id, entry_id, 1)
        counts = [rows[0]["times_delivered"] if rows else 1 for rows in pipe.execute()]
        return [self._delivery(topic, tenant, entry_id, fields, int(n))
                for (tenant, entry_id, fields), n in zip(claimed, counts, strict=True)]

    @_translate_errors
    def keep_alive(self, group: str, consumer: str, deliveries: Sequence[Delivery]) -> list[Delivery]:
        if not deliveries:
            return []
        pipe = self._redis.pipeline(transaction=False)  # the pipeline loads the script first if Redis lacks it
        for d in deliveries:
            self._keep_alive_script(keys=[self.stream_key(d.topic, d.tenant_id)], args=[group, consumer, d.id],
                                    client=pipe)
        return [d for d, kept in zip(deliveries, pipe.execute(), strict=True) if kept]

    # -- settling --------------------------------------------------------------------------------------
    @_translate_errors
    def ack(self, group: str, deliveries: Sequence[Delivery]) -> None:
        if not deliveries:
            return
        by_stream: dict[str, list[str]] = {}
        for d in deliveries:
            by_stream.setdefault(self.stream_key(d.topic, d.tenant_id), []).append(d.id)
        pipe = self._redis.pipeline(transaction=False)
        for key, ids in by_stream.items():
            pipe.xack(key, group, *ids)
        retried = [key for d in deliveries if d.deliveries > 1
                   for key in (self._failure_key(group, d), self._attempts_key(group, d))]
        if retried:  # only redelivered entries can have a recorded failure or counted attempts
            pipe.delete(*retried)
        pipe.execute()

    @_translate_errors
    def dead_letter(self, group: str, delivery: Delivery, reason: str) -> None:
        letter = {"dl": json.dumps({
            "original_id": delivery.id, "reason": reason, "deliveries": delivery.deliveries,
            "group": group, "dead_at": datetime.now(UTC).isoformat(), "fields": delivery.fields,
        })}
        pipe = self._redis.pipeline(transaction=True)  # copied and acked together, or neither
        pipe.xadd(self.dead_key(delivery.topic, delivery.tenant_id), cast(Any, letter),
                  maxlen=self.maxlen, approximate=True)
        pipe.xack(self.stream_key(delivery.topic, delivery.tenant_id), group, delivery.id)
        pipe.delete(self._failure_key(group, delivery), self._attempts_key(group, delivery))
        pipe.execute()
        log.warning("dead-lettered %s entry %s of tenant %s after %d deliveries: %s",
                    delivery.topic, delivery.id, delivery.tenant_id, delivery.deliveries, reason)

    def _dead_letter_trimmed(self, topic: str, group: str, tenant: str, entry_id: str) -> None:
        self.dead_letter(group, self._delivery(topic, tenant, entry_id, {}, 0), TRIMMED_REASON)

    @_translate_errors
    def erase(self, tenant_id: str, topics: Sequence[str], ids: set[str]) -> int:
        erased = 0
        for topic in topics:
            for key in (self.stream_key(topic, tenant_id), self.dead_key(topic, tenant_id)):
                doomed, start = [], "-"
                while True:  # the whole stream, a page at a time
                    page = cast(_Entries, self._redis.xrange(key, min=start, count=ERASE_PAGE))
                    doomed += [entry_id for entry_id, fields in page if entry_names(fields, ids)]
                    if len(page) < ERASE_PAGE:
                        break
                    start = "(" + page[-1][0]
                if doomed:
                    erased += int(cast(int, self._redis.xdel(key, *doomed)))
        return erased

    @_translate_errors
    def dead_letters(self, topic: str, tenant_id: str, *, count: int = 100) -> list[DeadLetter]:
        out = []
        entries = cast(_Entries, self._redis.xrange(self.dead_key(topic, tenant_id), count=count))
        for _, raw in entries:
            data = json.loads(raw["dl"])
            out.append(DeadLetter(
                topic, tenant_id, data["original_id"], data["fields"], data["reason"],
                int(data["deliveries"]),
                {"group": data["group"], "dead_at": data["dead_at"]},
            ))
        return out

    @_translate_errors
    def record_dead(self, topic: str, tenant_id: str, fields: dict[str, str], reason: str) -> None:
        letter = {"dl": json.dumps({
            "original_id": "", "reason": reason, "deliveries": 0, "group": "",
            "dead_at": datetime.now(UTC).isoformat(), "fields": check_fields(fields),
        })}
        self._redis.xadd(self.dead_key(topic, tenant_id), cast(Any, letter), maxlen=self.maxlen, approximate=True)
        log.warning("recorded a dead %s entry for tenant %s that was never published: %s", topic, tenant_id, reason)

    @_translate_errors
    def record_failure(self, group: str, delivery: Delivery, reason: str) -> None:
        self._redis.set(self._failure_key(group, delivery), reason, ex=FAILURE_TTL_S)

    @_translate_errors
    def last_failure(self, group: str, delivery: Delivery) -> str | None:
        return cast(str | None, self._redis.get(self._failure_key(group, delivery)))

    @_translate_errors
    def count_attempt(self, group: str, delivery: Delivery) -> int:
        if delivery.deliveries <= 1:
            return 1
        key = self._attempts_key(group, delivery)
        pipe = self._redis.pipeline(transaction=True)
        pipe.incr(key)
        pipe.expire(key, FAILURE_TTL_S)
        started, _ = pipe.execute()
        return int(started) + 1

    # -- introspection ---------------------------------------------------------------------------------
    @_translate_errors
    def pending_count(self, topic: str, group: str) -> int:
        tenants = self._streams_for(topic, group)
        pipe = self._redis.pipeline(transaction=False)
        for tenant in tenants:
            pipe.xpending(self.stream_key(topic, tenant), group)
        return sum(s["pending"] for s in pipe.execute(raise_on_error=False) if isinstance(s, dict))

    @_translate_errors
    def stream_length(self, topic: str, tenant_id: str) -> int:
        return int(self._redis.xlen(self.stream_key(topic, tenant_id)))

    @_translate_errors
    def stream_stats(self, topic: str, groups: Sequence[str]) -> StreamStats:
        # One round trip for every tenant's stream: a scrape costs 3 commands per tenant, whatever the traffic.
        tenants = self.tenants(topic)
        pipe = self._redis.pipeline(transaction=False)
        for tenant in tenants:
            pipe.xlen(self.stream_key(topic, tenant))
            pipe.xlen(self.dead_key(topic, tenant))
            pipe.xinfo_groups(self.stream_key(topic, tenant))
        replies = pipe.execute(raise_on_error=False)
        length = dead = 0
        pending = dict.fromkeys(groups, 0)
        lag = dict.fromkeys(groups, 0)
        for i in range(0, len(replies), 3):
            size, dead_size, infos = replies[i : i + 3]
            length += size if isinstance(size, int) else 0
            dead += dead_size if isinstance(dead_size, int) else 0
            found = set()
            for info in infos if isinstance(infos, list) else ():
                if info["name"] in pending:
                    found.add(info["name"])
                    pending[info["name"]] += int(info["pending"])
                    # Redis 7 reports the lag; None when it cannot tell (entries deleted mid-stream).
                    lag[info["name"]] += int(info.get("lag") or 0)
            for group in set(groups) - found:  # created on its first read, from the stream's start
                lag[group] += size if isinstance(size, int) else 0
        return StreamStats(length=length, dead_letters=dead, pending=pending, lag=lag)

    @_translate_errors
    def drained(self, topic: str, group: str, tenant_id: str) -> bool:
        key = self.stream_key(topic, tenant_id)
        pipe = self._redis.pipeline(transaction=True)  # one snapshot of the stream and its groups
        pipe.xinfo_stream(key)
        pipe.xinfo_groups(key)
        try:
            stream, groups = pipe.execute()
        except redis.ResponseError as exc:
            if "no such key" in str(exc).lower():
                return True
            raise
        mine = next((g for g in groups if g["name"] == group), None)
        if mine is None:  # the group, once created, starts at the stream's beginning (id 0)
            return int(stream["length"]) == 0
        # Against the last id ever added: the stream's length counts acknowledged entries too.
        return int(mine["pending"]) == 0 and mine["last-delivered-id"] == stream["last-generated-id"]

    @_translate_errors
    def tenants(self, topic: str) -> list[str]:
        """Tenants that have a stream for `topic` (from the registry)."""
        return sorted(cast(set[str], self._redis.smembers(self._registry_key(topic))))

    def close(self) -> None:
        self._redis.close()
