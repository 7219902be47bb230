"""Consumes the outbound stream and hands each stored reply to its channel's sender, once.

The dispatcher owns everything around a send: it loads the reply and builds the plain `SendRequest` the sender
takes, holds a short send lease (renewed as each part is recorded), records the provider ids, and decides what a
failure means: permanent -> `failed`; transient -> left pending on the bus for redelivery; transient with the
provider's `retry_after` -> rescheduled through the outbox for when the wait is over, plus a little jitter (see
`RETRY_AT`, `JITTER_SHARE`). It also keeps a conversation's replies in order: a reply is not sent while an earlier
one of its conversation waits out a provider's wait or is being sent; it is rescheduled to go just after (see
`ORDER_GAP`). Nothing here sleeps.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Mapping
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any, NoReturn

from sqlalchemy import Table, bindparam, func, or_, select, update
from sqlalchemy.orm import Session

from app import logs, outbox, tracing
from app.bus.base import Delivery, PermanentFailure, RetryLater
from app.channels import Account, InboundRef, Sender, SendError, SendRequest
from app.contacts import consent
from app.contracts import OUTBOUND, Event, OutboundMessage, UnknownEvent
from app.conversations.push import Push, notify_on_commit
from app.conversations.service import CONTACTS, CONVERSATIONS, MESSAGES
from app.crypto import decrypt_json
from app.db import session_scope
from app.models import ChannelAccount, Message, utcnow
from app.tenant_scope import filter_only, same_tenant

log = logging.getLogger(__name__)

# While one dispatcher sends a message (possibly in several parts, each committed as it goes, which releases the
# row lock) no other may start on it. The lease is renewed at each recorded part, and kept well under the bus's
# reclaim time (BUS_CLAIM_IDLE_MS): when a dispatcher dies mid-send, the lease has run out by the time another
# consumer reclaims the entry, so the reply is never held back longer than the reclaim itself.
DEFAULT_LEASE = timedelta(seconds=10)

Clock = Callable[[], datetime]

# A reply the provider asked us to hold back (`retry_after`) is not retried through redeliveries of its bus entry:
# every early redelivery counts as a delivery attempt, so a wait longer than max_deliveries x claim_idle (~3 min by
# default; a Telegram flood wait, a WhatsApp pair rate limit) dead-lettered the reply, which then ended `failed`.
# Instead the transaction that releases the lease records `retry_at` and writes an outbox entry due then
# (app/outbox.py), and the entry in hand is acknowledged: the relay publishes a fresh entry, with attempts of its
# own, once the wait is over. At-least-once holds: the entry in hand is acked only after the commit that scheduled
# the next. The scheduled entry carries its `retry_at` in this field, so it is sent even when this process's clock
# is a little behind the relay's; an older copy that comes before then (redelivered after a crash) is acked without
# calling the provider. A reply the provider would still hold back `max_wait` after it first did fails, with the
# provider's reason: a budget of time, not of waits, so a burst of short flood waits (seconds each) never fails it.
RETRY_AT = "retry_at"
DEFAULT_MAX_WAIT = timedelta(hours=1)
# Every reply one provider held back with the same `retry_after` would be due at the same instant, and all hit the
# provider together again, to be held back again (a thundering herd). Each is scheduled a random extra after the
# provider's wait, never before it: up to a tenth of the wait, so a herd of short waits spreads over a span in
# proportion to them, and at most JITTER_CAP, because a few seconds already spread a herd and every second more is
# the customer's. `max_wait` is checked against the provider's wait alone, so the jitter never fails a reply.
JITTER_SHARE = 0.1
JITTER_CAP = timedelta(seconds=5)
# A reply is not sent while an earlier reply of its conversation still waits (pending, with the provider's `retry_at`,
# a send lease, or a failed send's `redelivery_until` in its meta, or made less than ORDER_UNSTARTED ago and not yet
# taken up: its entry is at another dispatcher): the customer would read the later one first. It is rescheduled as a
# held-back reply is (`retry_at` and an outbox entry, so a redelivered copy is acked without a write; its own
# `max_wait` counts only the provider's refusals of it, never the wait behind another), for ORDER_GAP after the
# earlier one's wait: relays publish oldest first, and with several dispatchers the earlier send has a second's head
# start. A wait already over (its entry not handled yet, a dead dispatcher's lease) is looked at again a lease later;
# a failed send's redelivery not come within REDELIVERY_WAIT holds nothing back. It never fails for waiting, nor waits
# for ever: the earlier reply's wait ends (by its own `max_wait` at the latest; a lost entry is redriven) in sent,
# failed or another wait, and the later one looks again when its entry comes. Only replies made within `max_wait` +
# ORDER_HORIZON before now are looked at, so the look is an index range over the conversation's recent messages
# (ix_messages_conversation_created), not its whole history: one made before and still waiting had been kept off the
# bus for a day before its first send. Behind a reply being sent (by another dispatcher: one process sends a
# conversation's replies one at a time), it looks again ORDER_GAP later, not at the end of that send's lease: a send
# is done long before.
ORDER_GAP = timedelta(seconds=1)
ORDER_HORIZON = timedelta(days=1)
# How long a later reply waits behind an earlier one nobody has taken up yet (a lost entry is redriven later).
ORDER_UNSTARTED = timedelta(seconds=30)
# A send that failed without a `retry_after` waits for its entry's redelivery (retried in place within seconds, or
# reclaimed by another dispatcher); its meta's `redelivery_until` holds later replies back that long at most.
REDELIVERY_WAIT = timedelta(seconds=60)

# The delivery's SQL, built once: each delivery only binds its ids (building a statement, or loading ORM objects,
# cost more than running it on SQLite). Core rows; every statement names the tenant or joins on it.
ACCOUNTS: Table = ChannelAccount.__table__  # type: ignore[assignment]
_IN_TENANT = (MESSAGES.c.id == bindparam("message"), MESSAGES.c.tenant_id == bindparam("tenant"))
# The meta of the latest earlier reply of the conversation that still waits (ORDER_GAP): with its `retry_at`, its
# `sending_until` while it is being sent, or its `redelivery_until` after a failed send (one of them at most), or
# none when it was made less than ORDER_UNSTARTED ago.
_EARLIER = MESSAGES.alias("earlier")
_EARLIER_WAIT = func.coalesce(*(_EARLIER.c.meta[key].as_string() for key in ("retry_at", "sending_until",
                                                                             "redelivery_until")))
_BEHIND = (
    select(_EARLIER.c.meta)
    .where(_EARLIER.c.conversation_id == MESSAGES.c.conversation_id,
           filter_only(_EARLIER.c.tenant_id) == bindparam("tenant"),
           _EARLIER.c.created_at < MESSAGES.c.created_at,
           _EARLIER.c.created_at >= bindparam("horizon", type_=MESSAGES.c.created_at.type),
           _EARLIER.c.direction == "out", _EARLIER.c.status == "pending",
           or_(_EARLIER_WAIT.is_not(None),
               _EARLIER.c.created_at >= bindparam("unstarted", type_=MESSAGES.c.created_at.type)))
    .order_by(_EARLIER.c.created_at.desc())
    .limit(1)
    .scalar_subquery()
)
# The reply, locked, with its contact (through its conversation) and what it waits behind in the same statement.
_OUTBOUND = (
    select(MESSAGES.c.id, MESSAGES.c.tenant_id, MESSAGES.c.status, MESSAGES.c.channel, MESSAGES.c.meta,
           CONTACTS.c.external_id.label("recipient"), CONTACTS.c.consent_status, CONTACTS.c.last_inbound_at,
           _BEHIND.label("behind"))
    .join(CONVERSATIONS, (CONVERSATIONS.c.id == MESSAGES.c.conversation_id) & same_tenant(CONVERSATIONS, MESSAGES))
    .join(CONTACTS, (CONTACTS.c.id == CONVERSATIONS.c.contact_id) & same_tenant(CONTACTS, CONVERSATIONS))
    .where(*_IN_TENANT)
    .with_for_update(of=MESSAGES)
)
_ACCOUNT = select(ACCOUNTS.c.id, ACCOUNTS.c.tenant_id, ACCOUNTS.c.channel, ACCOUNTS.c.external_id,
                  ACCOUNTS.c.config, ACCOUNTS.c.credentials_encrypted).where(
    ACCOUNTS.c.id == bindparam("account"), ACCOUNTS.c.tenant_id == bindparam("tenant"))
_FAILED = update(MESSAGES).where(*_IN_TENANT).values(status="failed", error=bindparam("error"))
# Sent by the transaction that reads it (the web chat): `meta` is written only when there is a lease to drop, so a
# copy read here never writes over what was recorded since.
_SENT = update(MESSAGES).where(*_IN_TENANT).values(
    status="sent", processed_at=bindparam("now", type_=MESSAGES.c.processed_at.type))
_SENT_DROPPING_LEASE = _SENT.values(meta=bindparam("new_meta", type_=MESSAGES.c.meta.type))


class DeliveryBusy(RetryLater):
    """Another dispatcher holds this message's send lease (retry later: the entry stays pending and is
    redelivered; the consumer logs it as a warning, not an error), or the provider asked us to wait and the reply
    is `rescheduled` (`RETRY_AT`): `handle` acknowledges the entry."""

    def __init__(self, message: str, *, rescheduled: bool = False) -> None:
        super().__init__(message)
        self.rescheduled = rescheduled


def lease_for(claim_idle_ms: int) -> timedelta:
    """A send lease that a dead dispatcher cannot make outlive the bus's reclaim time."""
    return min(DEFAULT_LEASE, timedelta(milliseconds=claim_idle_ms) / 2)


