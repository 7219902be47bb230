"""Two handlers of one conversation at once (scale-out replicas, several answering processes): a message merged into
a later one is in that one's reply, whichever handler gets where first. Every message ends answered, or merged into
an answered message whose turn was answered from its text. Driven with real handlers on the embedded stack and on
Postgres; the interleaving is forced at the retrieval (the answer path) and at the engine's cursor hooks."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import event, select, update
from sqlalchemy import text as sql

from app import metrics, outbox
from app.assistant import outcomes, turns
from app.assistant.orchestrator import TURN_READS, Orchestrator
from app.assistant.outcomes import Context, Outcome
from app.assistant.prompts import Draft
from app.bootstrap import container
from app.bus.concurrent import ConcurrentConsumer
from app.contracts import INBOUND, InboundMessage
from app.conversations.service import accept_inbound
from app.db import get_engine, migrate, session_scope
from app.models import Message, OutboxEntry, utcnow
from app.tenants.service import create_tenant
from app.workers_runtime import ORCHESTRATOR_GROUP, conversation_key
from tests.assistant.helpers import RETURNS_DOC, FakePassage
from tests.bus.conftest import wait_for
from tests.conftest import REDIS_TEST_URL, Graph

WAIT_S = 30  # only so a broken interleaving fails the test instead of hanging it
EARLIER, LATER = "i bought boots last week", "how long do I have to return them?"


@dataclass
class Retrieval:
    """Stands in for the vector search, and records what each handler's turn was answered from. A handler (by
    thread name) in `hold` stops at its first retrieval until the test sets its event."""

    hold: dict[str, tuple[threading.Event, threading.Event]] = field(default_factory=dict)  # reached, resume
    texts: dict[str, list[str]] = field(default_factory=dict)

    def __call__(self, tenant_id: str, text: str, **_: Any) -> list[FakePassage]:
        name = threading.current_thread().name
        self.texts.setdefault(name, []).append(text)
        if name in self.hold:
            reached, resume = self.hold.pop(name)
            reached.set()
            assert resume.wait(WAIT_S), "the test never resumed the handler"
        return [FakePassage("c1", "returns.md", "Returns policy", RETURNS_DOC, 0.9)]


@dataclass
class Conversation:
    orchestrator: Orchestrator
    retrieval: Retrieval
    events: list[InboundMessage]  # the earlier message's, then the later one's
    results: dict[str, Outcome] = field(default_factory=dict)

    def handle(self, name: str, index: int) -> threading.Thread:
        """Handle one message in a thread of its own, named `name`."""
        thread = threading.Thread(target=lambda: self.results.__setitem__(
            name, self.orchestrator.process(self.events[index])), name=name, daemon=True)
        thread.start()
        return thread

    def messages(self) -> list[Message]:
        with session_scope(cross_tenant="tests") as session:
            rows = [session.get_one(Message, e.message_id) for e in self.events]
            replied = set(session.scalars(select(Message.in_reply_to_id).where(
                Message.in_reply_to_id.in_([e.message_id for e in self.events]))))
            for row in rows:
                session.expunge(row)
        assert {row.id for row in rows if row.status == "answered"} == replied
        return rows


@dataclass
class Started:
    """A conversation whose messages are stored one at a time (`add`), as a customer writes them."""

    tenant_id: str
    events: list[InboundMessage] = field(default_factory=list)

    def add(self, text: str) -> InboundMessage:
        accepted = accept_inbound(container().bus, tenant_id=self.tenant_id, channel="webchat",
                                  contact_external_id="ann", provider_message_id=uuid.uuid4().hex, text=text)
        self.events.append(InboundMessage(
            tenant_id=self.tenant_id, message_id=accepted.message_id, conversation_id=accepted.conversation_id,
            contact_id=accepted.contact_id, channel="webchat", provider_message_id=uuid.uuid4().hex, text=text))
        return self.events[-1]


@pytest.fixture(params=["embedded", "postgres"])
def started(request: pytest.FixtureRequest, graph: Graph) -> Started:
    if request.param == "postgres":
        graph.configure(database_url=request.getfixturevalue("pg_url"))
    migrate()
    with session_scope(cross_tenant="tests") as session:
        tenant = create_tenant(session, f"t{uuid.uuid4().hex[:8]}").tenant
        tenant.live_pack_version = 1  # as if a pack were live: retrieval runs
        return Started(tenant.id)


@pytest.fixture
def conversation(started: Started) -> Conversation:
    """Both messages stored before either is handled."""
    for text in (EARLIER, LATER):
        started.add(text)
    retrieval = Retrieval()
    return Conversation(Orchestrator.of(container(), retrieve=retrieval), retrieval, started.events)


@pytest.fixture
def hooks() -> Iterator[Callable[[str, Callable[..., None]], None]]:
    """Listen at the engine's cursor hooks for this test only."""
    engine, added = get_engine(), []

    def listen(name: str, hook: Callable[..., None]) -> None:
        event.listen(engine, name, hook)
        added.append((name, hook))

    yield listen
    for name, hook in added:
        event.remove(engine, name, hook)


