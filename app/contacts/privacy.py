"""A contact's data rights: export everything stored about them, erase it, record their consent.

- `export`: the contact, their conversations with every message, the escalations of those conversations, the
  audit events about any of them, and their consent, as one JSON document (GDPR art. 15 and 20).
- `erase`: deletes all of that (messages, conversations, escalations, outbox entries, audit events about them)
  and the bus entries that carry their messages (streams and dead letters), then records one audit tombstone,
  `contact.erased`, holding only counts and the random row id: no text, no name, no channel id (art. 17).
  Refused while one of their messages is still being processed: erase cannot race the orchestrator writing
  their answer back. LLM usage rows carry no text and stay (their message id points nowhere).
- `set_consent`: `granted`, `withdrawn` (opted out: nothing is sent to them but the confirmation, app/contacts/
  consent.py) or `unknown`, with when and how it changed.

Every function is scoped to one tenant; a contact of another tenant is as missing as a missing one.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import delete, or_, select
from sqlalchemy.orm import Session

from app.audit import record
from app.bus.base import Bus
from app.contracts import EVENTS, INBOUND, OUTBOUND
from app.models import AuditEvent, Contact, Conversation, Escalation, Message, OutboxEntry, utcnow

ERASED_ACTION = "contact.erased"
CONSENT_ACTION = "contact.consent"
CONSENT_STATES = ("unknown", "granted", "withdrawn")
IN_FLIGHT = ("received", "pending")  # inbound not yet decided, outbound not yet handed to the provider


class ContactNotFound(LookupError):
    pass


class ContactBusy(RuntimeError):
    """Some of the contact's messages are still being processed."""


def find(session: Session, tenant_id: str, ref: str) -> Contact:
    """A contact of this tenant by our id, or by the channel's id for them (`channel:external_id` when the same
    external id exists on several channels)."""
    contact = session.scalars(select(Contact).where(Contact.tenant_id == tenant_id, Contact.id == ref)).first()
    if contact is not None:
        return contact
    channel, sep, external = ref.partition(":")
    wheres = [Contact.tenant_id == tenant_id, Contact.external_id == ref]
    matches = list(session.scalars(select(Contact).where(*wheres)))
    if not matches and sep:
        matches = list(session.scalars(select(Contact).where(
            Contact.tenant_id == tenant_id, Contact.channel == channel, Contact.external_id == external)))
    if not matches:
        raise ContactNotFound(f"no contact {ref!r} in this tenant: give the contact's id (from the conversations) "
                              "or the channel's id for them")
    if len(matches) > 1:
        channels = ", ".join(sorted(f"{c.channel}:{c.external_id}" for c in matches))
        raise ContactNotFound(f"{ref!r} names contacts on several channels ({channels}): give one of these")
    return matches[0]


@dataclass(frozen=True)
class Footprint:
    """The ids of everything stored about one contact."""

    contact: Contact
    conversations: list[str]
    messages: list[str]
    escalations: list[str]

    @property
    def ids(self) -> set[str]:
        return {self.contact.id, *self.conversations, *self.messages, *self.escalations}


def footprint(session: Session, contact: Contact) -> Footprint:
    tenant = contact.tenant_id
    conversations = list(session.scalars(select(Conversation.id).where(
        Conversation.tenant_id == tenant, Conversation.contact_id == contact.id).order_by(Conversation.created_at)))
    messages = list(session.scalars(select(Message.id).where(
        Message.tenant_id == tenant, Message.conversation_id.in_(conversations)))) if conversations else []
    escalations = list(session.scalars(select(Escalation.id).where(
        Escalation.tenant_id == tenant, Escalation.conversation_id.in_(conversations)))) if conversations else []
    return Footprint(contact, conversations, messages, escalations)


def _audit_about(session: Session, tenant_id: str, ids: set[str]) -> list[AuditEvent]:
    """The tenant's audit events whose subject is one of `ids`, or whose data names one of them."""
    found = []
    rows = session.scalars(select(AuditEvent).where(AuditEvent.tenant_id == tenant_id)
                           .order_by(AuditEvent.created_at)).yield_per(500)
    for event in rows:
        if event.subject_id in ids or _mentions(event.data, ids):
            found.append(event)
    return found


