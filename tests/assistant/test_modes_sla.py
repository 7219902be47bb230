"""Modes and the first-response SLA, on the embedded stack and on Postgres + Redis, driven step by step through
real consumers (orchestrator, dispatcher, the `sla` group of the events stream) and an outbox relay on a clock the
test moves (never a sleep or a timing assertion).

Modes: `auto` answers, `draft` escalates with the answer as its draft (no holding notice unless the tenant asks)
and an approval sends it, `human` acknowledges and escalates without retrieval; a channel's override wins.
SLA: the target passing sends ONE holding message and marks the escalation breached; an agent's decision before
it prevents it; the timer survives a restart (a new bus, relay and consumer after it fire it once); duplicates of
the timer's event and two relays at once never send twice."""

from __future__ import annotations

import threading
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import func, select

from app.bootstrap import container
from app.bus.base import Bus
from app.bus.consumer import Consumer
from app.contracts import EVENTS, INBOUND, OUTBOUND, OutboundMessage, SlaDue
from app.db import session_scope
from app.models import AuditEvent, Escalation, Message, OutboxEntry, utcnow
from app.outbox import Publisher, Relay
from tests.assistant.helpers import RETURNS_DOC, FakePassage
from tests.conftest import REDIS_TEST_URL, Graph
from tests.factories import sent_replies

NOTICE = "Thanks, a person from our team will answer here."
HOLDING = "Still with us? Our team will be with you shortly."


class Clock:
    def __init__(self) -> None:
        self.now = utcnow()

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@dataclass
class Retrieval:
    queries: list[tuple[str, str]] = field(default_factory=list)

    def __call__(self, tenant_id: str, text: str, **_: Any) -> list[FakePassage]:
        self.queries.append((tenant_id, text))
        return [FakePassage("c1", "returns.md", "Returns policy", RETURNS_DOC, 0.9)]

    def of(self, tenant_id: str) -> list[str]:
        return [text for tenant, text in self.queries if tenant == tenant_id]


@dataclass
class Stack:
    backend: str
    bus: Bus
    clock: Clock
    retrieval: Retrieval
    inbound: Consumer
    dispatcher: Consumer
    sla: Consumer
    relay: Relay
    publisher: Publisher
    seen: set[str] = field(default_factory=set)


    def send(self, tenant_id: str, contact: str, text: str) -> str:
        from app.conversations.service import accept_inbound

        return accept_inbound(self.bus, tenant_id=tenant_id, channel="webchat", contact_external_id=contact,
                              provider_message_id=uuid.uuid4().hex, text=text).message_id

    def run(self) -> None:
        """Everything due by the test's clock, and everything the consumers can do now."""
        self.relay.publish_all_due()
        self.inbound.process_available()
        self.sla.process_available()
        self.dispatcher.process_available()
        # The outcomes' published entries are deleted within Publisher.forget_after_s of real time, long before a
        # relay's grace is over; the test's clock jumps past the grace at once, so they are deleted here.
        self.publisher.flush()

    def replies(self, *tenants: str) -> list[OutboundMessage]:
        """The tenants' replies sent since the last call."""
        out = sent_replies(tenants, after=self.seen)
        self.seen.update(r.message_id for r in out)
        return out


def _build(backend: str, clock: Clock, retrieval: Retrieval) -> Stack:
    from app.assistant.orchestrator import Orchestrator
    from app.bootstrap import container
    from app.conversations.dispatcher import Dispatcher
    from app.review.sla import SLA_GROUP, SlaTimers

    bus = container().bus
    for topic, group in ((INBOUND, "orchestrator"), (OUTBOUND, "dispatcher"), (OUTBOUND, "observer"),
                         (EVENTS, SLA_GROUP), (EVENTS, "observer")):
        bus.ensure_group(topic, group)
    orchestrator = Orchestrator.of(container(), bus=bus, retrieve=retrieval, clock=clock)
    return Stack(
        backend, bus, clock, retrieval,
        Consumer(bus, INBOUND, "orchestrator", "live", orchestrator.handle, claim_idle_ms=600_000),
        Consumer(bus, OUTBOUND, "dispatcher", "d", Dispatcher(container().senders, container().push).handle),
        Consumer(bus, EVENTS, SLA_GROUP, "s", SlaTimers(bus, container().push).handle, claim_idle_ms=600_000),
        Relay(bus, clock=clock),
        orchestrator.publisher,
    )


