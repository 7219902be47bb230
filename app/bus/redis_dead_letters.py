"""The Redis bus's failure bookkeeping: why a pending entry last failed, how many attempts started on it, and
the tenants' dead-letter streams (`{ns}:{topic}:{tenant}:dead`, one JSON field `dl` per entry).

The reason and the attempt count live in Redis, not in a process, so whichever consumer reclaims an entry can
dead-letter it with the reason of the failure that happened elsewhere. Both expire after `FAILURE_TTL_S` and are
deleted when the entry is acknowledged or dead-lettered.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any, cast

import redis

from app.bus.base import TRIMMED_REASON, DeadLetter, Delivery, check_fields
from app.bus.redis_keys import Entries, RedisKeys, translate_errors

log = logging.getLogger(__name__)

FAILURE_TTL_S = 7 * 24 * 3600


class DeadLetters:
    def __init__(self, client: redis.Redis, keys: RedisKeys, maxlen: int) -> None:
        self._redis = client
        self._keys = keys
        self.maxlen = maxlen

    @translate_errors
    def dead_letter(self, group: str, delivery: Delivery, reason: str) -> None:
        letter = {"dl": json.dumps({
            "original_id": delivery.id, "reason": reason, "deliveries": delivery.deliveries,
            "group": group, "dead_at": datetime.now(UTC).isoformat(), "fields": delivery.fields,
        })}
        pipe = self._redis.pipeline(transaction=True)  # copied and acked together, or neither
        pipe.xadd(self._keys.dead(delivery.topic, delivery.tenant_id), cast(Any, letter),
                  maxlen=self.maxlen, approximate=True)
        pipe.xack(self._keys.stream(delivery.topic, delivery.tenant_id), group, delivery.id)
        pipe.delete(self._keys.failure(group, delivery), self._keys.attempts(group, delivery))
        pipe.execute()
        log.warning("dead-lettered %s entry %s of tenant %s after %d deliveries: %s",
                    delivery.topic, delivery.id, delivery.tenant_id, delivery.deliveries, reason)

    def dead_letter_trimmed(self, topic: str, group: str, tenant: str, entry_id: str) -> None:
        """An entry trimmed from its stream while pending: Redis dropped it, only its id is left to keep."""
        trimmed = Delivery(topic, tenant, entry_id, {}, 0, self._keys.namespace)
        self.dead_letter(group, trimmed, TRIMMED_REASON)

    @translate_errors
    def dead_letters(self, topic: str, tenant_id: str, *, count: int = 100) -> list[DeadLetter]:
        out = []
        entries = cast(Entries, self._redis.xrange(self._keys.dead(topic, tenant_id), count=count))
        for _, raw in entries:
            data = json.loads(raw["dl"])
            out.append(DeadLetter(
                topic, tenant_id, data["original_id"], data["fields"], data["reason"],
                int(data["deliveries"]),
                {"group": data["group"], "dead_at": data["dead_at"]},
            ))
        return out

    @translate_errors
    def record_dead(self, topic: str, tenant_id: str, fields: dict[str, str], reason: str) -> None:
        letter = {"dl": json.dumps({
            "original_id": "", "reason": reason, "deliveries": 0, "group": "",
            "dead_at": datetime.now(UTC).isoformat(), "fields": check_fields(fields),
        })}
        self._redis.xadd(self._keys.dead(topic, tenant_id), cast(Any, letter), maxlen=self.maxlen, approximate=True)
        log.warning("recorded a dead %s entry for tenant %s that was never published: %s", topic, tenant_id, reason)

    @translate_errors
    def record_failure(self, group: str, delivery: Delivery, reason: str) -> None:
        self._redis.set(self._keys.failure(group, delivery), reason, ex=FAILURE_TTL_S)

    @translate_errors
    def last_failure(self, group: str, delivery: Delivery) -> str | None:
        return cast(str | None, self._redis.get(self._keys.failure(group, delivery)))

    @translate_errors
    def count_attempt(self, group: str, delivery: Delivery) -> int:
        if delivery.deliveries <= 1:
            return 1
        key = self._keys.attempts(group, delivery)
        pipe = self._redis.pipeline(transaction=True)
        pipe.incr(key)
        pipe.expire(key, FAILURE_TTL_S)
        started, _ = pipe.execute()
        return int(started) + 1
