"""The redrive sweep: the safety net under the outbox, for events lost after they were published.

Every event announcing a stored message goes through the outbox (app/outbox.py), so a committed message always
reaches the bus. Once there it can still be lost: Redis lost data (a failover without persistence), or a stream
was trimmed past an unread entry. The sweep finds messages still waiting for their event long after they were
enqueued (inbound `received`, outbound `pending`) and publishes their event again, through the outbox, only when
nothing else can still bring it: no outbox entry names the message, and the consumer group is done with the
tenant's stream (`Bus.drained`). A message that is merely backlogged (its event still waiting in the stream, held
by a consumer, or scheduled in the outbox) is left alone.

Safe to run in every orchestrator replica at once: handlers ignore a message that no longer waits, so a second
copy of an event changes nothing.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import and_, exists, func, or_, select

from app import outbox
from app.audit import record
from app.bus.base import Bus
from app.contracts import INBOUND, OUTBOUND, InboundMessage
from app.conversations.replies import outbound_event
from app.db import session_scope
from app.models import Conversation, Message, utcnow

# Messages enqueued at least this long ago, and still waiting, are candidates (and, once redriven, are not
# candidates again for as long).
REDRIVE_AFTER = timedelta(minutes=2)


def redrive_stale(bus: Bus, *, inbound_group: str, outbound_group: str, older_than: timedelta = REDRIVE_AFTER,
                  limit: int = 500, now: datetime | None = None) -> int:
    """Re-publish the events of messages whose event was lost (see the module doc); returns how many."""
    now = now or utcnow()
    groups = {INBOUND: inbound_group, OUTBOUND: outbound_group}
    with session_scope(cross_tenant="redrive sweep") as session:
        # The rows first, then the streams: an event published in between makes its stream not drained.
        rows = session.scalars(
            select(Message)
            .where(or_(and_(Message.direction == "in", Message.status == "received"),
                       and_(Message.direction == "out", Message.status == "pending")),
                   func.coalesce(Message.enqueued_at, Message.created_at) < now - older_than,
                   ~exists().where(outbox.OUTBOX.c.message_id == Message.id))
            .order_by(Message.created_at)
            .limit(limit)
        ).all()
        drained: dict[tuple[str, str], bool] = {}
        entries = []
        for message in rows:
            topic = INBOUND if message.direction == "in" else OUTBOUND
            if (topic, message.tenant_id) not in drained:
                drained[topic, message.tenant_id] = bus.drained(topic, groups[topic], message.tenant_id)
            if not drained[topic, message.tenant_id]:
                continue  # backlogged: its event may well be on its way
            conversation = session.get_one(Conversation, message.conversation_id)
            event = (_inbound_event(message, conversation) if topic == INBOUND
                     else outbound_event(message, conversation))
            entries.append(outbox.Entry.of(topic, event, message.id))
            message.enqueued_at = now
        pending = outbox.add(session, entries, now=now)
    outbox.publish_now(bus, pending)
    return len(pending)


def _inbound_event(message: Message, conversation: Conversation) -> InboundMessage:
    return InboundMessage(
        tenant_id=message.tenant_id, message_id=message.id, conversation_id=conversation.id,
        contact_id=conversation.contact_id, channel=message.channel,
        channel_account_id=conversation.channel_account_id, provider_message_id=message.provider_message_id,
        kind=(message.meta or {}).get("kind", "text"), text=message.text, received_at=message.created_at,
    )


def mark_outbound_dead(tenant_id: str, message_id: str, reason: str) -> None:
    """Called when the bus dead-letters an outbound event: the reply is `failed` with the reason, not left
    `pending` for the sweep to publish again and again."""
    with session_scope(tenant=tenant_id) as session:
        message = session.scalars(select(Message).where(
            Message.id == message_id, Message.tenant_id == tenant_id, Message.direction == "out")).first()
        if message is not None and message.status == "pending":
            message.status = "failed"
            message.error = reason
            record(session, tenant_id, "system", "message.dead_lettered", "message", message_id, {"reason": reason})
