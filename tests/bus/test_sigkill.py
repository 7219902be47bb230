"""A consumer process killed with SIGKILL while holding an entry: another consumer reclaims it and the work
completes exactly once. Real processes, real Redis."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import redis

from app.bus.base import Delivery
from app.bus.consumer import Consumer
from app.bus.redis_streams import RedisStreamsBus
from tests.bus.conftest import wait_for
from tests.conftest import REDIS_TEST_URL, REPO


def test_entry_held_by_a_killed_process_is_reclaimed_and_completed_once(redis_namespace: str) -> None:
    ns = redis_namespace
    r = redis.Redis.from_url(REDIS_TEST_URL, decode_responses=True)
    bus = RedisStreamsBus(REDIS_TEST_URL, namespace=ns)
    entry_id = bus.publish("inbound", "acme", {"text": "where is my order?"})

    child = subprocess.Popen(
        [sys.executable, "-m", "tests.bus.sigkill_worker", REDIS_TEST_URL, ns],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        wait_for(lambda: r.get(f"{ns}:taken_id") == entry_id, timeout=30)
        assert child.poll() is None  # still alive and holding the entry
        assert bus.pending_count("inbound", "orchestrator") == 1
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=10)
    assert child.returncode == -signal.SIGKILL

    completed: list[Delivery] = []

    def handler(d: Delivery) -> None:
        r.incr(f"{ns}:completed")
        completed.append(d)

    survivor = Consumer(bus, "inbound", "orchestrator", "survivor", handler, claim_idle_ms=500)
    wait_for(lambda: survivor.process_available().acked)
    assert [(d.id, d.deliveries) for d in completed] == [(entry_id, 2)]
    assert completed[0].fields == {"text": "where is my order?"}
    assert bus.pending_count("inbound", "orchestrator") == 0
    # Once more after the idle time has passed again: nothing is left to redeliver.
    time.sleep(0.7)
    assert survivor.process_available().handled == 0
    assert r.get(f"{ns}:completed") == "1"
    assert r.get(f"{ns}:taken") == "1"
    bus.close()
    r.close()
