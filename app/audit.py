"""The append-only audit log: who did what, when. Rows are only ever inserted."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from app.models import AuditEvent


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
