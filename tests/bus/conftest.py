from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import TypeVar

import pytest

from app.bus.base import Bus
from app.bus.memory import MemoryBus
from app.bus.redis_streams import RedisStreamsBus
from tests.conftest import REDIS_TEST_URL

T = TypeVar("T")
BusFactory = Callable[..., Bus]


@pytest.fixture(params=["memory", "redis"])
def make_bus(request: pytest.FixtureRequest) -> Iterator[BusFactory]:
    """Builds buses of the parametrised kind. Redis buses share one test namespace, so two of them behave
    like two processes on one Redis; `make_bus(peer_of=b)` gives the same in-process bus for MemoryBus."""
    created: list[Bus] = []
    namespace = request.getfixturevalue("redis_namespace") if request.param == "redis" else ""

    def factory(*, maxlen: int = 100_000, peer_of: Bus | None = None) -> Bus:
        if request.param == "memory":
            bus: Bus = peer_of if peer_of is not None else MemoryBus(maxlen=maxlen)
        else:
            bus = RedisStreamsBus(REDIS_TEST_URL, namespace=namespace, maxlen=maxlen, registry_refresh_s=0.2)
        created.append(bus)
        return bus

    factory.kind = request.param  # type: ignore[attr-defined]
    factory.namespace = namespace  # type: ignore[attr-defined]
    yield factory
    for bus in created:
        bus.close()


@pytest.fixture
def bus(make_bus: BusFactory) -> Bus:
    return make_bus()


def wait_for(condition: Callable[[], T], *, timeout: float = 10.0, interval: float = 0.02) -> T:
    """Poll until `condition()` is truthy; fail clearly at the deadline (tests never assert timings)."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {timeout}s")
        time.sleep(interval)
