"""Typed, versioned events that travel on the bus.

Every event carries `v` (its schema version) and `tenant_id`. Consumers accept the versions they know and
dead-letter the rest with a reason, so a rolling deploy never silently drops a message.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from app.models.base import utcnow

if TYPE_CHECKING:
    from app.bus.base import Delivery


class Event(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    v: int = 1
    tenant_id: str

    def to_bus(self) -> dict[str, str]:
        return {"type": self.event_type(), "v": str(self.v), "body": self.model_dump_json()}

    @classmethod
    def event_type(cls) -> str:
        return cls.__name__

    @classmethod
    def from_bus(cls, fields: dict[str, str]) -> Event:
        kind = fields.get("type")
        model = EVENT_TYPES.get(kind or "")
        if model is None:
            raise UnknownEvent(f"unknown event type {kind!r}")
        if int(fields.get("v", "0")) > model.model_fields["v"].default:
            raise UnknownEvent(f"{kind} v{fields.get('v')} is newer than this consumer understands")
        return model.model_validate_json(fields["body"])


class UnknownEvent(ValueError):
    pass


E = TypeVar("E", bound=Event)


def event_of(delivery: Delivery, kind: type[E]) -> E | None:
    """For a consumer group that handles one kind of event of a shared stream: the delivery's event if it is a
    `kind`, None for any other kind. Unreadable, or not of the stream's tenant: `PermanentFailure`, so the bus
    dead-letters it with the reason."""
    from app.bus.base import PermanentFailure

    if delivery.fields.get("type") != kind.event_type():
        return None
    try:
        event = kind.model_validate_json(delivery.fields["body"])
    except (KeyError, ValueError) as exc:
        raise PermanentFailure(f"unreadable {kind.event_type()}: {exc}") from exc
    if event.tenant_id != delivery.tenant_id:
        raise PermanentFailure("event tenant does not match its stream's tenant")
    return event


class Attachment(BaseModel):
    model_config = ConfigDict(frozen=True)

    kind: str  # image | audio | video | document | sticker | location | contacts
    url: str | None = None
    media_id: str | None = None
    mime_type: str | None = None
    caption: str | None = None
    data: dict[str, Any] = Field(default_factory=dict)


class InboundMessage(Event):
    """A customer's message, normalised by a channel gateway. Points at the stored `messages` row."""

    message_id: str  # our messages.id
    conversation_id: str
    contact_id: str
    channel: str
    channel_account_id: str | None = None
    provider_message_id: str
    kind: Literal["text", "media", "location", "contacts", "interactive", "reaction", "edit", "command"] = "text"
    text: str = ""
    attachments: list[Attachment] = Field(default_factory=list)
    received_at: datetime = Field(default_factory=utcnow)


class OutboundMessage(Event):
    """A reply for the channel to deliver. Points at the stored outbound `messages` row."""

    message_id: str
    conversation_id: str
    channel: str
    channel_account_id: str | None = None
    text: str
    citations: list[dict[str, Any]] = Field(default_factory=list)
    author: str = "bot"
    human_agent: bool = False


class EscalationOpened(Event):
    escalation_id: str
    conversation_id: str
    message_id: str
    reason: str


class EscalationDecided(Event):
    escalation_id: str
    conversation_id: str
    decision: Literal["approve", "edit", "reject", "takeover"]
    reviewer: str


class SlaDue(Event):
    """An escalation's first-response target passes now: published by the outbox relay when due (scheduled when
    the escalation opened), consumed by app/review/sla.py."""

    escalation_id: str


class IngestionProgress(Event):
    """A knowledge ingestion moved on: one file done (`status` indexed | carried | failed), or the build ended
    (`status` live | ready | failed, `file` empty). Informational: published best-effort on `events`."""

    job_id: str
    pack_version: int
    file: str = ""
    status: str
    reason: str | None = None
    files_done: int = 0
    files_total: int = 0
    chunks: int = 0


EVENT_TYPES: dict[str, type[Event]] = {
    m.event_type(): m
    for m in (InboundMessage, OutboundMessage, EscalationOpened, EscalationDecided, SlaDue, IngestionProgress)
}

# Topics: each is a stream per tenant (see app/bus/base.py).
INBOUND = "inbound"
OUTBOUND = "outbound"
EVENTS = "events"
