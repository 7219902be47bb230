"""Two handlers of one inbound message (a reclaim, a relay's republish, two answering processes, the bus
dead-lettering it) write one outcome: the claim, and the dead-lettering, lock the message before they read it, on
SQLite (where `FOR UPDATE` does nothing and pysqlite begins no transaction at a read) as on Postgres. The
interleaving is forced with events at the engine's cursor hooks."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import event, func, select

from app import outbox
from app.assistant import outcomes
from app.assistant.outcomes import Context, Decision, Outcome
from app.assistant.prompts import Draft
from app.bus.memory import MemoryBus
from app.conversations.service import accept_inbound
from app.db import get_engine, migrate, session_scope
from app.models import Escalation, Message, utcnow
from tests.conftest import Graph

WAIT_S = 30  # only so a broken lock fails the test instead of hanging it


@pytest.fixture(params=["embedded", "postgres"])
def ctx(request: pytest.FixtureRequest, graph: Graph) -> Context:
    from app.tenants.service import create_tenant

    if request.param == "postgres":
        graph.configure(database_url=request.getfixturevalue("pg_url"))
    migrate()
    with session_scope(cross_tenant="tests") as session:
        tenant_id = create_tenant(session, f"t{uuid.uuid4().hex[:8]}").tenant.id
    accepted = accept_inbound(MemoryBus(), tenant_id=tenant_id, channel="webchat", contact_external_id="ann",
                              provider_message_id=uuid.uuid4().hex, text="how long do I have to return boots?")
    return Context(message_id=accepted.message_id, tenant_id=tenant_id, conversation_id=accepted.conversation_id,
                   mode="auto", persona={}, policies={}, llm=None, history=[], pack_version=None,
                   received_at=utcnow(), channel="webchat")


def _writes_messages(statement: str) -> bool:
    """A statement that writes a message row or locks it (Postgres' `FOR UPDATE`)."""
    sql = statement.lstrip().upper()
    return "MESSAGES" in sql and (not sql.startswith("SELECT") or "FOR UPDATE" in sql)


def _ends(ctx: Context, publisher: outbox.Publisher) -> dict[str, Callable[[], Outcome | None]]:
    """The paused handler's ends: an escalation, or the bus's dead-lettering of the message (`mark_dead`)."""
    return {"escalated": lambda: outcomes.escalate(publisher, utcnow, ctx, Decision(escalate_reason="test")),
            "dead": lambda: outcomes.mark_dead(ctx.tenant_id, ctx.message_id, "handler failed 5 times")}


@pytest.mark.parametrize("end", ["escalated", "dead"])
def test_a_handler_paused_after_its_claim_read_never_writes_over_the_other_handlers_outcome(
        ctx: Context, end: str) -> None:
    read, other_at_write, resume = threading.Event(), threading.Event(), threading.Event()

    def after(conn: Any, cursor: Any, statement: str, params: Any, context: Any, many: bool) -> None:
        if (threading.current_thread().name == "paused" and statement.lstrip().upper().startswith("SELECT")
                and "FROM MESSAGES" in statement.upper() and not read.is_set()):
            read.set()  # it has read the message `received`: it stops here, before it writes its end
            assert resume.wait(WAIT_S)

    def before(conn: Any, cursor: Any, statement: str, params: Any, context: Any, many: bool) -> None:
        if threading.current_thread().name == "other" and _writes_messages(statement):
            other_at_write.set()  # past its own read without a lock, or about to wait for the paused one's

    results: dict[str, Outcome | None] = {}

    def run(name: str, handle: Callable[[], Outcome | None]) -> threading.Thread:
        thread = threading.Thread(target=lambda: results.__setitem__(name, handle()), name=name)
        thread.start()
        return thread

    publishers = [outbox.Publisher(MemoryBus()) for _ in range(2)]
    engine = get_engine()
    event.listen(engine, "after_cursor_execute", after)
    event.listen(engine, "before_cursor_execute", before)
    try:
        paused = run("paused", _ends(ctx, publishers[0])[end])
        assert read.wait(WAIT_S)
        other = run("other", lambda: outcomes.answer(publishers[1], utcnow, ctx,
                                                     Draft("Within 30 days of delivery.")))
        assert other_at_write.wait(WAIT_S)
        resume.set()
        paused.join(WAIT_S)
        other.join(WAIT_S)
    finally:
        resume.set()
        event.remove(engine, "after_cursor_execute", after)
        event.remove(engine, "before_cursor_execute", before)
        for publisher in publishers:
            publisher.flush()  # now, not from its thread once this test's database is gone
    assert not paused.is_alive() and not other.is_alive()

    # The paused handler held the message from before its read: the other waited for it, found the message
    # handled and wrote nothing. Without the lock both wrote an outcome, the later over the earlier: the message
    # answered and then dead-lettered, with a holding notice after the answer.
    assert results["other"] is not None and results["other"].status == "duplicate"
    assert end == "dead" or (results["paused"] is not None and results["paused"].status == end)
    with session_scope(cross_tenant="tests") as session:
        assert session.get_one(Message, ctx.message_id).status == end
        replies = session.scalar(select(func.count()).where(Message.in_reply_to_id == ctx.message_id))
        escalations = session.scalar(select(func.count()).where(Escalation.message_id == ctx.message_id))
    assert replies == 1 and escalations == 1
