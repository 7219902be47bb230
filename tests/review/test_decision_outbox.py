"""On Postgres + Redis: a review decision commits with its events in the outbox, so its reply goes out exactly
once even when Redis refuses the publish right after the commit, or the process dies between the commit and the
publish; and a message a gateway stored but never published (it died) is answered exactly once too. The relay
picks up what was left once the writer's grace is over."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from sqlalchemy import select

from app.auth import Principal
from app.bootstrap import container
from app.bus.base import Bus
from app.bus.consumer import Consumer
from app.bus.redis_streams import RedisStreamsBus
from app.contracts import EVENTS, INBOUND, OUTBOUND, EscalationDecided, Event, OutboundMessage
from app.db import session_scope
from app.models import Escalation, Message, OutboxEntry, utcnow
from app.outbox import GRACE, Relay
from app.review import service
from tests.conftest import REDIS_TEST_URL, Graph


@dataclass
class Setup:
    bus: Bus
    tenant_id: str
    escalation_id: str
    agent: Principal
    dispatcher: Consumer

    def published(self, topic: str) -> list[Event]:
        """Entries on the tenant's stream so far, read by an observer group of its own."""
        out: list[Event] = []
        while batch := self.bus.read(topic, "observer", "o", count=100, block_ms=0):
            out.extend(Event.from_bus(d.fields) for d in batch if d.tenant_id == self.tenant_id)
        return out


@pytest.fixture
def setup(graph: Graph, pg_url: str, redis_namespace: str) -> Iterator[Setup]:
    from app.bootstrap import container
    from app.conversations.dispatcher import Dispatcher
    from app.conversations.service import accept_inbound
    from app.db import migrate
    from app.tenants.service import create_tenant

    graph.configure(database_url=pg_url, redis_url=REDIS_TEST_URL, bus_namespace=redis_namespace)
    migrate()
    bus = container().bus
    assert isinstance(bus, RedisStreamsBus)
    for topic in (OUTBOUND, EVENTS):
        bus.ensure_group(topic, "observer")
    with session_scope(cross_tenant="tests") as session:
        tenant = create_tenant(session, f"t-{redis_namespace}").tenant
        tenant_id, slug = tenant.id, tenant.slug
    accepted = accept_inbound(bus, tenant_id=tenant_id, channel="webchat", contact_external_id="v1",
                              provider_message_id="m1", text="can i rent a canoe?")
    with session_scope(cross_tenant="tests") as session:
        session.get_one(Message, accepted.message_id).status = "escalated"
        escalation = Escalation(tenant_id=tenant_id, conversation_id=accepted.conversation_id,
                                message_id=accepted.message_id, reason="no_knowledge")
        session.add(escalation)
        session.flush()
        escalation_id = escalation.id
    agent = Principal(tenant_id=tenant_id, tenant_slug=slug, scope="agent", key_id="k1", name="dana")
    dispatcher = Dispatcher(container().senders, container().push)
    yield Setup(bus, tenant_id, escalation_id, agent, Consumer(bus, OUTBOUND, "dispatcher", "d", dispatcher.handle))


def _decide(setup: Setup) -> service.Decided:
    """The route's transaction (app/review/routes.py `decide`)."""
    with session_scope(cross_tenant="tests") as session:
        return service.decide(session, setup.agent, setup.escalation_id, "edit", "We don't rent canoes, sorry!",
                              channels=container().channels)


def _reply_status(reply_id: str) -> str:
    with session_scope(cross_tenant="tests") as session:
        return session.get_one(Message, reply_id).status


def _outbox_of(tenant_id: str) -> int:
    with session_scope(cross_tenant="tests") as session:
        return len(session.scalars(select(OutboxEntry.id).where(OutboxEntry.tenant_id == tenant_id)).all())


