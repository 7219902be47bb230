"""Contacts, conversations and messages: the rows every channel writes through.

Inbound messages are unique on (tenant, channel, provider message id), so a provider's redelivery, or two
concurrent deliveries of one message, store one row and enqueue one `InboundMessage`. Outbound messages carry
their own idempotency key in the same column (app/conversations/replies.py).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from functools import lru_cache
from typing import Any

from sqlalchemy import BindParameter, Table, bindparam, func, insert, select, update
from sqlalchemy.orm import Session, sessionmaker

from app import logs, outbox
from app.bus.base import Bus, check_name
from app.contracts import INBOUND, Attachment, InboundMessage
from app.db import session_scope
from app.models import Contact, Conversation, Message, new_id, utcnow
from app.tenant_scope import filter_only

log = logging.getLogger(__name__)

# The hot path (`accept_inbound`) writes through Core tables: the ORM's unit of work costs more than the SQL.
CONTACTS: Table = Contact.__table__  # type: ignore[assignment]
CONVERSATIONS: Table = Conversation.__table__  # type: ignore[assignment]
MESSAGES: Table = Message.__table__  # type: ignore[assignment]


@dataclass(frozen=True)
class Accepted:
    message_id: str
    conversation_id: str
    contact_id: str
    duplicate: bool


@dataclass(frozen=True)
class InboundRequest:
    """One `accept_inbound` call's arguments, so several can be stored in one transaction (`accept_many`)."""

    tenant_id: str
    channel: str
    contact_external_id: str
    provider_message_id: str
    text: str
    kind: str = "text"
    attachments: list[Attachment] | None = None
    channel_account_id: str | None = None
    display_name: str | None = None
    meta: dict[str, Any] | None = None
    received_at: datetime = field(default_factory=utcnow)
    # The trace context the request arrived in (app/tracing.py `carrier`), for a writer in another thread.
    trace_context: dict[str, str] | None = field(default=None, compare=False, repr=False)

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.tenant_id, self.channel, self.provider_message_id)

    def event(self) -> InboundMessage:
        """The event to publish, ids left blank: built (and validated) before anything is written, so a bad
        request fails alone instead of failing the batch it would have joined."""
        check_name("tenant id", self.tenant_id)
        return InboundMessage(
            tenant_id=self.tenant_id, message_id="", conversation_id="", contact_id="", channel=self.channel,
            channel_account_id=self.channel_account_id, provider_message_id=self.provider_message_id,
            kind=self.kind,  # type: ignore[arg-type]
            text=self.text, attachments=self.attachments or [], received_at=self.received_at,
        )


@dataclass(frozen=True)
class Stored:
    """A request's outcome once committed: `event` is the new message's event (None for a duplicate), `pending`
    its outbox entry, to publish now that it is committed (None for a duplicate or when not enqueued)."""

    accepted: Accepted
    event: InboundMessage | None
    pending: outbox.Pending | None = None


def accept_inbound(
    bus: Bus,
    *,
    tenant_id: str,
    channel: str,
    contact_external_id: str,
    provider_message_id: str,
    text: str,
    kind: str = "text",
    attachments: list[Attachment] | None = None,
    channel_account_id: str | None = None,
    display_name: str | None = None,
    meta: dict[str, Any] | None = None,
) -> Accepted:
    """The gateway's durable enqueue: store the message once, with its event in the outbox, then publish it.

    One transaction of upserts (a handful of round trips, one commit), then one XADD. Returns once the message
    and its event are committed, so the gateway can answer 2xx: the event is published right away, and should
    that fail (the bus is down) or the process die first, an outbox relay publishes it (app/outbox.py). Under
    concurrent load, `app.conversations.batching.InboundBatcher` gives the same guarantees with one transaction
    per batch.
    """
    request = InboundRequest(
        tenant_id=tenant_id, channel=channel, contact_external_id=contact_external_id,
        provider_message_id=provider_message_id, text=text, kind=kind, attachments=attachments,
        channel_account_id=channel_account_id, display_name=display_name, meta=meta,
    )
    return accept_many(bus, [request])[0]