def _mentions(data: Any, ids: set[str]) -> bool:
    if isinstance(data, str):
        return data in ids
    if isinstance(data, dict):
        return any(_mentions(v, ids) for v in data.values())
    if isinstance(data, list):
        return any(_mentions(v, ids) for v in data)
    return False


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def export(session: Session, tenant_id: str, ref: str) -> dict[str, Any]:
    contact = find(session, tenant_id, ref)
    prints = footprint(session, contact)
    conversations = []
    for conversation in session.scalars(select(Conversation).where(
            Conversation.tenant_id == tenant_id, Conversation.id.in_(prints.conversations))
            .order_by(Conversation.created_at)):
        messages = session.scalars(select(Message).where(
            Message.tenant_id == tenant_id, Message.conversation_id == conversation.id)
            .order_by(Message.created_at, Message.id))
        conversations.append({
            "id": conversation.id, "channel": conversation.channel, "started_at": _iso(conversation.created_at),
            "mode": conversation.mode,
            "messages": [{
                "id": m.id, "at": _iso(m.created_at), "direction": m.direction, "author": m.author or "customer",
                "text": m.text, "status": m.status, "citations": m.citations or [],
                "attachments": (m.meta or {}).get("attachments", []),
            } for m in messages],
        })
    escalations = [{
        "id": e.id, "conversation_id": e.conversation_id, "message_id": e.message_id, "opened_at": _iso(e.created_at),
        "reason": e.reason, "status": e.status, "detail": e.detail, "draft": e.draft, "decision": e.decision,
        "final_text": e.final_text, "decided_at": _iso(e.decided_at),
    } for e in session.scalars(select(Escalation).where(
        Escalation.tenant_id == tenant_id, Escalation.id.in_(prints.escalations)).order_by(Escalation.created_at))]
    audit = [{"at": _iso(a.created_at), "actor": a.actor, "action": a.action, "subject_type": a.subject_type,
              "subject_id": a.subject_id, "data": a.data}
             for a in _audit_about(session, tenant_id, prints.ids)]
    return {
        "exported_at": _iso(utcnow()),
        "contact": {"id": contact.id, "channel": contact.channel, "external_id": contact.external_id,
                    "display_name": contact.display_name, "first_seen_at": _iso(contact.created_at),
                    "last_inbound_at": _iso(contact.last_inbound_at),
                    "consent": {"status": contact.consent_status, "updated_at": _iso(contact.consent_updated_at),
                                "source": contact.consent_source}},
        "conversations": conversations,
        "escalations": escalations,
        "audit_events": audit,
        "files": [],  # Switchboard stores no file about a contact: attachments stay with the provider (their URLs
        # and ids are in the messages above)
    }


@dataclass(frozen=True)
class Erased:
    contact_id: str
    conversations: int
    messages: int
    escalations: int
    audit_events: int
    outbox_entries: int
    bus_entries: int = 0

    def as_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def erase(session: Session, tenant_id: str, ref: str, actor: str) -> tuple[Erased, list[str], list[str]]:
    """Delete everything stored about the contact in the database (the caller commits) and record the
    tombstone. Returns the counts and the message and conversation ids, whose bus entries the caller erases
    after the commit (`erase_bus_entries`)."""
    contact = find(session, tenant_id, ref)
    prints = footprint(session, contact)
    busy = session.scalar(select(Message.id).where(
        Message.tenant_id == tenant_id, Message.id.in_(prints.messages), Message.status.in_(IN_FLIGHT),
        Message.direction == "in")) if prints.messages else None
    if busy is not None:
        raise ContactBusy("a message of this contact is still being answered: erase again in a minute (the "
                          "orchestrator finishes within its deadline)")
    audit = _audit_about(session, tenant_id, prints.ids)
    outbox = session.execute(delete(OutboxEntry).where(
        OutboxEntry.tenant_id == tenant_id, or_(OutboxEntry.message_id.in_(prints.messages or [""]),
                                                 OutboxEntry.message_id.in_(prints.escalations or [""])))
        .execution_options(synchronize_session=False)).rowcount  # type: ignore[attr-defined]
    for event in audit:
        session.delete(event)
    if prints.escalations:
        session.execute(delete(Escalation).where(Escalation.tenant_id == tenant_id,
                                                 Escalation.id.in_(prints.escalations))
                        .execution_options(synchronize_session=False))
    if prints.conversations:
        session.execute(delete(Message).where(Message.tenant_id == tenant_id,
                                              Message.conversation_id.in_(prints.conversations))
                        .execution_options(synchronize_session=False))
        session.execute(delete(Conversation).where(Conversation.tenant_id == tenant_id,
                                                   Conversation.id.in_(prints.conversations))
                        .execution_options(synchronize_session=False))
    channel = contact.channel
    session.delete(contact)
    counts = Erased(prints.contact.id, len(prints.conversations), len(prints.messages), len(prints.escalations),
                    len(audit), outbox)
    record(session, tenant_id, actor, ERASED_ACTION, "contact", counts.contact_id,
           {"channel": channel, **{k: v for k, v in counts.as_json().items() if k != "contact_id"}})
    return counts, prints.messages, prints.conversations


def erase_bus_entries(bus: Bus, tenant_id: str, ids: Iterable[str]) -> int:
    """Remove the tenant's bus entries (and dead letters) that carry one of these messages or conversations."""
    return bus.erase(tenant_id, (INBOUND, OUTBOUND, EVENTS), set(ids))


def set_consent(session: Session, tenant_id: str, ref: str, status: str, source: str, actor: str) -> Contact:
    if status not in CONSENT_STATES:
        raise ValueError(f"consent must be one of {', '.join(CONSENT_STATES)}")
    contact = find(session, tenant_id, ref)
    if contact.consent_status != status:
        contact.consent_status, contact.consent_updated_at, contact.consent_source = status, utcnow(), source
        record(session, tenant_id, actor, CONSENT_ACTION, "contact", contact.id, {"status": status, "source": source})
    return contact
