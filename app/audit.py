"""The append-only audit log: who did what, when. Rows are only ever inserted; the one
update is the retention purge masking the PII in old events' data (app/retention.py)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Table, insert
from sqlalchemy.orm import Session

from app.models import AuditEvent, new_id, utcnow

AUDIT_EVENTS: Table = AuditEvent.__table__  # type: ignore[assignment]
_INSERT = insert(AUDIT_EVENTS)


def record(
    session: Session,
    tenant_id: str,
    actor: str,
    action: str,
    subject_type: str,
    subject_id: str | None,
    data: dict[str, Any] | None = None,
) -> AuditEvent:
    event = AuditEvent(
        tenant_id=tenant_id,
        actor=actor,
        action=action,
        subject_type=subject_type,
        subject_id=subject_id,
        data=data or {},
    )
    session.add(event)
    return event


def write(
    session: Session,
    tenant_id: str,
    actor: str,
    action: str,
    subject_type: str,
    subject_id: str | None,
    data: dict[str, Any] | None = None,
) -> str:
    """`record` for hot paths (the orchestrator's every message): the same row, inserted at once by one prebuilt
    statement instead of an ORM object flushed at commit. Returns its id."""
    event_id = new_id()
    session.execute(_INSERT, {"id": event_id, "tenant_id": tenant_id, "actor": actor, "action": action,
                              "subject_type": subject_type, "subject_id": subject_id, "data": data or {},
                              "created_at": utcnow()})
    return event_id
