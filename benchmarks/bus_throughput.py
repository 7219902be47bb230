"""Bus throughput: publish N entries across T tenants, then consume and ack them with the Consumer runner
(`Consumer.run`, the loop workers use).

    .venv/bin/python benchmarks/bus_throughput.py [--messages 20000] [--tenants 100] [--batch 64]
        [--redis-url redis://127.0.0.1:6379/0]

Publishing is one entry per call (one round trip each, as a gateway does per webhook); consuming uses the
batched read and the single batched ack per batch, with a no-op handler, so the numbers are the bus's own
ceiling. Redis runs in a throwaway key namespace that is deleted afterwards. Local only.
"""

from __future__ import annotations

import argparse
import platform
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime

import redis

from app.bus.base import Bus, Delivery
from app.bus.consumer import Consumer
from app.bus.memory import MemoryBus
from app.bus.redis_streams import RedisStreamsBus

TOPIC, GROUP = "inbound", "bench"


def timed(label: str, n: int, fn: Callable[[], object]) -> float:
    started = time.perf_counter()
    fn()
    seconds = time.perf_counter() - started
    rate = n / seconds
    print(f"  {label:<28} {n:>8} msgs in {seconds:6.2f}s  = {rate:>9,.0f} msgs/s", flush=True)
    return rate


def run(name: str, bus: Bus, messages: int, tenants: int, batch: int) -> dict[str, float]:
    print(f"{name}: {messages} messages across {tenants} tenants, batch {batch}", flush=True)
    body = '{"text": "where is my order? it was due on Tuesday", "channel": "whatsapp"}'
    tenant_ids = [f"tenant{i:04d}" for i in range(tenants)]
    bus.ensure_group(TOPIC, GROUP)

    def publish() -> None:
        for i in range(messages):
            bus.publish(TOPIC, tenant_ids[i % tenants], {"type": "InboundMessage", "v": "1", "body": body})

    handled = 0
    stop = threading.Event()

    def handler(d: Delivery) -> None:
        nonlocal handled
        handled += 1
        if handled == messages:
            stop.set()  # the runner finishes this batch (acks it) and returns

    consumer = Consumer(bus, TOPIC, GROUP, "bench-1", handler, batch_size=batch, stop=stop)
    results = {"publish": timed("publish (1 per call)", messages, publish),
               "consume": timed("consume + batched ack", messages, consumer.run)}
    pending = bus.pending_count(TOPIC, GROUP)
    if handled != messages or pending:
        raise SystemExit(f"{name}: handled {handled} of {messages}, {pending} left pending")
    return results


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--tenants", type=int, default=100)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    args = parser.parse_args()
    if not 0 < args.messages <= 1_000_000 or not 0 < args.tenants <= 10_000:
        parser.error("keep --messages within 1..1,000,000 and --tenants within 1..10,000")
    print(f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {platform.node()}, Python {platform.python_version()}")

    run("MemoryBus", MemoryBus(), args.messages, args.tenants, args.batch)

    namespace = f"sbbench{uuid.uuid4().hex[:8]}"
    bus = RedisStreamsBus(args.redis_url, namespace=namespace)
    try:
        run(f"RedisStreamsBus ({args.redis_url})", bus, args.messages, args.tenants, args.batch)
    finally:
        bus.close()
        client = redis.Redis.from_url(args.redis_url)
        keys = list(client.scan_iter(f"{namespace}:*", count=1000))
        for start in range(0, len(keys), 1000):
            client.delete(*keys[start:start + 1000])
        client.close()


if __name__ == "__main__":
    main()
