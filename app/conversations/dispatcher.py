"""Consumes the outbound stream and hands each stored reply to its channel's sender, once."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from sqlalchemy import bindparam, select
from sqlalchemy.orm import Session

from app.bus.base import Delivery, PermanentFailure
from app.contracts import Event, OutboundMessage, UnknownEvent
from app.db import session_scope
from app.models import ChannelAccount, Message, utcnow
from gateways.base import SendError
from gateways.registry import sender_for

log = logging.getLogger(__name__)


# While one dispatcher sends a message (possibly in several parts, each committed as it goes, which releases
# the row lock) no other may start on it; a dispatcher that dies mid-send loses the lease after this long and
# the next delivery resumes after the last recorded part.
SEND_LEASE = timedelta(seconds=60)


# Built once: each delivery only binds its ids (building the statement cost more than running it on SQLite).
_OUTBOUND = (
    select(Message)
    .where(Message.id == bindparam("message"), Message.tenant_id == bindparam("tenant"))
    .with_for_update()
)


class DeliveryBusy(Exception):
    """Another dispatcher holds this message's send lease: retry later (the entry stays pending)."""


class Dispatcher:
    @staticmethod
    def _take_lease(session: Session, message: Message) -> None:
        now = utcnow()
        held = (message.meta or {}).get("sending_until")
        if held and datetime.fromisoformat(held) > now:
            raise DeliveryBusy(f"message {message.id} is being sent by another dispatcher until {held}")
        message.meta = {**(message.meta or {}), "sending_until": (now + SEND_LEASE).isoformat()}
        session.commit()  # the lease is visible before any provider call

    def handle(self, delivery: Delivery) -> None:
        try:
            event = Event.from_bus(delivery.fields)
        except (UnknownEvent, ValueError, KeyError) as exc:
            raise PermanentFailure(f"unreadable outbound event: {exc}") from exc
        if not isinstance(event, OutboundMessage) or event.tenant_id != delivery.tenant_id:
            raise PermanentFailure("expected an OutboundMessage of this stream's tenant")
        self.deliver(event)

    def deliver(self, event: OutboundMessage) -> None:
        with session_scope() as session:
            message = session.scalars(_OUTBOUND, {"message": event.message_id, "tenant": event.tenant_id}).first()
            if message is None:
                raise PermanentFailure(f"outbound message {event.message_id} not found")
            if message.status != "pending":
                return  # already delivered (or failed for good): a redelivered event changes nothing
            sender = sender_for(message.channel)
            if sender is None:
                message.status = "failed"
                message.error = f"no sender for channel {message.channel!r}"
                return
            account = (
                session.get(ChannelAccount, event.channel_account_id) if event.channel_account_id else None
            )
            if account is not None and account.tenant_id != event.tenant_id:
                raise PermanentFailure("channel account belongs to another tenant")
            if getattr(sender, "needs_lease", True):  # a sender that calls no provider is done in this transaction
                self._take_lease(session, message)
            try:
                provider_id = sender.send(session, account, message)
            except SendError as exc:
                if not exc.permanent:
                    # Not sending any more: release the lease so the redelivery can go ahead.
                    message.meta = {k: v for k, v in (message.meta or {}).items() if k != "sending_until"}
                    session.commit()
                    raise  # left pending on the bus; redelivered after the claim timeout
                message.status = "failed"
                message.error = str(exc)
                log.warning("permanent delivery failure for %s: %s", message.id, exc)
                return
            message.status = "sent"
            message.processed_at = utcnow()
            if provider_id:
                message.meta = {**(message.meta or {}), "provider_id": provider_id}
                message.provider_ref = provider_id
