"""A web chat reply is delivered by the orchestrator's own outcome transaction (app/assistant/outcomes.py, `reply`):
stored `sent`, the visitor's open streams woken once it commits, and nothing published for the dispatcher. A
reply the contact may not be sent, or on a channel that leaves the process, stays `pending` for the dispatcher."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from sqlalchemy import update

from app import outbox
from app.assistant import outcomes
from app.assistant.outcomes import Context
from app.assistant.prompts import Draft
from app.bus.base import Delivery
from app.bus.memory import MemoryBus
from app.contracts import OUTBOUND, Event
from app.conversations.push import LocalPush
from app.conversations.service import accept_inbound
from app.db import session_scope
from app.models import Contact, Message


def _answer(tenant: str, *, channel: str = "webchat",
            consent: str | None = None) -> tuple[Message, list[Delivery], bool]:
    """Answer one inbound message with the web chat's push set (as the orchestrator sets it for channels that
    deliver in process, `channel == "webchat"`); returns the reply row, the outbound entries published and
    whether the visitor's stream was woken."""
    bus = MemoryBus()
    bus.ensure_group(OUTBOUND, "observer")
    inbound = accept_inbound(bus, tenant_id=tenant, channel=channel, contact_external_id="v1",
                             provider_message_id="p1", text="Do you ship to Norway?")
    if consent is not None:
        with session_scope(cross_tenant="tests") as session:
            session.execute(update(Contact).where(Contact.tenant_id == tenant).values(consent_status=consent))
    push = LocalPush()
    ctx = Context(message_id=inbound.message_id, tenant_id=tenant, conversation_id=inbound.conversation_id,
                  mode="auto", persona={}, policies={}, llm=None, history=[], pack_version=1,
                  received_at=datetime.now(UTC), channel=channel, visitor="v1" if channel == "webchat" else None,
                  delivery_push=push if channel == "webchat" else None)

    async def answer_while_watching() -> bool:
        async with push.subscribe(tenant, "v1") as waiter:
            await asyncio.to_thread(outcomes.answer, outbox.Publisher(bus), lambda: datetime.now(UTC), ctx,
                                    Draft("We ship to Norway in 5 days [1].", confidence=0.9))
            update = await waiter.next(2.0)
            return update is not None and update.changed

    woken = asyncio.run(answer_while_watching())
    with session_scope(cross_tenant="tests") as session:
        reply = session.query(Message).filter(Message.in_reply_to_id == inbound.message_id).one()
        session.expunge(reply)
    published = bus.read(OUTBOUND, "observer", "o", count=10, block_ms=0)
    return reply, published, woken


def test_a_web_chat_reply_is_sent_by_the_answers_transaction_and_wakes_the_visitor(tenant: str) -> None:
    reply, published, woken = _answer(tenant)
    assert (reply.status, reply.processed_at is not None) == ("sent", True)
    assert woken
    assert published == []  # no hop through the dispatcher


def test_a_contact_who_opted_out_meanwhile_is_left_to_the_dispatcher(tenant: str) -> None:
    """Consent is read again with the claim: withdrawn since the context was read, the reply is not delivered
    here; the dispatcher's consent check then refuses it (tests/e2e/test_contact_privacy.py)."""
    reply, published, woken = _answer(tenant, consent="withdrawn")
    assert reply.status == "pending"
    assert not woken
    assert [Event.from_bus(d.fields).message_id for d in published] == [reply.id]  # type: ignore[attr-defined]


def test_a_channel_that_leaves_the_process_goes_through_the_dispatcher(tenant: str) -> None:
    reply, published, woken = _answer(tenant, channel="telegram")
    assert reply.status == "pending"
    assert not woken
    assert [Event.from_bus(d.fields).message_id for d in published] == [reply.id]  # type: ignore[attr-defined]
