"""Bursts and merges, on the embedded stack and on Postgres + Redis, driven step by step through real consumers:
a tenant's burst window is a scheduled re-delivery (an outbox entry due when the window closes), so it never holds
up another tenant's reply; a burst is answered as one turn; a message reclaimed from a killed orchestrator merges
only into the turn still open when it arrived, and a later message answered meanwhile took it into its reply.
Time is a clock the test moves (the orchestrator's and the outbox relay's), never a sleep or a timing assertion."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select

from app.bootstrap import container
from app.bus.base import Bus
from app.bus.consumer import Consumer
from app.contracts import INBOUND, OUTBOUND, OutboundMessage
from app.db import session_scope
from app.models import AuditEvent, Message, OutboxEntry, utcnow
from app.outbox import Relay
from tests.assistant.helpers import RETURNS_DOC, FakePassage
from tests.conftest import REDIS_TEST_URL, Graph
from tests.factories import sent_replies

GROUP = "orchestrator"


class Clock:
    def __init__(self) -> None:
        self.now = utcnow()

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@dataclass
class Retrieval:
    """Stands in for the vector search: one relevant passage for every question, and a record of the questions
    (what each turn was answered from)."""

    queries: list[tuple[str, str]] = field(default_factory=list)

    def __call__(self, tenant_id: str, text: str, **_: Any) -> list[FakePassage]:
        self.queries.append((tenant_id, text))
        return [FakePassage("c1", "returns.md", "Returns policy", RETURNS_DOC, 0.9)]

    def of(self, tenant_id: str) -> list[str]:
        return [text for tenant, text in self.queries if tenant == tenant_id]


@dataclass
class Stack:
    bus: Bus
    clock: Clock
    retrieval: Retrieval
    inbound: Consumer
    dispatcher: Consumer
    relay: Relay
    seen: set[str] = field(default_factory=set)

    def send(self, tenant_id: str, contact: str, text: str) -> str:
        from app.conversations.service import accept_inbound

        return accept_inbound(self.bus, tenant_id=tenant_id, channel="webchat", contact_external_id=contact,
                              provider_message_id=uuid.uuid4().hex, text=text).message_id

    def run(self) -> None:
        """Everything the consumers can do now."""
        self.inbound.process_available()
        self.dispatcher.process_available()

    def replies(self, *tenants: str) -> list[OutboundMessage]:
        """The tenants' replies sent since the last call (Postgres is shared by the session's tests)."""
        out = sent_replies(tenants, after=self.seen)
        self.seen.update(r.message_id for r in out)
        return out


@pytest.fixture(params=["embedded", "postgres+redis"])
def stack(request: pytest.FixtureRequest, graph: Graph) -> Iterator[Stack]:
    from app.assistant.orchestrator import Orchestrator
    from app.conversations.dispatcher import Dispatcher
    from app.db import migrate

    if request.param == "postgres+redis":
        graph.configure(database_url=request.getfixturevalue("pg_url"), redis_url=REDIS_TEST_URL,
                        bus_namespace=request.getfixturevalue("redis_namespace"))
    migrate()
    bus = container().bus
    for topic, group in ((INBOUND, GROUP), (OUTBOUND, "dispatcher"), (OUTBOUND, "observer")):
        bus.ensure_group(topic, group)
    clock, retrieval = Clock(), Retrieval()
    orchestrator = Orchestrator.of(container(), bus=bus, retrieve=retrieval, clock=clock)
    # One message at a time, as a single-threaded orchestrator: one that waited out a burst window in its
    # handler would hold up every message behind it.
    inbound = Consumer(bus, INBOUND, GROUP, "live", orchestrator.handle, claim_idle_ms=600_000)
    dispatcher = Consumer(bus, OUTBOUND, "dispatcher", "d", Dispatcher(container().senders, container().push).handle)
    yield Stack(bus, clock, retrieval, inbound, dispatcher, Relay(bus, clock=clock))


def _tenant(**policies: Any) -> str:
    from app.tenants.service import create_tenant

    with session_scope(cross_tenant="tests") as session:
        tenant = create_tenant(session, f"t{uuid.uuid4().hex[:8]}").tenant
        tenant.live_pack_version = 1  # as if a pack were live: retrieval runs
        tenant.policies = {**tenant.policies, **policies}
        return tenant.id


def _statuses(*ids: str) -> list[str]:
    with session_scope(cross_tenant="tests") as session:
        return [session.get_one(Message, i).status for i in ids]


def _scheduled(message_id: str) -> bool:
    with session_scope(cross_tenant="tests") as session:
        return session.scalars(select(OutboxEntry.id).where(OutboxEntry.message_id == message_id)).first() is not None


def _reply(message_id: str) -> Message | None:
    with session_scope(cross_tenant="tests") as session:
        reply = session.scalars(select(Message).where(Message.in_reply_to_id == message_id)).one_or_none()
        if reply is not None:
            session.expunge(reply)
        return reply


def test_a_burst_window_on_one_tenant_does_not_delay_another_tenants_reply(stack: Stack) -> None:
    slow, quick = _tenant(burst_window_s=6), _tenant()
    a = stack.send(slow, "ann", "how long do I have to return boots?")
    b = stack.send(quick, "bob", "how long do I have to return a tent?")
    stack.clock.now = utcnow()  # both arrived; from here on only the test moves time
    stack.run()

    # B is answered and its reply delivered while A's window is still open: A waits in the outbox, not in a
    # consumer.
    assert [r.tenant_id for r in stack.replies(slow, quick)] == [quick]
    assert _statuses(a, b) == ["received", "answered"]
    b_reply = _reply(b)
    assert b_reply is not None and b_reply.status == "sent"
    assert _reply(a) is None
    with session_scope(cross_tenant="tests") as session:
        scheduled = session.scalars(select(OutboxEntry).where(OutboxEntry.message_id == a)).one()
        assert scheduled.topic == INBOUND and scheduled.tenant_id == slow
        assert scheduled.not_before == session.get_one(Message, a).created_at + timedelta(seconds=6)
    stack.relay.publish_all_due()
    assert _scheduled(a)  # not before the window closes

    stack.clock.advance(6)
    stack.relay.publish_all_due()
    assert not _scheduled(a)
    stack.run()
    assert _statuses(a) == ["answered"]
    a_reply = _reply(a)
    assert a_reply is not None and a_reply.status == "sent"
    assert [r.message_id for r in stack.replies(slow, quick)] == [a_reply.id]
    assert stack.retrieval.of(slow) == ["how long do I have to return boots?"]


def test_a_burst_within_the_window_is_answered_once_from_all_its_texts(stack: Stack) -> None:
    tenant = _tenant(burst_window_s=6)
    texts = ["hi", "i bought boots last week", "how long do i have to return them?"]
    ids = [stack.send(tenant, "ann", text) for text in texts]
    stack.clock.now = utcnow()
    stack.run()
    # The earlier two are superseded at once (no retrieval, no wait); the last waits for its window to close.
    assert _statuses(*ids) == ["merged", "merged", "received"] and stack.replies(tenant) == []
    assert stack.retrieval.of(tenant) == [] and _scheduled(ids[2])

    stack.clock.advance(6)
    stack.relay.publish_all_due()
    stack.run()
    assert _statuses(*ids) == ["merged", "merged", "answered"]
    assert stack.retrieval.of(tenant) == ["\n".join(texts)]  # one turn, answered from every text of it
    assert [r.message_id for r in stack.replies(tenant)] == [_reply(ids[2]).id]  # type: ignore[union-attr]


def test_a_message_held_by_a_killed_orchestrator_is_answered_in_the_next_reply_never_after_it(stack: Stack) -> None:
    tenant = _tenant()
    first = stack.send(tenant, "ann", "do you ship to canada?")
    held = stack.bus.read(INBOUND, GROUP, "killed", count=10, block_ms=0)  # its orchestrator dies holding it
    assert len(held) == 1
    second = stack.send(tenant, "ann", "how long do I have to return boots?")
    stack.run()  # another orchestrator answers the second message, and takes the first, still waiting, into it
    assert _statuses(first, second) == ["merged", "answered"]
    third = stack.send(tenant, "ann", "and what about sale items?")  # still waiting when the first is reclaimed

    reclaimed = stack.bus.claim_stale(INBOUND, GROUP, "live", min_idle_ms=0, count=10)
    assert [d.id for d in reclaimed] == [held[0].id]
    stack.inbound.handle_batch(reclaimed)  # finds the first merged: nothing more is sent for it
    stack.run()

    # The first is in the second's reply, not answered after it (the reclaim came ~30 s later in production),
    # and never merged into the third, a turn that began after its own ended.
    assert _statuses(first, second, third) == ["merged", "answered", "answered"]
    assert stack.retrieval.of(tenant) == ["do you ship to canada?\nhow long do I have to return boots?",
                                          "and what about sale items?"]  # the first taken over as the second was read
    replies = [_reply(m) for m in (second, third)]
    assert _reply(first) is None and all(r is not None and r.status == "sent" for r in replies)
    assert sorted(r.message_id for r in stack.replies(tenant)) == sorted(r.id for r in replies if r)
    with session_scope(cross_tenant="tests") as session:
        merged = session.scalars(select(AuditEvent).where(AuditEvent.tenant_id == tenant,
                                                          AuditEvent.action == "message.merged")).all()
    assert [(e.subject_id, e.data) for e in merged] == [(first, {"into": second, "taken_over": True})]


def test_a_reclaimed_message_still_merges_into_the_turn_that_was_open_when_it_arrived(stack: Stack) -> None:
    tenant = _tenant()
    first = stack.send(tenant, "ann", "i bought boots last week")
    held = stack.bus.read(INBOUND, GROUP, "killed", count=10, block_ms=0)  # its orchestrator dies holding it
    second = stack.send(tenant, "ann", "how long do I have to return them?")  # same turn: nothing answered since

    stack.inbound.handle_batch(stack.bus.claim_stale(INBOUND, GROUP, "live", min_idle_ms=0, count=10))
    assert [d.id for d in held] and _statuses(first, second) == ["merged", "received"]
    stack.run()
    assert _statuses(first, second) == ["merged", "answered"]
    assert stack.retrieval.of(tenant) == ["i bought boots last week\nhow long do I have to return them?"]
    assert len(stack.replies(tenant)) == 1



def test_each_turn_of_a_conversation_is_answered_from_its_own_texts_only(stack: Stack) -> None:
    """Three turns of two messages each, one after another: each turn's reply is made from its two texts, never
    from an earlier turn's merged message (the turn's reads start where the previous turn ended)."""
    tenant = _tenant()
    turns = [("hi there", "do you ship to canada?"), ("thanks", "how long do returns take?"),
             ("one more", "what about sale items?")]
    for first, second in turns:
        ids = [stack.send(tenant, "ann", first), stack.send(tenant, "ann", second)]
        stack.run()
        assert _statuses(*ids) == ["merged", "answered"]
    assert stack.retrieval.of(tenant) == [f"{first}\n{second}" for first, second in turns]
    assert len(stack.replies(tenant)) == 3


def test_a_message_in_its_burst_window_leaves_the_earlier_deferred_one_to_merge_into_it(stack: Stack) -> None:
    """Within the window both messages are deferred; the earlier merges into the later when its own window closes
    (as in one process), never a take-over: that one is for two handlers racing on a conversation."""
    from app import metrics

    tenant = _tenant(burst_window_s=6)
    taken = metrics.REGISTRY.get_sample_value("switchboard_messages_taken_over_total") or 0.0
    stack.clock.now = utcnow()
    first = stack.send(tenant, "ann", "i bought boots last week")
    stack.run()
    stack.clock.advance(2)
    second = stack.send(tenant, "ann", "how long do I have to return them?")
    stack.run()
    assert _statuses(first, second) == ["received", "received"] and _scheduled(first) and _scheduled(second)

    stack.clock.advance(5)  # both windows close (they count from when each was stored)
    stack.relay.publish_all_due()
    stack.run()
    assert _statuses(first, second) == ["merged", "answered"]
    assert stack.retrieval.of(tenant) == ["i bought boots last week\nhow long do I have to return them?"]
    assert (metrics.REGISTRY.get_sample_value("switchboard_messages_taken_over_total") or 0.0) == taken
