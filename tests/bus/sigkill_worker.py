"""Child process for test_sigkill: takes one entry, marks that it has it, then hangs until killed.

Usage: python -m tests.bus.sigkill_worker REDIS_URL NAMESPACE
"""

from __future__ import annotations

import sys
import threading

import redis

from app.bus.base import Delivery
from app.bus.consumer import Consumer
from app.bus.redis_streams import RedisStreamsBus


def main(url: str, namespace: str) -> None:
    marker = redis.Redis.from_url(url)
    hang = threading.Event()

    def handler(d: Delivery) -> None:
        marker.incr(f"{namespace}:taken")
        marker.set(f"{namespace}:taken_id", d.id)
        hang.wait()  # never set: the parent SIGKILLs us while we hold the entry

    bus = RedisStreamsBus(url, namespace=namespace)
    Consumer(bus, "inbound", "orchestrator", "doomed", handler, claim_idle_ms=500, block_ms=200).run()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
