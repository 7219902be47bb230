"""The admin API for a contact's data rights: export, erase, consent (app/contacts/privacy.py). Admins only:
an export holds every message the contact wrote, unmasked."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Annotated, Any, Literal, TypeVar

from fastapi import APIRouter, Body, HTTPException
from pydantic import BaseModel, Field
from sqlalchemy.orm import Session

from app.api.services import Services
from app.auth import Admin
from app.contacts import privacy
from app.db import flush_deleted, session_scope

router = APIRouter(prefix="/admin/v1/contacts", tags=["admin", "contacts"])
_T = TypeVar("_T")


@contextmanager
def _unit(tenant_id: str) -> Iterator[Session]:
    try:
        with session_scope(tenant=tenant_id) as session:
            yield session
    except privacy.ContactNotFound as exc:
        raise HTTPException(404, str(exc)) from exc
    except privacy.ContactBusy as exc:
        raise HTTPException(409, str(exc)) from exc


def _in_transaction(tenant_id: str, fn: Callable[[Session], _T]) -> _T:
    with _unit(tenant_id) as session:
        return fn(session)


class ErasedOut(BaseModel):
    contact_id: str
    conversations: int
    messages: int
    escalations: int
    audit_events: int
    outbox_entries: int
    bus_entries: int


class ConsentIn(BaseModel):
    status: Literal["unknown", "granted", "withdrawn"] = Field(
        description="`withdrawn`: opted out, nothing is sent to them (their messages are stored, not answered).")


class ConsentOut(BaseModel):
    contact_id: str
    status: str
    updated_at: datetime | None
    source: str | None


@router.get("/{contact}/export", summary="Export everything stored about a contact")
def export_contact(contact: str, who: Admin) -> dict[str, Any]:
    """The contact, every conversation with every message (unmasked), the escalations, the audit events about
    them and their consent, as one JSON document (a data subject's access and portability request)."""
    return _in_transaction(who.tenant_id, lambda db: privacy.export(db, who.tenant_id, contact))


@router.delete("/{contact}", response_model=ErasedOut, summary="Erase a contact",
               responses={409: {"description": "A message of the contact is still being answered."}})
def erase_contact(contact: str, who: Admin, services: Services) -> ErasedOut:
    """Deletes everything stored about the contact (conversations, messages, escalations, audit events about
    them, queued bus entries) and records an audit tombstone with counts only. Cannot be undone."""
    erased, messages, conversations = _in_transaction(who.tenant_id,
        lambda db: privacy.erase(db, who.tenant_id, contact, who.actor))
    on_bus = privacy.erase_bus_entries(services.bus, who.tenant_id, [*messages, *conversations])
    flush_deleted()
    # Their questions' embeddings may be in this process's query cache: the tenant's go now (other processes'
    # expire within EMBED_QUERY_CACHE_TTL_S; app/knowledge/query_cache.py).
    retriever = services.built("retriever")
    if retriever is not None and retriever.query_cache is not None:
        retriever.query_cache.forget_tenant(who.tenant_id)
    return ErasedOut(**{**erased.as_json(), "bus_entries": on_bus})


@router.put("/{contact}/consent", response_model=ConsentOut, summary="Set a contact's consent")
def set_consent(contact: str, body: Annotated[ConsentIn, Body()], who: Admin) -> ConsentOut:
    """`withdrawn` opts the contact out: nothing is sent to them until they (or you) opt them in again."""
    def work(db: Session) -> ConsentOut:
        row = privacy.set_consent(db, who.tenant_id, contact, body.status, who.actor, who.actor)
        return ConsentOut(contact_id=row.id, status=row.consent_status, updated_at=row.consent_updated_at,
                          source=row.consent_source)
    return _in_transaction(who.tenant_id, work)