def _nobody_unanswered(conversation: Conversation) -> None:
    """Every message is answered, or merged into an answered message whose last answer was made from its text."""
    rows = {row.id: row for row in conversation.messages()}
    names = {e.message_id: name for e, name in zip(conversation.events, ("a", "b"), strict=True)}
    for row in rows.values():
        if row.status == "merged":
            into = rows[row.meta["superseded_by"]]
            assert into.status == "answered"
            assert row.text in conversation.retrieval.texts[names[into.id]][-1]
        else:
            assert row.status == "answered"


def test_a_message_merged_into_one_being_answered_is_answered_in_its_reply(started: Started) -> None:
    """A becomes visible only after B was read (another gateway's clock or commit lagged: A is the earlier
    message, stored later), so B did not take it over; A's handler finds B waiting and merges A into it."""
    retrieval = Retrieval()
    conversation = Conversation(Orchestrator.of(container(), retrieve=retrieval), retrieval, started.events)
    later = started.add(LATER)
    # B is read (nothing merged into it, nothing earlier waiting) and stops in its answer path.
    b_reached, b_resume = threading.Event(), threading.Event()
    retrieval.hold["b"] = (b_reached, b_resume)
    b = conversation.handle("b", 0)
    try:
        assert b_reached.wait(WAIT_S)
        earlier = started.add(EARLIER)
        with session_scope(cross_tenant="tests") as session:
            session.get_one(Message, earlier.message_id).created_at = (
                session.get_one(Message, later.message_id).created_at - timedelta(seconds=1))
        started.events.reverse()  # in the order they were written: A, then B
        # A, handled meanwhile by another consumer, finds B waiting and is merged into it.
        a = conversation.handle("a", 0)
        a.join(WAIT_S)
        assert conversation.results["a"].status == "merged"
    finally:
        b_resume.set()
    b.join(WAIT_S)
    assert not b.is_alive()

    # B's claim saw that its turn grew: the outcome from B's text alone was not written, the turn was read again
    # and answered from both texts. Without the check A was merged into a reply that never mentioned it.
    assert conversation.results["b"].status == "answered"
    assert retrieval.texts["b"] == [LATER, f"{EARLIER}\n{LATER}"]
    assert [row.status for row in conversation.messages()] == ["merged", "answered"]
    _nobody_unanswered(conversation)