def accept_many(bus: Bus, requests: Sequence[InboundRequest]) -> list[Accepted]:
    """`accept_inbound` for several messages at once: one transaction, one commit, one bus round trip.
    All or nothing: if storing fails, every request fails and nothing is stored."""
    stored = store_inbound(requests)
    if len(stored) == 1:  # a gateway's request about one message: its logs name it
        logs.bind(tenant_id=requests[0].tenant_id, message_id=stored[0].accepted.message_id)
    publish_stored(bus, stored)
    return [s.accepted for s in stored]


def store_inbound(requests: Sequence[InboundRequest], *, enqueue: bool = True,
                  published: Sequence[outbox.Pending] = (), sessions: sessionmaker[Session] | None = None,
                  ) -> list[Stored]:
    """Store new messages (and their contacts and conversations) in one transaction with set-based statements:
    a few round trips whatever the batch size. One result per request, in order. A provider id seen before, in
    the database or earlier in this batch, is a duplicate carrying the original's ids. With `enqueue`, each new
    message's `InboundMessage` goes to the outbox in the same transaction (`Stored.pending`: publish it after the
    commit); without, nothing is enqueued (USSD answers inline). `published`: outbox entries of earlier batches,
    published since, deleted in this transaction (the batcher's way of saving a commit per batch). `sessions`: the
    database of a long-lived writer (app/db.py `session_scope`)."""
    if not requests:
        return []
    events = [r.event() for r in requests]
    times = _strictly_increasing([r.received_at for r in requests])
    originals: dict[tuple[str, str, str], int] = {}  # key -> index of its first request in the batch
    for i, r in enumerate(requests):
        originals.setdefault(r.key, i)
    firsts = sorted(set(originals.values()))
    out: list[Stored] = []
    # A batch usually holds one tenant's requests (a webhook delivery, a quiet moment); one of several tenants
    # is stored in one transaction on purpose (one commit per batch), its statements filtered by tenant.
    [tenant, *others] = {r.tenant_id for r in requests} | outbox.tenants_of(published)
    with (session_scope(tenant=tenant, sessions=sessions) if not others
          else session_scope(cross_tenant="intake batch of several tenants", sessions=sessions)) as session:
        sql = statements(session.get_bind().dialect.name)
        contact_ids = _upsert_contacts(session, sql, [requests[i] for i in firsts], [times[i] for i in firsts])
        conversation_ids = _conversations(session, sql, requests, firsts, times, contact_ids)
        rows: list[dict[str, Any]] = []
        for i in firsts:
            r = requests[i]
            rows.append({
                "id": new_id(), "tenant_id": r.tenant_id, "conversation_id": conversation_ids[_contact_key(r)],
                "channel": r.channel, "direction": "in", "provider_message_id": r.provider_message_id,
                "text": r.text, "status": "received", "meta": {"kind": r.kind, **(r.meta or {})},
                "created_at": times[i], "enqueued_at": times[i], "_contact": contact_ids[_contact_key(r)]})
        # Sorted by key: two writers inserting overlapping batches lock rows in the same order (no deadlock).
        rows.sort(key=_key)
        contact_of = {row["id"]: row.pop("_contact") for row in rows}
        inserted = set(session.execute(sql.insert_messages, rows).scalars().all())
        by_key = {_key(row): Accepted(row["id"], row["conversation_id"], contact_of[row["id"]], duplicate=False)
                  for row in rows if row["id"] in inserted}
        missing = [_key(row) for row in rows if row["id"] not in inserted]
        if missing:
            by_key.update(_existing(session, sql, missing))
        if inserted:
            touched = sorted({a.conversation_id for a in by_key.values() if not a.duplicate})
            tenants = sorted({r.tenant_id for r in requests})
            if len(touched) == 1 and len(tenants) == 1:  # the usual one
                session.execute(sql.touch_conversation, {"conversation": touched[0], "tenant": tenants[0],
                                                         "now": max(times)})
            else:
                session.execute(sql.touch_conversations, {"ids": touched, "tenants": tenants, "now": max(times)})
        for i, r in enumerate(requests):
            accepted = by_key[r.key]
            if originals[r.key] != i or accepted.duplicate:
                out.append(Stored(Accepted(accepted.message_id, accepted.conversation_id, accepted.contact_id,
                                           duplicate=True), None))
                continue
            event = events[i].model_copy(update={
                "message_id": accepted.message_id, "conversation_id": accepted.conversation_id,
                "contact_id": accepted.contact_id, "received_at": times[i]})
            out.append(Stored(accepted, event))
        outbox.remove(session, published)
        if enqueue:
            fresh = [(k, s.event) for k, s in enumerate(out) if s.event is not None]
            pending = outbox.add(session, [outbox.Entry.of(INBOUND, e, e.message_id,
                                                           trace=requests[k].trace_context) for k, e in fresh])
            for (k, _), entry in zip(fresh, pending, strict=True):
                out[k] = replace(out[k], pending=entry)
    return out


