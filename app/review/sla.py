"""The first-response SLA: a tenant's target (`policies.sla_first_response_s`) for a person to act on an escalation.

When an escalation opens, its orchestrator transaction also writes an outbox entry `SlaDue` due at
`opened + target` (`schedule`). The timer is that row: it survives restarts, and any process's outbox relay
publishes it once due (on Postgres with `SKIP LOCKED`, so one relay takes it). The `sla` consumer group of the
tenant's events stream (`SlaTimers`) then, under a row lock on the escalation, checks it is still open, pending and
unanswered by an agent; if so it stores ONE holding message under the idempotency key `sla:<escalation id>` and
marks the escalation `breached`, in one transaction with the reply's outbox entry. A redelivered `SlaDue`, or a
second relay on SQLite publishing the same entry, finds it breached and changes nothing. On WhatsApp outside the
24-hour window the channel's sender sends the account's approved template instead (app/channels.py ReplyPolicy).

An agent's decision before the target marks the escalation `met` (app/review/service.py), and the timer, when it
fires, finds nothing to do.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app import outbox
from app.audit import record
from app.bus.base import Bus, Delivery
from app.contracts import EVENTS, OUTBOUND, SlaDue, event_of
from app.conversations.push import Push
from app.conversations.replies import add_outbound, outbound_event
from app.db import session_scope
from app.models import Conversation, Escalation, Message, Tenant, utcnow

log = logging.getLogger(__name__)

SLA_GROUP = "sla"
DEFAULT_HOLDING_MESSAGE = "Sorry for the wait: our team has your message and will reply here as soon as they can."


def target(policies: dict[str, Any]) -> timedelta | None:
    seconds = policies.get("sla_first_response_s")
    return timedelta(seconds=float(seconds)) if seconds else None


def schedule(session: Session, *, tenant_id: str, escalation_id: str, due: datetime, now: datetime) -> None:
    """The escalation's timer: an outbox entry published when due, in the caller's (the opening) transaction."""
    outbox.add(session, [outbox.Entry.of(EVENTS, SlaDue(tenant_id=tenant_id, escalation_id=escalation_id))],
               now=now, not_before=due)


@dataclass(frozen=True)
class SlaTimers:
    """`sla` group of the events stream: `SlaDue` events (others are not for it), on the process's bus and push."""

    bus: Bus
    push: Push

    def handle(self, delivery: Delivery) -> None:
        event = event_of(delivery, SlaDue)
        if event is not None:
            breach(self.bus, self.push, event.tenant_id, event.escalation_id)


def breach(bus: Bus, push: Push, tenant_id: str, escalation_id: str, *, now: datetime | None = None) -> bool:
    """Send the holding message and mark the escalation breached, if it is still open, pending and unanswered.
    True if it did (once per escalation, however often it is called)."""
    from app.review.notify import wake_consoles

    now = now or utcnow()
    with session_scope(tenant=tenant_id) as session:
        escalation = session.scalars(
            select(Escalation).where(Escalation.id == escalation_id, Escalation.tenant_id == tenant_id)
            .with_for_update()
        ).first()
        if escalation is None or escalation.status != "open" or escalation.sla_state != "pending":
            return False
        conversation = session.get_one(Conversation, escalation.conversation_id)
        if _agent_replied(session, escalation):
            escalation.sla_state = "met"
            return False
        policies = session.get_one(Tenant, tenant_id).policies or {}
        text = str(policies.get("sla_holding_message") or DEFAULT_HOLDING_MESSAGE)
        reply, created = add_outbound(session, conversation, key=f"sla:{escalation.id}", text=text, author="bot",
                                      meta={"escalation_id": escalation.id, "sla": "holding"})
        escalation.sla_state = "breached"
        escalation.sla_breached_at = now
        record(session, tenant_id, "system", "escalation.sla_breached", "escalation", escalation.id,
               {"reply_id": reply.id})
        event = outbound_event(reply, conversation)
        pending = outbox.add(session, [outbox.Entry.of(OUTBOUND, event, event.message_id)]) if created else []
    outbox.publish_now(bus, pending)
    wake_consoles(push, tenant_id)
    log.info("escalation %s passed its first-response target: holding message sent", escalation_id)
    return True


def _agent_replied(session: Session, escalation: Escalation) -> bool:
    """A person wrote in the conversation since the escalation opened (taken over without a decision)."""
    return session.scalars(
        select(Message.id).where(
            Message.tenant_id == escalation.tenant_id, Message.conversation_id == escalation.conversation_id,
            Message.direction == "out", Message.author.like("agent:%"), Message.created_at >= escalation.created_at)
        .limit(1)
    ).first() is not None