def test_a_merge_read_while_the_later_message_is_claimed_leaves_nobody_unanswered(
        conversation: Conversation, hooks: Callable[[str, Callable[..., None]], None]) -> None:
    a_read, a_resume, b_at_claim, b_taking_over = (threading.Event() for _ in range(4))

    def after(conn: Any, cursor: Any, statement: str, params: Any, context: Any, many: bool) -> None:
        compiled = getattr(context, "compiled", None)
        if (threading.current_thread().name == "a" and compiled is not None
                and compiled.statement is turns.TURN_NOW and not a_read.is_set()):
            a_read.set()  # A's claim read B `received`: it stops before its merge is written
            assert a_resume.wait(WAIT_S)

    def before(conn: Any, cursor: Any, statement: str, params: Any, context: Any, many: bool) -> None:
        compiled = getattr(context, "compiled", None)
        if (threading.current_thread().name == "b" and compiled is not None
                and compiled.statement in (outcomes._LOCK, outcomes._CLAIM, turns.LOCK)):
            b_at_claim.set()  # SQLite: B's take-over of A, or its claim, waits for A's write lock
        if threading.current_thread().name == "b" and "FOR UPDATE OF earlier" in statement:
            b_taking_over.set()  # Postgres: B's take-over waits for A's row
            b_at_claim.set()

    hooks("after_cursor_execute", after)
    hooks("before_cursor_execute", before)
    a = conversation.handle("a", 0)
    try:
        assert a_read.wait(WAIT_S)
        b = conversation.handle("b", 1)
        assert b_at_claim.wait(WAIT_S)
        if get_engine().dialect.name != "sqlite":
            # Postgres: A holds only its own row. B, read while A is still waiting, is not answered (its reply
            # would go out before A's): it takes A over, and waits for A's row, which A's claim holds.
            assert b_taking_over.wait(WAIT_S)
            assert "b" not in conversation.results
        # SQLite: A holds the write lock, B's claim waits for A's merge and must then see it.
    finally:
        a_resume.set()
    a.join(WAIT_S)
    b.join(WAIT_S)
    assert not a.is_alive() and not b.is_alive()
    # A's claim merged A into B (B still `received` once A got its row): B answers both texts.
    assert [row.status for row in conversation.messages()] == ["merged", "answered"]
    _nobody_unanswered(conversation)


@dataclass
class MergingRetrieval(Retrieval):
    """Each time B's turn is answered, another handler merges one more earlier message into B: B's turn never
    stays as it was read."""

    into: str = ""
    merged: int = 0

    def __call__(self, tenant_id: str, text: str, **kw: Any) -> list[FakePassage]:
        found = super().__call__(tenant_id, text, **kw)
        with session_scope(cross_tenant="tests") as session:
            b = session.get_one(Message, self.into)
            session.add(Message(
                tenant_id=b.tenant_id, conversation_id=b.conversation_id, channel=b.channel, direction="in",
                provider_message_id=uuid.uuid4().hex, text=f"and one more thing ({self.merged})", status="merged",
                meta={"superseded_by": b.id}, created_at=b.created_at - timedelta(seconds=10 - self.merged)))
        self.merged += 1
        return found


def test_a_turn_that_keeps_changing_is_left_to_the_bus_never_answered_without_a_text(
        conversation: Conversation) -> None:
    """After `TURN_READS` reads that each found the turn grown, the handling fails (the bus retries it, and
    dead-letters and escalates it if it never settles) rather than answer without the last text merged into it."""
    later = conversation.events[1]
    with session_scope(cross_tenant="tests") as session:  # A is merged into B already: B's turn is both
        session.get_one(Message, conversation.events[0].message_id).status = "merged"
        session.get_one(Message, conversation.events[0].message_id).meta = {"superseded_by": later.message_id}
    retrieval = MergingRetrieval(into=later.message_id)
    orchestrator = Orchestrator.of(container(), retrieve=retrieval)
    with pytest.raises(outcomes.TurnChanged):
        orchestrator.process(later)
    assert retrieval.merged == TURN_READS
    with session_scope(cross_tenant="tests") as session:
        assert session.get_one(Message, later.message_id).status == "received"
        assert session.scalars(select(Message).where(Message.in_reply_to_id == later.message_id)).all() == []


