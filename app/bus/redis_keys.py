"""Where the Redis bus keeps its entries and bookkeeping, and how a Redis outage reaches its callers.

Keys (`ns` is the namespace, "sb" in production):
- `{ns}:{topic}:{tenant}`            the tenant's stream, trimmed with MAXLEN ~ maxlen
- `{ns}:{topic}:{tenant}:dead`       its dead letters: one JSON field `dl` per entry (original fields inside)
- `{ns}:_streams:{topic}`            SET of tenant ids that have a stream: readers discover new tenants here
- `{ns}:_fail:{topic}:{group}:{tenant}:{id}`   last failure reason of a pending entry, with a TTL
- `{ns}:_tries:{topic}:{group}:{tenant}:{id}`  attempts started on a redelivered entry, with a TTL
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import redis

from app.bus.base import BusUnavailable, Delivery, check_name, dead_key, stream_key

T = TypeVar("T")
# Reply shapes with decode_responses=True (redis-py's own annotations cover bytes and async clients too).
Entries = list[tuple[str, dict[str, str]]]
StreamsReply = list[tuple[str, Entries]]


def translate_errors(fn: Callable[..., T]) -> Callable[..., T]:
    """Callers see one typed error for "Redis is unreachable", whatever redis-py raised."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        try:
            return fn(*args, **kwargs)
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise BusUnavailable(f"Redis unreachable ({exc}); check REDIS_URL and that Redis runs") from exc

    return wrapper


@dataclass(frozen=True)
class RedisKeys:
    namespace: str

    def stream(self, topic: str, tenant_id: str) -> str:
        return stream_key(topic, tenant_id, self.namespace)

    def dead(self, topic: str, tenant_id: str) -> str:
        return dead_key(topic, tenant_id, self.namespace)

    def registry(self, topic: str) -> str:
        return f"{self.namespace}:_streams:{check_name('topic', topic)}"

    def failure(self, group: str, d: Delivery) -> str:
        return f"{self.namespace}:_fail:{d.topic}:{group}:{d.tenant_id}:{d.id}"

    def attempts(self, group: str, d: Delivery) -> str:
        return f"{self.namespace}:_tries:{d.topic}:{group}:{d.tenant_id}:{d.id}"
