"""Which tenants have a stream of a topic, and the consumer groups created on them (the Redis bus's).

Publishing adds the tenant to the topic's registry set in the same transaction as the entry, so no stream exists
that readers cannot find. A reader re-reads the set every `refresh_s` and creates its group (from id 0) on the
streams it has not seen yet.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from typing import cast

import redis

from app.bus.redis_keys import RedisKeys


class StreamRegistry:
    def __init__(self, client: redis.Redis, keys: RedisKeys, refresh_s: float) -> None:
        self._redis = client
        self._keys = keys
        self.refresh_s = refresh_s
        self._lock = threading.Lock()
        self._tenants: dict[str, set[str]] = {}  # topic -> tenants with a stream
        self._refreshed_at: dict[str, float] = {}
        self._groups: dict[tuple[str, str], set[str]] = {}  # (topic, group) -> tenants where the group exists

    def published(self, topic: str, tenants: Iterable[str]) -> None:
        """This process wrote to these tenants' streams (and the registry set): readers here need no refresh."""
        with self._lock:
            self._tenants.setdefault(topic, set()).update(tenants)

    def streams_for(self, topic: str, group: str, *, force_refresh: bool = False) -> list[str]:
        """The topic's tenants, with `group` created on each of their streams."""
        with self._lock:
            stale = time.monotonic() - self._refreshed_at.get(topic, float("-inf")) > self.refresh_s
        if stale or force_refresh:
            members = cast(set[str], self._redis.smembers(self._keys.registry(topic)))
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
            pipe.xgroup_create(self._keys.stream(topic, tenant), group, id="0", mkstream=True)
        for result in pipe.execute(raise_on_error=False):
            if isinstance(result, Exception) and "BUSYGROUP" not in str(result):
                raise result
        with self._lock:
            self._groups.setdefault((topic, group), set()).update(tenants)

    def forget_groups(self, topic: str, group: str) -> None:
        """A stream or group vanished (deleted by an operator): created again on the next read."""
        with self._lock:
            self._groups.pop((topic, group), None)

    def tenants(self, topic: str) -> list[str]:
        """Tenants that have a stream for `topic`, as Redis has them now."""
        return sorted(cast(set[str], self._redis.smembers(self._keys.registry(topic))))