class Dispatcher:
    def __init__(self, senders: Mapping[str, Sender], push: Push, *, lease: timedelta = DEFAULT_LEASE,
                 clock: Clock = utcnow, max_wait: timedelta = DEFAULT_MAX_WAIT) -> None:
        """`push` wakes the web chat visitors a delivery is for (`Container.push`)."""
        self.senders = senders
        self.push = push
        self.lease = lease
        self.clock = clock
        self.max_wait = max_wait

    def handle(self, delivery: Delivery) -> None:
        try:
            event = Event.from_bus(delivery.fields)
        except (UnknownEvent, ValueError, KeyError) as exc:
            raise PermanentFailure(f"unreadable outbound event: {exc}") from exc
        if not isinstance(event, OutboundMessage) or event.tenant_id != delivery.tenant_id:
            raise PermanentFailure("expected an OutboundMessage of this stream's tenant")
        attributes = {"switchboard.tenant.id": event.tenant_id, "switchboard.message.id": event.message_id,
                      "switchboard.conversation.id": event.conversation_id, "switchboard.channel": event.channel}
        with logs.scope(event.tenant_id, event.message_id), tracing.span("dispatch", attributes) as span:
            try:
                status = self.deliver(event, due=delivery.fields.get(RETRY_AT))
            except (DeliveryBusy, SendError) as exc:
                if not _rescheduled(exc):
                    raise
                log.warning("delivery of %s put off until the provider's wait is over: %s", event.message_id, exc)
                status = "rescheduled"  # a later entry brings it back: this one is done
            tracing.annotate(span, {"switchboard.outcome": status})

    def deliver(self, event: OutboundMessage, *, due: str | None = None) -> str:
        """Deliver the stored reply once; returns the reply's status afterwards (`sent`, `failed`, or what it
        already was). Raises for a transient failure: the entry is redelivered, or, when the provider said how long
        to wait, the reply was rescheduled (`RETRY_AT`). `due`: the `retry_at` the entry was scheduled for."""
        key = {"message": event.message_id, "tenant": event.tenant_id}
        now = self.clock()
        horizon, unstarted = now - self.max_wait - ORDER_HORIZON, now - ORDER_UNSTARTED
        with session_scope(tenant=event.tenant_id) as session:
            reply = session.execute(_OUTBOUND, {**key, "horizon": horizon, "unstarted": unstarted}).first()
            if reply is None:
                raise PermanentFailure(f"outbound message {event.message_id} not found")
            if reply.status != "pending":
                return str(reply.status)  # already delivered (or failed for good): a redelivery changes nothing
            sender = self.senders.get(reply.channel)
            if sender is None:
                session.execute(_FAILED, {**key, "error": f"no sender for channel {reply.channel!r}"})
                return "failed"
            if not consent.may_send(reply.consent_status, reply.meta):
                session.execute(_FAILED, {**key, "error": consent.NOT_SENT})
                return "failed"
            if sender.in_process:  # delivered by this transaction: the visitor's reader wakes once it commits
                notify_on_commit(session, self.push, reply.tenant_id, reply.recipient)
                meta = reply.meta or {}
                if "sending_until" in meta:
                    session.execute(_SENT_DROPPING_LEASE, {**key, "now": utcnow(),
                                                           "new_meta": _without(meta, "sending_until")})
                else:
                    session.execute(_SENT, {**key, "now": utcnow()})
                return "sent"
            account = (session.execute(_ACCOUNT, {"account": event.channel_account_id, "tenant": event.tenant_id})
                       .first() if event.channel_account_id else None)
            if account is None:
                session.execute(_FAILED, {**key, "error": f"message {reply.id} has no channel account to send from"})
                return "failed"
            message = _lock(session, reply.tenant_id, reply.id)  # as it is now, locked until the lease is committed
            if message.status != "pending":
                return str(message.status)  # taken meanwhile (the USSD route showed it on its screen)
            answers = _answers(session, message)
            self._take_lease(session, message, event, answers, due, reply.behind)
            request = _request(session, message, account, reply, answers)
            with tracing.span(f"send {message.channel}", {"switchboard.channel": message.channel,
                                                           "switchboard.parts.before": len(request.sent)},
                              kind=tracing.SpanKind.CLIENT) as span:
                try:
                    ids = sender.send(request, lambda provider_id: self._record(session, message, provider_id))
                except SendError as exc:
                    tracing.failed(span, exc, "permanent" if exc.permanent else "transient")
                    if exc.permanent:
                        message.status, message.error = "failed", str(exc)
                        log.warning("permanent delivery failure for %s: %s", message.id, exc)
                        return "failed"
                    if self._later(session, message, event, exc) == "failed":
                        return "failed"  # held back by the provider too often
                    raise  # left pending on the bus (redelivered after the claim timeout), or rescheduled
                tracing.annotate(span, {"switchboard.parts.sent": len(ids)})
            self._sent(message, ids)
            return "sent"

    def _take_lease(self, session: Session, message: Message, event: OutboundMessage, answers: InboundRef | None,
                    due: str | None, behind: dict[str, Any] | None) -> None:
        """Written from the row as just read: the only write of its `meta` before the send, so nothing written
        from this copy later can undo what the USSD route records meanwhile (`shown_on`). `behind`: the meta of an
        earlier reply of the conversation that waits (`_BEHIND`); looked at after the check for an early copy, so a
        copy that comes while the reply is rescheduled is acked without scheduling it again."""
        now = self.clock()
        meta = message.meta or {}
        held = meta.get("sending_until")
        if held and datetime.fromisoformat(held) > now:
            raise DeliveryBusy(f"message {message.id} is being sent by another dispatcher until {held}")
        wait = meta.get("retry_at")
        if wait and wait != due and datetime.fromisoformat(wait) > now:
            raise DeliveryBusy(f"message {message.id} waits for the provider's retry-after until {wait}",
                               rescheduled=True)
        if behind is not None and (retry_at := self._look_again(behind, now)) is not None:
            self._queue_behind(session, message, event, retry_at)
        message.meta = {**_without(meta, "retry_at", "redelivery_until"),
                        "sending_until": (now + self.lease).isoformat(),
                        **({"answers": answers.id} if answers is not None else {})}
        session.commit()  # the lease is visible before any provider call

    def _look_again(self, behind: dict[str, Any], now: datetime) -> datetime | None:
        """When a reply behind an earlier one of its conversation (`behind`: that one's meta) looks again
        (ORDER_GAP): just after the provider's wait; ORDER_GAP later while that one is being sent, waits for a
        failed send's redelivery or is not yet taken up (a send takes a moment, its lease up to DEFAULT_LEASE); a
        lease later when its wait is over but it is still pending. None: a failed send whose redelivery did not
        come within REDELIVERY_WAIT holds nothing back."""
        wait = behind.get("retry_at") or behind.get("sending_until") or behind.get("redelivery_until")
        if not wait:
            return now + ORDER_GAP
        until = datetime.fromisoformat(str(wait))
        if until <= now:
            return None if wait == behind.get("redelivery_until") else now + self.lease
        return until + ORDER_GAP if wait == behind.get("retry_at") else min(until, now + ORDER_GAP)

    def _queue_behind(self, session: Session, message: Message, event: OutboundMessage,
                      retry_at: datetime) -> NoReturn:
        """Reschedule the reply for `retry_at`, behind an earlier reply of its conversation (`_look_again`). Its own
        `held_back_since` is left as it is: waiting behind another never fails it."""
        meta = _without(message.meta or {}, "sending_until")  # a dead dispatcher's, run out (checked above)
        since = meta.get("held_back_since")
        _schedule(session, event, meta, retry_at, since=str(since) if since else None)
        message.meta = meta
        session.commit()
        raise DeliveryBusy(f"message {message.id} waits until {retry_at} behind an earlier reply of its "
                           "conversation", rescheduled=True)

    def _record(self, session: Session, message: Message, provider_id: str) -> None:
        """One part went out: record it (committed, so a retry never sends it again) and renew the lease."""
        ids = [*((message.meta or {}).get("provider_ids") or []), provider_id]
        message.meta = {**(message.meta or {}), "provider_ids": ids, "provider_id": ids[0],
                        "sending_until": (self.clock() + self.lease).isoformat()}
        message.provider_ref = ids[0]
        session.commit()

    def _later(self, session: Session, message: Message, event: OutboundMessage, exc: SendError) -> str:
        """Not sending any more: release the lease so the redelivery can go ahead; with the provider's
        `retry_after`, reschedule the reply for then (`RETRY_AT`), or fail it past `max_wait`. Returns the
        reply's status. The row is read again first: meanwhile the USSD route may have shown the reply on its
        screen (status `sent`, `shown_on`), which a write from the copy read before the send would undo."""
        _lock(session, message.tenant_id, message.id)
        if message.status != "pending":
            session.commit()
            return str(message.status)
        meta = _without(message.meta or {}, "sending_until")
        if exc.retry_after:
            now = self.clock()
            since = str(meta.get("held_back_since") or now.isoformat())
            wait = timedelta(seconds=exc.retry_after)
            if now + wait - datetime.fromisoformat(since) > self.max_wait:
                message.status = "failed"
                message.error = f"{exc} (the provider would still hold it back {self.max_wait} after it first did)"
                log.warning("delivery of %s failed: %s", message.id, message.error)
            else:
                _schedule(session, event, meta, now + wait + _jitter(wait), since=since)
        else:  # the entry comes back by itself: later replies of the conversation wait for it (REDELIVERY_WAIT)
            meta["redelivery_until"] = (self.clock() + REDELIVERY_WAIT).isoformat()
        message.meta = meta
        session.commit()
        return str(message.status)

    def _sent(self, message: Message, ids: list[str]) -> None:
        message.status = "sent"
        message.processed_at = utcnow()
        message.meta = _without(message.meta or {}, "sending_until", "redelivery_until")
        if ids:
            message.meta = {**message.meta, "provider_ids": ids, "provider_id": ids[0]}
            message.provider_ref = ids[0]


