"""benchmarks/thread_cpu.py: the kernel's CPU accounting per thread, and thread roles read off a py-spy dump."""

from __future__ import annotations

import os
import threading
import time

from benchmarks.thread_cpu import roles, thread_cpu

DUMP = '''Process 4242: python -m app.cli serve
Python v3.11.7 (/usr/bin/python3.11)

Thread 4242 (idle): "MainThread"
    select (selectors.py:468)
    Server.run (uvicorn/server.py:86)
    _serve (app/cli.py:230)
Thread 4250 (active): "Thread-7 (_work)"
    execute (sqlalchemy/engine/default.py:951)
    ConcurrentConsumer._work (app/bus/concurrent.py:314)
Thread 4251 (idle): "AnyIO worker thread"
    WorkerThread.run (anyio/_backends/_asyncio.py:1000)
Thread 4260 (idle): "sb-outbox-relay-2"
    Relay.run (app/outbox.py:360)
'''


def test_roles_come_from_the_stack_or_the_thread_name() -> None:
    assert roles(DUMP) == {"4242": "event loop", "4250": "consumer worker", "4251": "thread pool",
                           "4260": "sb-outbox-relay-N"}


def test_a_busy_thread_shows_its_cpu_and_an_idle_one_none() -> None:
    ids: dict[str, int] = {}

    def busy() -> None:
        ids["busy"] = threading.get_native_id()
        end = time.thread_time() + 0.3
        while time.thread_time() < end:
            pass
        spun.set()
        ready.wait()

    def idle() -> None:
        ids["idle"] = threading.get_native_id()
        ready.wait()

    ready, spun = threading.Event(), threading.Event()
    threads = [threading.Thread(target=busy), threading.Thread(target=idle)]
    for thread in threads:
        thread.start()
    assert spun.wait(60)
    while len(ids) < 2:
        time.sleep(0.01)
    ticks = thread_cpu(os.getpid())
    ready.set()
    for thread in threads:
        thread.join()
    hz = os.sysconf("SC_CLK_TCK")
    assert ticks[str(ids["busy"])] >= 0.2 * hz
    assert ticks[str(ids["idle"])] <= 0.05 * hz