def test_a_later_message_is_never_answered_before_an_earlier_one_still_being_answered(started: Started) -> None:
    """Two handlers of one conversation (scale-out replicas): A is read alone and is still in its answer path when
    B arrives and is handled by the other. B must not be answered first (its reply would go out before A's): B
    takes A into its turn and answers both texts; A's answer, finished later, is dropped at its claim."""
    retrieval = Retrieval()
    orchestrator = Orchestrator.of(container(), retrieve=retrieval)
    conversation = Conversation(orchestrator, retrieval, started.events)
    a_reached, a_resume = threading.Event(), threading.Event()
    retrieval.hold["a"] = (a_reached, a_resume)
    taken_before = metrics.REGISTRY.get_sample_value("switchboard_messages_taken_over_total") or 0.0
    started.add(EARLIER)
    a = conversation.handle("a", 0)
    try:
        assert a_reached.wait(WAIT_S)
        started.add(LATER)
        b = conversation.handle("b", 1)
        b.join(WAIT_S)
        assert not b.is_alive()
    finally:
        a_resume.set()
    a.join(WAIT_S)
    assert not a.is_alive()

    assert conversation.results["b"].status == "answered"
    assert retrieval.texts["b"] == [f"{EARLIER}\n{LATER}"]  # A taken over when B was read: B's one answer
    assert conversation.results["a"].status == "duplicate"  # A's own answer was never written
    assert [row.status for row in conversation.messages()] == ["merged", "answered"]
    with session_scope(cross_tenant="tests") as session:
        replies = session.scalars(select(Message.in_reply_to_id).where(
            Message.conversation_id == started.events[0].conversation_id, Message.direction == "out")).all()
    assert replies == [started.events[1].message_id]
    assert metrics.REGISTRY.get_sample_value("switchboard_messages_taken_over_total") == taken_before + 1
    _nobody_unanswered(conversation)


def test_a_consent_keyword_still_waiting_is_never_taken_over_the_later_message_waits_for_it(
        started: Started) -> None:
    """STOP is never merged (its consent change would be lost): a later message read while it waits is scheduled
    again shortly (an outbox entry: no delivery of its own used up, its conversation left free for the keyword),
    and once the keyword is handled, it is handled under the new consent (nothing sent)."""
    stop, later = started.add("STOP"), started.add(LATER)
    orchestrator = Orchestrator.of(container(), retrieve=Retrieval())
    assert orchestrator.process(later).status == "deferred"
    with session_scope(cross_tenant="tests") as session:
        assert session.get_one(Message, stop.message_id).status == "received"
        assert session.get_one(Message, later.message_id).status == "received"
        [entry] = session.scalars(select(OutboxEntry).where(OutboxEntry.message_id == later.message_id)).all()
        assert entry.topic == INBOUND and entry.not_before is not None
    assert orchestrator.process(stop).reason == "consent_withdrawn"
    assert orchestrator.process(later).status == "skipped"


def test_a_claim_that_finds_an_earlier_message_waiting_writes_nothing(started: Started) -> None:
    """The claim's own check (an earlier message that became visible only after this one was read: gateways'
    clocks, commit order): the outcome is not written and the orchestrator takes the earlier one over."""
    earlier, later = started.add(EARLIER), started.add(LATER)
    ctx = Context(message_id=later.message_id, tenant_id=later.tenant_id, conversation_id=later.conversation_id,
                  mode="auto", persona={}, policies={}, llm=None, history=[], pack_version=None,
                  received_at=utcnow(), channel="webchat")
    with pytest.raises(outcomes.EarlierWaiting):
        outcomes.answer(outbox.Publisher(container().bus), utcnow, ctx, Draft("Within 30 days of delivery."))
    with session_scope(cross_tenant="tests") as session:
        assert [session.get_one(Message, e.message_id).status for e in (earlier, later)] == ["received"] * 2
        assert session.scalars(select(Message).where(Message.direction == "out",
                                                     Message.conversation_id == later.conversation_id)).all() == []