def _lock(session: Session, tenant_id: str, message_id: str) -> Message:
    """Lock the reply's row, then read it as it is now, so what is written from it holds until the commit. A
    no-op UPDATE takes the row lock on Postgres and the write lock on SQLite, where `FOR UPDATE` does nothing and
    a read does not begin the transaction: a plain read-then-write there let the USSD route's `shown_on`, committed
    in between, be written over (found by the e2e USSD retry test, 1 run in 5)."""
    session.execute(update(Message).where(Message.tenant_id == tenant_id, Message.id == message_id)
                    .values(status=Message.status))
    message = session.get(Message, message_id, populate_existing=True)
    if message is None:
        raise PermanentFailure(f"outbound message {message_id} not found")
    return message


def _jitter(wait: timedelta) -> timedelta:
    """A random extra for a reply the provider holds back `wait` (JITTER_SHARE): never negative."""
    return min(wait * JITTER_SHARE, JITTER_CAP) * random.random()


def _schedule(session: Session, event: OutboundMessage, meta: dict[str, Any], retry_at: datetime, *,
              since: str | None) -> None:
    """Reschedule the reply for `retry_at` (`RETRY_AT`): the outbox entry, in the caller's transaction, and the
    wait in `meta` (with `since`, when the provider first held it back), which the caller writes in the same
    transaction."""
    meta.update(retry_at=retry_at.isoformat(), **({"held_back_since": since} if since else {}))
    entry = outbox.Entry.of(OUTBOUND, event, event.message_id)
    outbox.add(session, [replace(entry, fields={**entry.fields, RETRY_AT: retry_at.isoformat()})],
               not_before=retry_at)


