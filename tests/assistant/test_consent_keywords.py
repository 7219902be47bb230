"""An opt-out or opt-in keyword changes the contact's consent and is confirmed whatever the customer wrote after
it: it is never merged into the later message's turn (whose text would then reach the LLM and be answered under
the old consent), and that later message is handled under the new consent. On SQLite and on Postgres."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import select

from app.assistant.orchestrator import Orchestrator
from app.bootstrap import container
from app.bus.memory import MemoryBus
from app.contacts import consent
from app.contracts import InboundMessage
from app.conversations.service import accept_inbound
from app.db import session_scope
from app.models import Contact, Message
from tests.assistant.helpers import RETURNS_DOC, FakePassage
from tests.conftest import Graph


@pytest.fixture(params=["embedded", "postgres"])
def tenant(request: pytest.FixtureRequest, graph: Graph) -> str:
    from app.db import migrate
    from app.tenants.service import create_tenant

    if request.param == "postgres":
        graph.configure(database_url=request.getfixturevalue("pg_url"))
    migrate()
    with session_scope(cross_tenant="tests") as session:
        created = create_tenant(session, f"t{uuid.uuid4().hex[:8]}").tenant
        created.live_pack_version = 1  # as if a pack were live: retrieval runs
        return created.id


class Retrieval:
    """Stands in for the vector search, and records what each turn was answered from."""

    def __init__(self) -> None:
        self.questions: list[str] = []

    def __call__(self, tenant_id: str, text: str, **_: object) -> list[FakePassage]:
        self.questions.append(text)
        return [FakePassage("c1", "returns.md", "Returns policy", RETURNS_DOC, 0.9)]


@pytest.fixture
def retrieval() -> Retrieval:
    return Retrieval()


@pytest.fixture
def orchestrator(tenant: str, retrieval: Retrieval) -> Iterator[Orchestrator]:
    built = Orchestrator.of(container(), bus=MemoryBus(), retrieve=retrieval)
    yield built
    built.publisher.flush()  # now, not from its thread once this test's database is gone


def _store(orchestrator: Orchestrator, tenant_id: str, contact: str, text: str) -> InboundMessage:
    accepted = accept_inbound(orchestrator.bus, tenant_id=tenant_id, channel="webchat", contact_external_id=contact,
                              provider_message_id=uuid.uuid4().hex, text=text)
    return InboundMessage(tenant_id=tenant_id, message_id=accepted.message_id,
                          conversation_id=accepted.conversation_id, contact_id=accepted.contact_id,
                          channel="webchat", provider_message_id=uuid.uuid4().hex, text=text)


def _consent(contact_id: str) -> str | None:
    with session_scope(cross_tenant="tests") as session:
        return session.get_one(Contact, contact_id).consent_status


def _status(message_id: str) -> str:
    with session_scope(cross_tenant="tests") as session:
        return session.get_one(Message, message_id).status


def _replies(conversation_id: str) -> list[tuple[str | None, str, str | None]]:
    """Every message sent to the contact: (the message it answers, its text, its kind)."""
    with session_scope(cross_tenant="tests") as session:
        rows = session.scalars(select(Message).where(Message.conversation_id == conversation_id,
                                                     Message.direction == "out").order_by(Message.created_at))
        return [(r.in_reply_to_id, r.text, (r.meta or {}).get("kind")) for r in rows]


def test_stop_followed_by_a_stored_message_opts_out_and_the_later_message_is_skipped(
        tenant: str, orchestrator: Orchestrator, retrieval: Retrieval) -> None:
    stop = _store(orchestrator, tenant, "ann", "STOP")
    thanks = _store(orchestrator, tenant, "ann", "thanks")  # stored before STOP is handled

    assert orchestrator.process(stop).status == "answered"
    assert _consent(stop.contact_id) == "withdrawn"
    assert orchestrator.process(thanks).status == "skipped"

    assert [_status(stop.message_id), _status(thanks.message_id)] == ["answered", "skipped"]
    assert _replies(stop.conversation_id) == [(stop.message_id, consent.DEFAULT_OPT_OUT, consent.CONFIRMATION)]
    assert retrieval.questions == []  # nothing of either message reached the answer path


def test_start_followed_by_a_stored_message_opts_in_and_the_later_message_is_answered_alone(
        tenant: str, orchestrator: Orchestrator, retrieval: Retrieval) -> None:
    opted_out = _store(orchestrator, tenant, "bob", "STOP")
    assert orchestrator.process(opted_out).status == "answered"
    assert _consent(opted_out.contact_id) == "withdrawn"

    start = _store(orchestrator, tenant, "bob", "START")
    question = _store(orchestrator, tenant, "bob", "how long do I have to return boots?")  # before START is handled
    assert orchestrator.process(start).status == "answered"
    assert _consent(start.contact_id) == "granted"
    assert orchestrator.process(question).status == "answered"

    replies = _replies(start.conversation_id)
    assert replies[:2] == [(opted_out.message_id, consent.DEFAULT_OPT_OUT, consent.CONFIRMATION),
                           (start.message_id, consent.DEFAULT_OPT_IN, consent.CONFIRMATION)]
    assert [(to, kind) for to, _, kind in replies[2:]] == [(question.message_id, None)]
    assert retrieval.questions == ["how long do I have to return boots?"]  # answered on its own, not with START