def publish_stored(bus: Bus, stored: Sequence[Stored]) -> None:
    """Publish the events of newly stored messages in one bus round trip (after their commit). Never raises:
    an event the bus did not take stays in the outbox for a relay."""
    outbox.publish_now(bus, [s.pending for s in stored if s.pending is not None])


def _key(row: dict[str, Any]) -> tuple[str, str, str]:
    return (row["tenant_id"], row["channel"], row["provider_message_id"])


def _contact_key(r: InboundRequest) -> tuple[str, str, str]:
    return (r.tenant_id, r.channel, r.contact_external_id)


def _strictly_increasing(times: list[datetime]) -> list[datetime]:
    """Arrival times, nudged so that messages of one batch keep their order in `created_at` (history sorts
    by it) even when two arrived within the clock's resolution."""
    out: list[datetime] = []
    for t in times:
        out.append(t if not out or t > out[-1] else out[-1] + timedelta(microseconds=1))
    return out


@dataclass(frozen=True)
class _Statements:
    """The hot path's SQL, built once per dialect: each batch only binds values (SQLAlchemy caches the
    compiled form, and an executemany of an INSERT ... RETURNING becomes one multi-row INSERT)."""

    upsert_contacts: Any
    latest_conversations: Any
    latest_conversation: Any  # of one contact: no expanding IN, which is rendered again at every execution
    rebind_conversations: Any
    insert_conversations: Any
    insert_messages: Any
    existing_messages: Any
    touch_conversations: Any
    touch_conversation: Any  # one conversation, as above