@pytest.fixture(params=["embedded", "postgres+redis"])
def stack(request: pytest.FixtureRequest, graph: Graph) -> Stack:
    from app.db import migrate

    if request.param == "postgres+redis":
        graph.configure(database_url=request.getfixturevalue("pg_url"), redis_url=REDIS_TEST_URL,
                        bus_namespace=request.getfixturevalue("redis_namespace"))
    migrate()
    return _build(request.param, Clock(), Retrieval())


def _tenant(**policies: Any) -> str:
    from app.tenants.service import create_tenant

    with session_scope(cross_tenant="tests") as session:
        tenant = create_tenant(session, f"t{uuid.uuid4().hex[:8]}").tenant
        tenant.live_pack_version = 1  # as if a pack were live: retrieval runs
        tenant.policies = {**tenant.policies, "escalation_notice": NOTICE, **policies}
        return tenant.id


def _escalation(message_id: str) -> Escalation:
    with session_scope(cross_tenant="tests") as session:
        escalation = session.scalars(select(Escalation).where(Escalation.message_id == message_id)).one()
        session.expunge(escalation)
        return escalation


def _status(message_id: str) -> str:
    with session_scope(cross_tenant="tests") as session:
        return session.get_one(Message, message_id).status


def _holding_messages(escalation_id: str) -> list[str]:
    with session_scope(cross_tenant="tests") as session:
        return list(session.scalars(select(Message.text).where(Message.provider_message_id == f"sla:{escalation_id}")))


def _breaches(escalation_id: str) -> int:
    with session_scope(cross_tenant="tests") as session:
        return int(session.scalar(select(func.count()).select_from(AuditEvent).where(
            AuditEvent.subject_id == escalation_id, AuditEvent.action == "escalation.sla_breached")) or 0)


def _agent(tenant_id: str) -> Any:
    from app.auth import Principal

    return Principal(tenant_id=tenant_id, tenant_slug="t", scope="agent", key_id="k1", name="dana")


def _decide(stack: Stack, tenant_id: str, escalation_id: str, decision: str, text: str | None = None) -> None:
    from app.review import service

    with session_scope(cross_tenant="tests") as session:
        decided = service.decide(session, _agent(tenant_id), escalation_id, decision, text,
                                 channels=container().channels)
    service.publish_decision(stack.bus, decided)


# --- modes ------------------------------------------------------------------------------------------------------


def test_auto_mode_answers_from_the_passage(stack: Stack) -> None:
    tenant = _tenant(mode="auto")
    m = stack.send(tenant, "ann", "how long do I have to return boots?")
    stack.run()

    replies = stack.replies(tenant)
    assert len(replies) == 1 and "30 days" in replies[0].text
    assert _status(m) == "answered"


def test_draft_mode_holds_the_answer_for_approval_and_approval_sends_it(stack: Stack) -> None:
    tenant = _tenant(mode="draft")
    m = stack.send(tenant, "ann", "how long do I have to return boots?")
    stack.run()

    assert stack.replies(tenant) == []  # no holding notice by default: the customer hears nothing yet
    escalation = _escalation(m)
    assert (escalation.reason, escalation.status) == ("draft_review", "open")
    assert escalation.draft and "30 days" in escalation.draft
    assert escalation.draft_citations and escalation.draft_citations[0]["chunk_id"] == "c1"
    assert _status(m) == "escalated"

    _decide(stack, tenant, escalation.id, "approve")
    stack.run()
    assert [r.text for r in stack.replies(tenant)] == [escalation.draft]
    assert _escalation(m).status == "approved"


