"""Handoffs: the stretches of a conversation in an agent's hands, from a takeover to the release back to the bot.
Written in the transaction of the takeover or release itself, so the analytics (app/analytics) can measure agent
handling time and when a taken-over escalation was resolved.

At most one open handoff per conversation: taking over a conversation an agent already has keeps the open one
(a second takeover changes who has it on the conversation, not when the human stretch began)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.models import Handoff


def _open(session: Session, tenant_id: str, conversation_id: str) -> Handoff | None:
    return session.scalars(
        select(Handoff).where(Handoff.tenant_id == tenant_id, Handoff.conversation_id == conversation_id,
                              Handoff.ended_at.is_(None))
    ).first()


def start(session: Session, tenant_id: str, conversation_id: str, agent: str, now: datetime, *,
          escalation_id: str | None = None) -> Handoff:
    """The conversation goes to `agent` (a takeover). Returns the open handoff, new or already there."""
    current = _open(session, tenant_id, conversation_id)
    if current is not None:
        if escalation_id and current.escalation_id is None:
            current.escalation_id = escalation_id  # taken over first, then its escalation decided as taken over
        return current
    handoff = Handoff(tenant_id=tenant_id, conversation_id=conversation_id, escalation_id=escalation_id,
                      agent=agent, started_at=now)
    session.add(handoff)
    return handoff


def end(session: Session, tenant_id: str, conversation_id: str, by: str, now: datetime) -> Handoff | None:
    """The conversation goes back to the bot (a release). None when no handoff was open (taken over before
    handoffs were recorded, or released twice)."""
    current = _open(session, tenant_id, conversation_id)
    if current is not None:
        current.ended_at = now
        current.ended_by = by
    return current