def _goes_out_exactly_once(setup: Setup, reply_id: str) -> None:
    """What a relay past the writer's grace does with what was left: the reply published once, and sent."""
    relay = Relay(setup.bus, clock=lambda: utcnow() + GRACE)
    relay.publish_all_due()
    setup.dispatcher.process_available()
    assert _reply_status(reply_id) == "sent"
    replies = [e for e in setup.published(OUTBOUND) if isinstance(e, OutboundMessage)]
    assert [r.message_id for r in replies] == [reply_id]
    assert replies[0].text == "We don't rent canoes, sorry!" and replies[0].human_agent
    decided = [e for e in setup.published(EVENTS) if isinstance(e, EscalationDecided)]
    assert [(e.escalation_id, e.decision) for e in decided] == [(setup.escalation_id, "edit")]
    relay.publish_all_due()
    assert _outbox_of(setup.tenant_id) == 0  # nothing left to publish again
    setup.dispatcher.process_available()
    assert setup.published(OUTBOUND) == []


def test_a_publish_failure_after_a_committed_decision_still_sends_the_reply_exactly_once(setup: Setup) -> None:
    setup.dispatcher.process_available()  # the escalation's earlier traffic, if any, out of the way
    setup.published(OUTBOUND)
    decided = _decide(setup)
    assert decided.outbound is not None
    unreachable = RedisStreamsBus("redis://127.0.0.1:1/0", namespace="unused", socket_timeout_s=1)
    service.publish_decision(unreachable, decided)  # Redis refuses: logged, the decision stands
    unreachable.close()
    with session_scope(cross_tenant="tests") as session:
        assert session.get_one(Escalation, setup.escalation_id).status == "approved"
    assert _reply_status(decided.outbound.message_id) == "pending"
    assert setup.published(OUTBOUND) == [] and _outbox_of(setup.tenant_id) == 2
    _goes_out_exactly_once(setup, decided.outbound.message_id)


def test_a_process_killed_between_the_commit_and_the_publish_still_sends_the_reply_exactly_once(
    setup: Setup,
) -> None:
    decided = _decide(setup)  # committed; the process dies before `publish_decision`
    assert decided.outbound is not None
    Relay(setup.bus).publish_all_due()  # a live writer's grace: relays leave it alone meanwhile
    assert _outbox_of(setup.tenant_id) == 2
    setup.dispatcher.process_available()
    assert _reply_status(decided.outbound.message_id) == "pending"
    _goes_out_exactly_once(setup, decided.outbound.message_id)


def test_a_message_stored_by_a_gateway_killed_before_publishing_is_answered_exactly_once(setup: Setup) -> None:
    from app.assistant.orchestrator import Orchestrator
    from app.conversations.service import InboundRequest, store_inbound

    [stored] = store_inbound([InboundRequest(  # committed with its event in the outbox; the gateway dies
        tenant_id=setup.tenant_id, channel="webchat", contact_external_id="v2", provider_message_id="m2",
        text="how long do i have to return boots?")])
    message_id = stored.accepted.message_id
    orchestrator = Orchestrator.of(container(), bus=setup.bus, retrieve=lambda *a, **k: [])
    inbound = Consumer(setup.bus, INBOUND, "orchestrator", "o", orchestrator.handle)
    inbound.process_available()  # the first message (already escalated) is a duplicate; this one is not there
    with session_scope(cross_tenant="tests") as session:
        assert session.get_one(Message, message_id).status == "received"
    relay = Relay(setup.bus, clock=lambda: utcnow() + GRACE)
    relay.publish_all_due()  # (the database is shared: it may publish other tests' leftovers too)
    assert _outbox_of(setup.tenant_id) == 0
    inbound.process_available()
    relay.publish_all_due()
    inbound.process_available()
    with session_scope(cross_tenant="tests") as session:
        assert session.get_one(Message, message_id).status == "escalated"  # no live pack: a person answers it
        replies = session.scalars(select(Message).where(Message.in_reply_to_id == message_id)).all()
        assert len(replies) == 1
