"""Two handlers of one conversation at once (scale-out replicas, several answering processes): a message merged into
a later one is in that one's reply, whichever handler gets where first. Every message ends answered, or merged into
an answered message whose turn was answered from its text. Driven with real handlers on the embedded stack and on
Postgres; the interleaving is forced at the retrieval (the answer path) and at the engine's cursor hooks."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import event, select

from app.assistant import outcomes, turns
from app.assistant.orchestrator import TURN_READS, Orchestrator
from app.assistant.outcomes import Outcome
from app.bootstrap import container
from app.contracts import InboundMessage
from app.conversations.service import accept_inbound
from app.db import get_engine, migrate, session_scope
from app.models import Message
from app.tenants.service import create_tenant
from tests.assistant.helpers import RETURNS_DOC, FakePassage
from tests.conftest import Graph

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


@pytest.fixture(params=["embedded", "postgres"])
def conversation(request: pytest.FixtureRequest, graph: Graph) -> Conversation:
    if request.param == "postgres":
        graph.configure(database_url=request.getfixturevalue("pg_url"))
    migrate()
    with session_scope(cross_tenant="tests") as session:
        tenant = create_tenant(session, f"t{uuid.uuid4().hex[:8]}").tenant
        tenant.live_pack_version = 1  # as if a pack were live: retrieval runs
        tenant_id = tenant.id
    events = []
    for text in (EARLIER, LATER):
        accepted = accept_inbound(container().bus, tenant_id=tenant_id, channel="webchat", contact_external_id="ann",
                                  provider_message_id=uuid.uuid4().hex, text=text)
        events.append(InboundMessage(tenant_id=tenant_id, message_id=accepted.message_id,
                                     conversation_id=accepted.conversation_id, contact_id=accepted.contact_id,
                                     channel="webchat", provider_message_id=uuid.uuid4().hex, text=text))
    retrieval = Retrieval()
    return Conversation(Orchestrator.of(container(), retrieve=retrieval), retrieval, events)


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


def test_a_message_merged_into_one_being_answered_is_answered_in_its_reply(conversation: Conversation) -> None:
    # B is read (nothing merged into it yet, A still waiting) and stops in its answer path.
    b_reached, b_resume = threading.Event(), threading.Event()
    conversation.retrieval.hold["b"] = (b_reached, b_resume)
    b = conversation.handle("b", 1)
    try:
        assert b_reached.wait(WAIT_S)
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
    assert conversation.retrieval.texts["b"] == [LATER, f"{EARLIER}\n{LATER}"]
    assert [row.status for row in conversation.messages()] == ["merged", "answered"]
    _nobody_unanswered(conversation)


def test_a_merge_read_while_the_later_message_is_claimed_leaves_nobody_unanswered(
        conversation: Conversation, hooks: Callable[[str, Callable[..., None]], None]) -> None:
    a_read, a_resume, b_at_claim = threading.Event(), threading.Event(), threading.Event()

    def after(conn: Any, cursor: Any, statement: str, params: Any, context: Any, many: bool) -> None:
        compiled = getattr(context, "compiled", None)
        if (threading.current_thread().name == "a" and compiled is not None
                and compiled.statement is turns.TURN_NOW and not a_read.is_set()):
            a_read.set()  # A's claim read B `received`: it stops before its merge is written
            assert a_resume.wait(WAIT_S)

    def before(conn: Any, cursor: Any, statement: str, params: Any, context: Any, many: bool) -> None:
        compiled = getattr(context, "compiled", None)
        if (threading.current_thread().name == "b" and compiled is not None
                and compiled.statement in (outcomes._LOCK, outcomes._CLAIM)):
            b_at_claim.set()

    hooks("after_cursor_execute", after)
    hooks("before_cursor_execute", before)
    a = conversation.handle("a", 0)
    try:
        assert a_read.wait(WAIT_S)
        b = conversation.handle("b", 1)
        assert b_at_claim.wait(WAIT_S)
        if get_engine().dialect.name != "sqlite":
            # Postgres: A holds only its own row, B is claimed and answered meanwhile; A must not merge into it.
            b.join(WAIT_S)
            assert conversation.results["b"].status == "answered"
        # SQLite: A holds the write lock, B's claim waits for A's merge and must then see it.
    finally:
        a_resume.set()
    a.join(WAIT_S)
    b.join(WAIT_S)
    assert not a.is_alive() and not b.is_alive()
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
    retrieval = MergingRetrieval(into=later.message_id)
    orchestrator = Orchestrator.of(container(), retrieve=retrieval)
    with pytest.raises(outcomes.TurnChanged):
        orchestrator.process(later)
    assert retrieval.merged == TURN_READS
    with session_scope(cross_tenant="tests") as session:
        assert session.get_one(Message, later.message_id).status == "received"
        assert session.scalars(select(Message).where(Message.in_reply_to_id == later.message_id)).all() == []