@lru_cache(maxsize=4)
def statements(dialect: str) -> _Statements:
    from sqlalchemy.dialects import postgresql, sqlite

    dialect_insert: Any = postgresql.insert if dialect == "postgresql" else sqlite.insert
    contacts = dialect_insert(CONTACTS)
    contacts = contacts.on_conflict_do_update(
        index_elements=["tenant_id", "channel", "external_id"],
        set_={"last_inbound_at": contacts.excluded.last_inbound_at,
              "display_name": func.coalesce(contacts.excluded.display_name, CONTACTS.c.display_name)},
    ).returning(CONTACTS.c.id, CONTACTS.c.tenant_id, CONTACTS.c.channel, CONTACTS.c.external_id)
    ranked = (
        select(CONVERSATIONS.c.id, CONVERSATIONS.c.contact_id, CONVERSATIONS.c.channel_account_id,
               func.row_number().over(
            partition_by=CONVERSATIONS.c.contact_id,
            order_by=(CONVERSATIONS.c.created_at.desc(), CONVERSATIONS.c.id.desc())).label("rank"))
        # Contact ids are unique across tenants; the tenant filter lets the (tenant_id, contact_id) index serve.
        .where(CONVERSATIONS.c.tenant_id.in_(bindparam("tenants", expanding=True)),
               CONVERSATIONS.c.contact_id.in_(bindparam("contacts", expanding=True)))
        .subquery()
    )
    messages = (
        dialect_insert(MESSAGES)
        .on_conflict_do_nothing(index_elements=["tenant_id", "channel", "provider_message_id"])
        .returning(MESSAGES.c.id)
    )
    tenants: BindParameter[Any] = bindparam("tenants", expanding=True)
    existing = (
        select(MESSAGES.c.id, MESSAGES.c.conversation_id, CONVERSATIONS.c.contact_id, MESSAGES.c.tenant_id,
               MESSAGES.c.channel, MESSAGES.c.provider_message_id)
        .join(CONVERSATIONS, CONVERSATIONS.c.id == MESSAGES.c.conversation_id)
        .where(MESSAGES.c.tenant_id.in_(tenants), CONVERSATIONS.c.tenant_id.in_(tenants),
               MESSAGES.c.channel.in_(bindparam("channels", expanding=True)),
               MESSAGES.c.provider_message_id.in_(bindparam("pids", expanding=True)))
    )
    return _Statements(
        upsert_contacts=contacts,
        latest_conversations=select(ranked.c.contact_id, ranked.c.id, ranked.c.channel_account_id)
        .where(ranked.c.rank == 1),
        latest_conversation=select(CONVERSATIONS.c.contact_id, CONVERSATIONS.c.id, CONVERSATIONS.c.channel_account_id)
        .where(CONVERSATIONS.c.tenant_id == bindparam("tenant"), CONVERSATIONS.c.contact_id == bindparam("contact"))
        .order_by(CONVERSATIONS.c.created_at.desc(), CONVERSATIONS.c.id.desc()).limit(1),
        rebind_conversations=update(CONVERSATIONS)
        .where(CONVERSATIONS.c.id == bindparam("conversation"), CONVERSATIONS.c.tenant_id == bindparam("tenant"),
               CONVERSATIONS.c.channel_account_id.is_(None))
        .values(channel_account_id=bindparam("account")),
        insert_conversations=insert(CONVERSATIONS),
        insert_messages=messages,
        existing_messages=existing,
        touch_conversations=update(CONVERSATIONS)
        .where(CONVERSATIONS.c.id.in_(bindparam("ids", expanding=True)),
               CONVERSATIONS.c.tenant_id.in_(bindparam("tenants", expanding=True)))
        .values(updated_at=bindparam("now")),
        touch_conversation=update(CONVERSATIONS)
        .where(CONVERSATIONS.c.id == bindparam("conversation"), CONVERSATIONS.c.tenant_id == bindparam("tenant"))
        .values(updated_at=bindparam("now")),
    )


def _upsert_contacts(
    session: Session, sql: _Statements, requests: list[InboundRequest], times: list[datetime]
) -> dict[tuple[str, str, str], str]:
    """Create or touch each distinct contact (one row per key: Postgres refuses to upsert a row twice in one
    statement). The last non-empty display name of the batch wins, as if the requests ran one by one."""
    rows: dict[tuple[str, str, str], dict[str, Any]] = {}
    for r, t in zip(requests, times, strict=True):
        row = rows.setdefault(_contact_key(r), {
            "id": new_id(), "tenant_id": r.tenant_id, "channel": r.channel, "external_id": r.contact_external_id,
            "display_name": None, "created_at": t})
        row["last_inbound_at"] = t
        if r.display_name:
            row["display_name"] = r.display_name
    ordered = [rows[k] for k in sorted(rows)]  # one lock order for every writer
    result = session.execute(sql.upsert_contacts, ordered)
    return {(t, ch, ext): cid for cid, t, ch, ext in result.all()}


