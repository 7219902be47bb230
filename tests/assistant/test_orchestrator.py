"""The orchestrator's contract with the bus: unreadable or foreign events are dead-lettered with a reason, a
message that keeps failing ends dead-lettered with its last error and its row says so, never silently dropped."""

from __future__ import annotations

import pytest

from app.bootstrap import Container
from app.bus.consumer import Consumer
from app.bus.memory import MemoryBus
from app.contracts import INBOUND, InboundMessage, OutboundMessage
from app.db import migrate, session_scope
from app.models import Message


@pytest.fixture
def tenant(services: Container) -> str:
    from app.tenants.service import create_tenant

    migrate()
    with session_scope(cross_tenant="tests") as session:
        tenant = create_tenant(session, "acme").tenant
        tenant.live_pack_version = 1  # as if a pack were live: retrieval runs
        return tenant.id


def _consumer(bus: MemoryBus, handler, on_dead=None) -> Consumer:  # type: ignore[no-untyped-def]
    return Consumer(bus, INBOUND, "orchestrator", "t1", handler, max_deliveries=2, claim_idle_ms=0,
                    on_dead=on_dead)


def _inbound(tenant_id: str, message_id: str = "nope") -> InboundMessage:
    return InboundMessage(tenant_id=tenant_id, message_id=message_id, conversation_id="c", contact_id="k",
                          channel="webchat", provider_message_id="p", text="hi")


def test_unreadable_foreign_and_unknown_events_are_dead_lettered_with_a_reason(tenant: str,
                                                                                 services: Container) -> None:
    from app.assistant.orchestrator import Orchestrator

    bus = MemoryBus()
    orchestrator = Orchestrator.of(services, bus=bus, retrieve=lambda *a, **k: [])
    bus.publish(INBOUND, tenant, {"type": "InboundMessage", "v": "1", "body": "{broken"})
    bus.publish(INBOUND, tenant, {"type": "Mystery", "v": "1", "body": "{}"})
    bus.publish(INBOUND, tenant, {**_inbound(tenant).to_bus(), "v": "99"})
    other = OutboundMessage(tenant_id=tenant, message_id="m", conversation_id="c", channel="webchat", text="x")
    bus.publish(INBOUND, tenant, other.to_bus())
    bus.publish(INBOUND, tenant, _inbound("someone-else").to_bus())  # body tenant differs from the stream's
    bus.publish(INBOUND, tenant, _inbound(tenant).to_bus())  # points at no stored message
    result = _consumer(bus, orchestrator.handle).process_available()
    assert result.dead == 6 and result.acked == 0
    reasons = [d.reason for d in bus.dead_letters(INBOUND, tenant)]
    assert "unreadable inbound event" in reasons[0]
    assert "unknown event type 'Mystery'" in reasons[1]
    assert "newer than this consumer understands" in reasons[2]
    assert "expected InboundMessage" in reasons[3]
    assert "does not match" in reasons[4]
    assert "not found" in reasons[5]


def test_a_message_that_keeps_failing_ends_dead_with_its_last_error(tenant: str, services: Container) -> None:
    from app.assistant.orchestrator import Orchestrator
    from app.assistant.outcomes import mark_dead
    from app.conversations.service import accept_inbound

    bus = MemoryBus()

    def broken_retrieval(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise ConnectionError("vector store unreachable")

    orchestrator = Orchestrator.of(services, bus=bus, retrieve=broken_retrieval)
    accepted = accept_inbound(bus, tenant_id=tenant, channel="webchat", contact_external_id="v1",
                              provider_message_id="m1", text="where is my order?")
    consumer = _consumer(bus, orchestrator.handle,
                         on_dead=lambda d, reason: mark_dead(d.tenant_id, accepted.message_id, reason))
    for _ in range(4):
        consumer.process_available()
    dead = bus.dead_letters(INBOUND, tenant)
    assert len(dead) == 1 and "vector store unreachable" in dead[0].reason
    with session_scope(cross_tenant="tests") as session:
        message = session.get_one(Message, accepted.message_id)
        assert message.status == "dead" and "vector store unreachable" in (message.error or "")

    # Never unheard: a person follows up (the escalation is in the queue) and the customer is told so, once.
    from sqlalchemy import select

    from app.assistant.outcomes import DEAD_LETTERED, DEFAULT_ESCALATION_NOTICE
    from app.models import Escalation, OutboxEntry

    mark_dead(tenant, accepted.message_id, "again")  # a second dead letter of the same message changes nothing
    with session_scope(cross_tenant="tests") as session:
        (escalation,) = session.scalars(select(Escalation).where(Escalation.message_id == accepted.message_id))
        assert escalation.reason == DEAD_LETTERED and escalation.status == "open"
        assert "vector store unreachable" in (escalation.detail or "")
        (notice,) = session.scalars(select(Message).where(Message.in_reply_to_id == accepted.message_id))
        assert notice.text == DEFAULT_ESCALATION_NOTICE and notice.status == "pending"
        topics = sorted(session.scalars(select(OutboxEntry.topic).where(OutboxEntry.tenant_id == tenant)))
        assert topics == ["events", "outbound"]  # the relay publishes the notice and the queue's event


def test_without_a_live_pack_version_nothing_is_retrieved_and_the_message_escalates(services: Container) -> None:
    from app.assistant.orchestrator import Orchestrator
    from app.conversations.service import accept_inbound
    from app.models import Escalation
    from app.tenants.service import create_tenant

    migrate()
    with session_scope(cross_tenant="tests") as session:
        tenant_id = create_tenant(session, "fresh").tenant.id  # nothing promoted yet
    calls: list[str] = []
    bus = MemoryBus()
    orchestrator = Orchestrator.of(services, bus=bus, retrieve=lambda *a, **k: calls.append("retrieve") or [])
    accepted = accept_inbound(bus, tenant_id=tenant_id, channel="webchat", contact_external_id="v",
                              provider_message_id="m", text="what is your return policy?")
    _consumer(bus, orchestrator.handle).process_available()
    assert calls == []
    with session_scope(cross_tenant="tests") as session:
        from sqlalchemy import select

        escalation = session.scalars(select(Escalation).where(Escalation.message_id == accepted.message_id)).one()
        assert escalation.reason == "no_knowledge"