def test_draft_mode_tells_the_customer_when_the_tenant_asks(stack: Stack) -> None:
    tenant = _tenant(mode="draft", draft_notice=True)
    m = stack.send(tenant, "ann", "how long do I have to return boots?")
    stack.run()

    assert [r.text for r in stack.replies(tenant)] == [NOTICE]
    assert _escalation(m).reason == "draft_review"


def test_human_mode_acknowledges_and_escalates_without_retrieval(stack: Stack) -> None:
    tenant = _tenant(mode="human")
    m = stack.send(tenant, "ann", "how long do I have to return boots?")
    stack.run()

    assert [r.text for r in stack.replies(tenant)] == [NOTICE]
    escalation = _escalation(m)
    assert (escalation.reason, escalation.draft) == ("human_mode", None)
    assert stack.retrieval.of(tenant) == []  # no retrieval, so no LLM either


def test_a_channels_override_wins_over_the_tenants_mode(stack: Stack) -> None:
    human_on_webchat = _tenant(mode="auto", channel_modes={"webchat": "human", "whatsapp": "draft"})
    auto_on_webchat = _tenant(mode="human", channel_modes={"webchat": "auto"})
    a = stack.send(human_on_webchat, "ann", "how long do I have to return boots?")
    b = stack.send(auto_on_webchat, "bob", "how long do I have to return boots?")
    stack.run()

    assert _escalation(a).reason == "human_mode"
    assert _status(b) == "answered"
    assert "30 days" in stack.replies(auto_on_webchat)[0].text


# --- SLA ----------------------------------------------------------------------------------------------------------


def test_a_passed_target_sends_one_holding_message_and_marks_the_escalation(stack: Stack) -> None:
    tenant = _tenant(mode="human", sla_first_response_s=60, sla_holding_message=HOLDING)
    m = stack.send(tenant, "ann", "is anyone there?")
    stack.run()
    assert [r.text for r in stack.replies(tenant)] == [NOTICE]
    escalation = _escalation(m)
    assert escalation.sla_state == "pending" and escalation.sla_due_at is not None

    stack.clock.advance(59)
    stack.run()
    assert stack.replies(tenant) == [] and _escalation(m).sla_state == "pending"  # not yet

    stack.clock.advance(2)
    stack.run()
    assert [r.text for r in stack.replies(tenant)] == [HOLDING]
    breached = _escalation(m)
    assert (breached.sla_state, breached.status) == ("breached", "open")
    assert breached.sla_breached_at is not None

    # The timer's event again (a redelivery, a second relay's copy): nothing more is sent.
    stack.bus.publish(EVENTS, tenant, SlaDue(tenant_id=tenant, escalation_id=escalation.id).to_bus())
    stack.clock.advance(600)
    stack.run()
    assert stack.replies(tenant) == []
    assert _holding_messages(escalation.id) == [HOLDING] and _breaches(escalation.id) == 1


def test_an_agents_decision_before_the_target_prevents_the_holding_message(stack: Stack) -> None:
    tenant = _tenant(mode="human", sla_first_response_s=60, sla_holding_message=HOLDING)
    m = stack.send(tenant, "ann", "is anyone there?")
    stack.run()
    stack.replies(tenant)
    escalation = _escalation(m)

    stack.clock.advance(30)
    _decide(stack, tenant, escalation.id, "edit", "Yes: how can I help?")
    stack.clock.advance(60)
    stack.run()

    assert [r.text for r in stack.replies(tenant)] == ["Yes: how can I help?"]
    assert _holding_messages(escalation.id) == []
    assert _escalation(m).sla_state == "met"