def _rescheduled(exc: Exception) -> bool:
    """Whether a delivery that raised `exc` left the reply to an outbox entry scheduled for later (`RETRY_AT`),
    so the entry in hand may be acknowledged: `_later` schedules one for every transient failure with a
    `retry_after` of a reply still pending (one no longer pending needs nothing more)."""
    if isinstance(exc, DeliveryBusy):
        return exc.rescheduled
    return isinstance(exc, SendError) and not exc.permanent and bool(exc.retry_after)


def _without(meta: dict[str, object], *keys: str) -> dict[str, object]:
    return {k: v for k, v in meta.items() if k not in keys}


def _request(session: Session, message: Message, row: Any, reply: Any,
             answers: InboundRef | None) -> SendRequest:
    """`row`: the `_ACCOUNT` row to send from; `reply`: the `_OUTBOUND` row (its contact). Reads only: a write
    here from the copy read before the lease would be flushed by the query below over whatever the USSD route
    recorded since (its `shown_on`, found by the e2e USSD retry test)."""
    creds = decrypt_json(row.credentials_encrypted) if row.credentials_encrypted else {}
    account = Account(row.id, row.tenant_id, row.channel, row.external_id, dict(row.config or {}), creds)
    answered_before = False
    if answers is not None:
        others = session.scalars(select(Message.meta).where(
            Message.conversation_id == message.conversation_id, Message.direction == "out", Message.id != message.id,
            Message.meta["answers"].as_string() == answers.id))
        answered_before = any((meta or {}).get("provider_ids") for meta in others)
    return SendRequest(
        message_id=message.id, tenant_id=message.tenant_id, idempotency_key=message.provider_message_id,
        text=message.text, recipient=reply.recipient, account=account, author=message.author,
        last_inbound_at=reply.last_inbound_at, answers=answers, answered_before=answered_before,
        sent=tuple((message.meta or {}).get("provider_ids") or ()),
    )


def _answers(session: Session, message: Message) -> InboundRef | None:
    """The customer message a reply answers: the one it replies to, else the conversation's latest."""
    inbound = session.get(Message, message.in_reply_to_id) if message.in_reply_to_id else None
    if inbound is None or inbound.conversation_id != message.conversation_id:
        inbound = session.scalars(
            select(Message)
            .where(Message.conversation_id == message.conversation_id, Message.direction == "in")
            .order_by(Message.created_at.desc())
            .limit(1)
        ).first()
    return InboundRef(inbound.id, dict(inbound.meta or {}), inbound.created_at) if inbound is not None else None
