"""Answering threads take turns at the CPU, first come, first served (app/pacing.py)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from app import pacing
from app.pacing import Pacer
from tests.conftest import settings_for


def until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.001)


def start(target: Callable[[], None]) -> threading.Thread:
    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread


def test_a_freed_slot_goes_to_the_longest_waiting_thread_and_a_returning_one_queues_behind_those_waiting() -> None:
    pacer = Pacer(1)
    order: list[str] = []
    llm_answered = threading.Event()
    first_in_llm = threading.Event()

    def first() -> None:  # holds the slot, waits for its LLM, then finishes its work
        with pacer.turn():
            order.append("first: before its LLM call")
            with pacing.waiting():
                first_in_llm.set()
                llm_answered.wait(10)
            order.append("first: after its LLM call")

    def later(name: str, gate: threading.Event | None = None) -> Callable[[], None]:
        def run() -> None:
            with pacer.turn():
                order.append(name)
                if gate is not None:
                    gate.wait(10)
        return run

    second_holds = threading.Event()
    with pacer.turn():  # the slot is taken while the others line up, so their order decides
        threads = [start(first)]
        until(lambda: pacer.waiting_for_slot == 1)
        threads.append(start(later("second", second_holds)))
        until(lambda: pacer.waiting_for_slot == 2)
    first_in_llm.wait(10)
    until(lambda: order[-1:] == ["second"])  # first stepped out: the next in the queue got the slot
    threads.append(start(later("third")))
    until(lambda: pacer.waiting_for_slot == 1)
    llm_answered.set()  # first wants a slot again while third is already waiting for one
    until(lambda: pacer.waiting_for_slot == 2)
    second_holds.set()
    for thread in threads:
        thread.join(10)
    assert order == ["first: before its LLM call", "second", "third", "first: after its LLM call"]


def test_a_message_waiting_for_its_llm_holds_no_slot() -> None:
    pacer = Pacer(1)
    stalled = threading.Event()
    in_llm = threading.Event()

    def stalled_llm() -> None:
        with pacer.turn(), pacing.waiting():
            in_llm.set()
            stalled.wait(10)

    blocked = start(stalled_llm)
    in_llm.wait(10)
    other_done = threading.Event()
    start(lambda: _turn_then(pacer, other_done.set))
    assert other_done.wait(10), "a message waited behind another one's stalled LLM call"
    stalled.set()
    blocked.join(10)
    assert pacer.waiting_for_slot == 0


def _turn_then(pacer: Pacer, action: Callable[[], object]) -> None:
    with pacer.turn():
        action()


@pytest.mark.parametrize("slots", [0, 2])
def test_two_handlers_run_at_once_with_two_slots_or_none(slots: int) -> None:
    pacer = Pacer(slots)
    both_in = threading.Barrier(2, timeout=10)
    threads = [start(lambda: _turn_then(pacer, both_in.wait)) for _ in range(2)]
    for thread in threads:
        thread.join(10)
    assert not both_in.broken


def test_with_one_slot_handlers_run_one_at_a_time() -> None:
    pacer = Pacer(1)
    running, most = 0, 0
    lock = threading.Lock()

    def work() -> None:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        time.sleep(0.002)
        with lock:
            running -= 1

    threads = [start(lambda: _turn_then(pacer, work)) for _ in range(8)]
    for thread in threads:
        thread.join(10)
    assert most == 1


def test_waiting_outside_a_turn_and_a_nested_turn_do_nothing() -> None:
    pacer = Pacer(1)
    with pacing.waiting():
        pass
    with pacer.turn(), pacer.turn(), pacing.waiting(), pacing.waiting():
        assert pacer.waiting_for_slot == 0
    with pacer.turn():  # the slot was given back
        pass


def test_an_error_in_a_turn_frees_its_slot() -> None:
    pacer = Pacer(1)
    with pytest.raises(RuntimeError), pacer.turn():
        raise RuntimeError("the handler failed")
    done = threading.Event()
    start(lambda: _turn_then(pacer, done.set))
    assert done.wait(10)


def test_negative_slots_are_refused() -> None:
    with pytest.raises(ValueError, match="slots"):
        Pacer(-1)


def test_pacing_is_on_by_default_only_where_a_handler_waits_on_no_network(tmp_path: Path) -> None:
    postgres = "postgresql+psycopg://postgres@127.0.0.1:5432/switchboard"
    assert settings_for(tmp_path).pacing_slots == 2  # SQLite and the in-process bus
    assert settings_for(tmp_path, database_url=postgres).pacing_slots == 0
    assert settings_for(tmp_path, redis_url="redis://127.0.0.1:6379/0").pacing_slots == 0
    assert settings_for(tmp_path, database_url=postgres, orchestrator_cpu_slots=2).pacing_slots == 2
    assert settings_for(tmp_path, orchestrator_cpu_slots=0).pacing_slots == 0