def test_an_agents_message_in_a_taken_over_conversation_counts_as_the_first_response(stack: Stack) -> None:
    from app.review import service

    tenant = _tenant(mode="human", sla_first_response_s=60, sla_holding_message=HOLDING)
    m = stack.send(tenant, "ann", "is anyone there?")
    stack.run()
    escalation = _escalation(m)
    with session_scope(cross_tenant="tests") as session:  # takes the conversation, not the escalation, and writes
        service.set_mode(session, _agent(tenant), escalation.conversation_id, "human")
        service.agent_message(session, _agent(tenant), escalation.conversation_id, "Hi, Dana here.", "c1",
                              channels=container().channels)

    stack.clock.advance(61)
    stack.run()
    assert _holding_messages(escalation.id) == []
    assert _escalation(m).sla_state == "met"


def test_a_timer_survives_a_restart_and_fires_once(stack: Stack, graph: Graph) -> None:
    tenant = _tenant(mode="human", sla_first_response_s=60, sla_holding_message=HOLDING)
    m = stack.send(tenant, "ann", "is anyone there?")
    stack.run()
    escalation = _escalation(m)
    with session_scope(cross_tenant="tests") as session:
        scheduled = session.scalar(select(func.count()).select_from(OutboxEntry)
                                   .where(OutboxEntry.tenant_id == tenant))
    assert scheduled == 1  # the timer is a row

    # "Restart": every in-memory object goes (the embedded bus with its streams, the engine, the relay, the
    # consumers); the database stays.
    graph.configure()
    after = _build(stack.backend, stack.clock, stack.retrieval)
    after.clock.advance(61)
    after.run()
    after.clock.advance(60)
    after.run()

    assert _holding_messages(escalation.id) == [HOLDING]
    assert [r.text for r in after.replies(tenant) if r.text == HOLDING] == [HOLDING]
    assert _escalation(m).sla_state == "breached"


def test_two_relays_and_two_sla_consumers_at_once_send_one_holding_message(stack: Stack) -> None:
    if stack.backend == "embedded":
        pytest.skip("SQLite has one writer: concurrent relays are the Postgres case (SKIP LOCKED)")
    from app.review.sla import SLA_GROUP, SlaTimers

    tenant = _tenant(mode="human", sla_first_response_s=60, sla_holding_message=HOLDING)
    m = stack.send(tenant, "ann", "is anyone there?")
    stack.run()
    stack.replies(tenant)
    escalation = _escalation(m)
    stack.clock.advance(61)

    relays = [Relay(stack.bus, clock=stack.clock) for _ in range(2)]
    published: list[int] = []
    start = threading.Barrier(2)

    def relay_run(relay: Relay) -> None:
        start.wait()
        published.append(relay.publish_all_due())

    threads = [threading.Thread(target=relay_run, args=(r,)) for r in relays]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    due_events = [d for d in stack.bus.read(EVENTS, "observer", "o", count=100, block_ms=0)
                  if d.tenant_id == tenant and d.fields["type"] == "SlaDue"]
    assert len(due_events) == 1 and sum(published) >= 1  # SKIP LOCKED: one relay took the timer

    # Even a duplicate of the event handled by two consumers at once sends once (row lock on the escalation).
    stack.bus.publish(EVENTS, tenant, SlaDue(tenant_id=tenant, escalation_id=escalation.id).to_bus())
    consumers = [Consumer(stack.bus, EVENTS, SLA_GROUP, f"s{i}", SlaTimers(stack.bus, container().push).handle,
                          batch_size=1) for i in range(2)]
    start = threading.Barrier(2)

    def consume(consumer: Consumer) -> None:
        start.wait()
        consumer.process_available()

    threads = [threading.Thread(target=consume, args=(c,)) for c in consumers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stack.run()

    assert _holding_messages(escalation.id) == [HOLDING]
    assert [r.text for r in stack.replies(tenant)] == [HOLDING]
    assert _escalation(m).sla_state == "breached" and _breaches(escalation.id) == 1
