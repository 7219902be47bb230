"""The USSD route waits for the orchestrator's decision on the push hub, not by reading the database on a timer:
it reads the outcome once after subscribing, once per wake-up and once at the end of its wait, however long
that wait is."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import event

from tests.bus.conftest import wait_for
from tests.gateways.conftest import Gateway

HUMAN = "I want to talk to a real person please"


class OutcomeReads:
    """Counts the statements that read an inbound message's status (`app/intake.py` `outcome_of`), except the
    orchestrator's workers' (threads named after their consumer), which may read the same column."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, _conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        flat = " ".join(statement.split())
        if flat.startswith("SELECT messages.status FROM messages WHERE") and \
                not threading.current_thread().name.startswith(("orchestrator-", "dispatcher-")):
            self.count += 1


@pytest.fixture
def outcome_reads(gw: Gateway) -> Iterator[OutcomeReads]:
    from app.db import get_engine

    reads = OutcomeReads()
    event.listen(get_engine(), "before_cursor_execute", reads)
    yield reads
    event.remove(get_engine(), "before_cursor_execute", reads)


def ussd(gw: Gateway, wait_s: float) -> tuple[str, dict[str, str]]:
    tenant = gw.tenant()
    code = f"*{uuid.uuid4().hex[:6]}#"
    gw.account(tenant, "ussd", code, {"webhook_token": "tok"}, config={"answer_wait_s": wait_s})
    return tenant, {"sessionId": f"S{uuid.uuid4().hex[:6]}", "serviceCode": code, "phoneNumber": "+254711000009",
                    "text": HUMAN}


def test_without_a_decision_the_outcome_is_read_after_subscribing_and_at_the_deadline_only(
        gw: Gateway, outcome_reads: OutcomeReads) -> None:
    """No orchestrator runs: a 50 ms poll would read ten times in this half second; the hub's waiter reads twice
    (and would for a wait of any length)."""
    _, form = ussd(gw, wait_s=0.5)
    screen = gw.client.post("/webhooks/ussd?token=tok", data=form)
    assert screen.status_code == 200 and screen.text.startswith("END "), screen.text
    assert outcome_reads.count == 2


def test_the_decision_wakes_the_waiting_route_through_the_push_hub(
        gw: Gateway, outcome_reads: OutcomeReads) -> None:
    """The orchestrator runs once the route has subscribed and read the outcome once; its commit publishes on the
    route's key (a second waiter on that key is woken too) and the route reads the outcome once more and shows
    it."""
    import asyncio

    from sqlalchemy import select

    from app.bootstrap import container
    from app.conversations.push import outcome_key
    from app.db import session_scope
    from app.models import Message
    from app.workers_runtime import build_consumers

    services = container()
    push = services.push
    # Warm up (models load on the first message), so the orchestrator decides well within the route's wait.
    _, warm_up = ussd(gw, wait_s=0.1)
    gw.client.post("/webhooks/ussd?token=tok", data=warm_up)
    build_consumers(services, services.bus, threading.Event())[0].process_available()
    tenant, form = ussd(gw, wait_s=10)
    outcome_reads.count = 0
    woken: list[bool] = []

    def orchestrator() -> None:
        wait_for(lambda: push.waiting() == 1 and outcome_reads.count == 1, timeout=60)  # type: ignore[attr-defined]
        with session_scope(tenant=tenant) as session:
            message_id = session.scalar(select(Message.id).where(Message.tenant_id == tenant,
                                                                 Message.channel == "ussd"))
        assert message_id is not None

        async def decide_while_subscribed() -> bool:
            async with push.subscribe(tenant, outcome_key(message_id)) as waiter:
                inbound, _ = build_consumers(services, services.bus, threading.Event())
                await asyncio.to_thread(inbound.process_available)
                return await waiter.wait(0)  # level-triggered: set by the commit's publish, or not at all

        woken.append(asyncio.run(decide_while_subscribed()))

    thread = threading.Thread(target=orchestrator, daemon=True)
    thread.start()
    screen = gw.client.post("/webhooks/ussd?token=tok", data=form)
    thread.join(60)
    assert woken == [True]
    assert screen.status_code == 200 and screen.text == "END Thanks. Our team has your question.", screen.text
    assert outcome_reads.count == 2  # the first read, then one after the wake-up
    assert push.waiting() == 0  # type: ignore[attr-defined]
