"""Figures of the Redis bus's streams: pending entries, lengths, lag, and whether a group is done
with a tenant's stream (for /metrics, the redrive sweep, tests and benchmarks). Each answer costs one round trip,
however many tenants there are."""

from __future__ import annotations

from collections.abc import Sequence

import redis

from app.bus.base import StreamStats
from app.bus.redis_keys import RedisKeys, translate_errors
from app.bus.redis_registry import StreamRegistry


class StreamInspector:
    def __init__(self, client: redis.Redis, keys: RedisKeys, registry: StreamRegistry) -> None:
        self._redis = client
        self._keys = keys
        self._registry = registry

    @translate_errors
    def pending_count(self, topic: str, group: str) -> int:
        tenants = self._registry.streams_for(topic, group)
        pipe = self._redis.pipeline(transaction=False)
        for tenant in tenants:
            pipe.xpending(self._keys.stream(topic, tenant), group)
        return sum(s["pending"] for s in pipe.execute(raise_on_error=False) if isinstance(s, dict))

    @translate_errors
    def stream_length(self, topic: str, tenant_id: str) -> int:
        return int(self._redis.xlen(self._keys.stream(topic, tenant_id)))

    @translate_errors
    def stream_stats(self, topic: str, groups: Sequence[str]) -> StreamStats:
        # One round trip for every tenant's stream: a scrape costs 3 commands per tenant, whatever the traffic.
        tenants = self._registry.tenants(topic)
        pipe = self._redis.pipeline(transaction=False)
        for tenant in tenants:
            pipe.xlen(self._keys.stream(topic, tenant))
            pipe.xlen(self._keys.dead(topic, tenant))
            pipe.xinfo_groups(self._keys.stream(topic, tenant))
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

    @translate_errors
    def drained(self, topic: str, group: str, tenant_id: str) -> bool:
        key = self._keys.stream(topic, tenant_id)
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