def test_two_replicas_on_redis_streams_never_answer_a_later_message_first(
        graph: Graph, pg_url: str, redis_namespace: str) -> None:
    """The scale-out path: Postgres, Redis Streams, two orchestrator replicas in one consumer group. Replica 1 is
    answering A (its LLM is slow) when B arrives and goes to replica 2. B is answered with A's
    text, once; A's answer is dropped; both entries are acked. Without the take-over, B was answered first and A
    after it: the customer read the answer to their second message before the answer to their first."""
    graph.configure(database_url=pg_url, redis_url=REDIS_TEST_URL, bus_namespace=redis_namespace)
    migrate()
    with session_scope(cross_tenant="tests") as session:
        tenant = create_tenant(session, f"t{uuid.uuid4().hex[:8]}").tenant
        tenant.live_pack_version = 1
        conversation = Started(tenant.id)
    bus = container().bus
    reached, resume = threading.Event(), threading.Event()

    class SlowForA(Retrieval):
        def __call__(self, tenant_id: str, text: str, **kw: Any) -> list[FakePassage]:
            if text == EARLIER:
                reached.set()
                assert resume.wait(WAIT_S), "the test never resumed A"
            return super().__call__(tenant_id, text, **kw)

    retrieval = SlowForA()
    # Replica 1 holds one entry at most (back-pressure): while it answers A, it reads nothing more.
    replicas = [ConcurrentConsumer(bus, INBOUND, ORCHESTRATOR_GROUP, f"replica-{n}",
                                   Orchestrator.of(container(), retrieve=retrieval).handle, key=conversation_key,
                                   retry_in_place=True, concurrency=n, block_ms=50) for n in (1, 2)]
    threads = [threading.Thread(target=replica.run, daemon=True) for replica in replicas]
    try:
        threads[0].start()
        a = conversation.add(EARLIER)
        assert reached.wait(WAIT_S)  # replica 1 is answering A
        b = conversation.add(LATER)
        threads[1].start()

        def status(message_id: str) -> str:
            with session_scope(cross_tenant="tests") as session:
                return session.get_one(Message, message_id).status

        wait_for(lambda: status(b.message_id) == "answered", timeout=WAIT_S)
        assert status(a.message_id) == "merged"  # taken into B's turn while replica 1 still answered it
    finally:
        resume.set()
        for replica in replicas:
            replica.stop.set()
        for thread in threads:
            if thread.ident is not None:  # started
                thread.join(WAIT_S)
    assert not any(thread.is_alive() for thread in threads)

    retrieved = [text for texts in retrieval.texts.values() for text in texts]
    assert f"{EARLIER}\n{LATER}" in retrieved  # B's turn was read again with A's text
    with session_scope(cross_tenant="tests") as session:
        replies = session.scalars(select(Message.in_reply_to_id).where(
            Message.conversation_id == a.conversation_id, Message.direction == "out")).all()
        assert [session.get_one(Message, m).status for m in (a.message_id, b.message_id)] == ["merged", "answered"]
    assert replies == [b.message_id]
    assert bus.pending_count(INBOUND, ORCHESTRATOR_GROUP) == 0  # both entries acked, A's by replica 1


def test_a_message_stored_without_microseconds_is_never_taken_over_by_itself(started: Started) -> None:
    """On SQLite a time stored as "...:09" (an import, a hand-written row) sorts before the same time bound again
    ("...:09.000000"), so the message looked like an earlier one waiting before itself."""
    lone = started.add(LATER)
    with session_scope(cross_tenant="tests") as session:
        session.execute(update(Message).where(Message.id == lone.message_id)
                        .values(created_at=datetime(2026, 1, 1, 10, 0, 9, tzinfo=UTC)))
        if get_engine().dialect.name == "sqlite":
            session.execute(sql("UPDATE messages SET created_at = '2026-01-01 10:00:09' WHERE id = :id"),
                            {"id": lone.message_id})
    outcome = Orchestrator.of(container(), retrieve=Retrieval()).process(lone)
    assert outcome.status == "answered"
    with session_scope(cross_tenant="tests") as session:
        assert session.get_one(Message, lone.message_id).status == "answered"