def _conversations(
    session: Session, sql: _Statements, requests: Sequence[InboundRequest], firsts: list[int],
    times: list[datetime], contact_ids: dict[tuple[str, str, str], str],
) -> dict[tuple[str, str, str], str]:
    """Each contact's latest conversation, starting one for contacts that have none. A conversation whose channel
    account was deleted is bound to the account the new message came through (else its replies could not go
    out)."""
    latest: dict[str, str] = {}
    unbound: set[str] = set()
    if len(contact_ids) == 1:  # the usual one
        [((tenant, *_), contact)] = contact_ids.items()
        found = session.execute(sql.latest_conversation, {"tenant": tenant, "contact": contact}).all()
    else:
        found = session.execute(sql.latest_conversations, {
            "tenants": sorted({k[0] for k in contact_ids}), "contacts": sorted(contact_ids.values())}).all()
    for contact_id, conversation_id, account_id in found:
        latest[contact_id] = conversation_id
        if account_id is None:
            unbound.add(conversation_id)
    out: dict[tuple[str, str, str], str] = {}
    new_rows = []
    rebind = []
    for i in firsts:
        r = requests[i]
        key = _contact_key(r)
        if key in out:
            continue
        contact_id = contact_ids[key]
        if contact_id in latest:
            out[key] = latest[contact_id]
            if out[key] in unbound and r.channel_account_id:
                rebind.append({"conversation": out[key], "tenant": r.tenant_id, "account": r.channel_account_id})
            continue
        out[key] = new_id()
        new_rows.append({"id": out[key], "tenant_id": r.tenant_id, "contact_id": contact_id, "channel": r.channel,
                         "channel_account_id": r.channel_account_id, "mode": "bot", "created_at": times[i],
                         "updated_at": times[i]})
    if new_rows:
        session.execute(sql.insert_conversations, new_rows)
    if rebind:
        session.execute(sql.rebind_conversations, rebind)
    return out


def _existing(
    session: Session, sql: _Statements, keys: list[tuple[str, str, str]]
) -> dict[tuple[str, str, str], Accepted]:
    """The stored originals of messages that were already there (or inserted by a concurrent writer)."""
    wanted = set(keys)
    rows = session.execute(sql.existing_messages, {
        "tenants": sorted({k[0] for k in keys}), "channels": sorted({k[1] for k in keys}),
        "pids": sorted({k[2] for k in keys})}).all()
    found = {(t, ch, pid): Accepted(mid, conv, contact, duplicate=True)
             for mid, conv, contact, t, ch, pid in rows if (t, ch, pid) in wanted}
    if len(found) != len(wanted):  # cannot happen while the unique key holds; say so loudly if it does
        raise RuntimeError(f"inbound messages neither inserted nor found: {sorted(wanted - set(found))}")
    return found


# The orchestrator's history read, built once: each call only binds values (see `_Statements`).
_HISTORY = (
    select(MESSAGES.c.id, MESSAGES.c.direction, MESSAGES.c.text)
    .where(MESSAGES.c.conversation_id == bindparam("conversation"),
           filter_only(MESSAGES.c.tenant_id) == bindparam("tenant"),
           # Not `notin_([...])`: its expanding parameter is rendered into the SQL again at every execution.
           MESSAGES.c.status != "failed", MESSAGES.c.status != "dead")
    .order_by(MESSAGES.c.created_at.desc())
    .limit(bindparam("limit"))
)


def history(session: Session, tenant_id: str, conversation_id: str, *, before_id: str | None,
            turns: int) -> list[tuple[str, str]]:
    """The last `turns` messages of a conversation as (role, text), oldest first, excluding `before_id`."""
    rows = session.execute(_HISTORY, {"tenant": tenant_id, "conversation": conversation_id, "limit": turns + 1}).all()
    turns_list = [
        ("customer" if m.direction == "in" else "assistant", m.text) for m in rows if m.id != before_id
    ][:turns]
    return list(reversed(turns_list))
