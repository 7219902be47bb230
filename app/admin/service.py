"""The admin API's work on the database. Every function takes the caller's tenant id and filters on it, so a
row of another tenant is indistinguishable from a missing one (`NotFound`). Functions flush; the route
commits."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import ColumnElement, Select, exists, func, select, tuple_
from sqlalchemy.orm import Session

from app.audit import record
from app.auth import Principal, issue_key
from app.models import (
    ApiKey,
    AuditEvent,
    ChannelAccount,
    Chunk,
    Contact,
    Conversation,
    Document,
    Escalation,
    IngestionJob,
    Message,
    utcnow,
)

if TYPE_CHECKING:
    from app.knowledge.indexing import Deps


class AdminError(Exception):
    status = 400

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class NotFound(AdminError):
    status = 404


class Conflict(AdminError):
    status = 409


class Invalid(AdminError):
    status = 422


# --- paging -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Cursor:
    """Keyset position: (timestamp, id) of the last row of the previous page. Opaque to callers."""

    at: datetime
    id: str

    def encode(self) -> str:
        return base64.urlsafe_b64encode(f"{self.at.isoformat()}|{self.id}".encode()).decode().rstrip("=")

    @classmethod
    def decode(cls, raw: str | None) -> Cursor | None:
        if not raw:
            return None
        try:
            text = base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)).decode()
            at, _, row_id = text.partition("|")
            return cls(datetime.fromisoformat(at), row_id)
        except (binascii.Error, UnicodeDecodeError, ValueError) as exc:
            raise AdminError("invalid cursor: pass the next_cursor value of the previous page unchanged") from exc


def _page(
    session: Session,
    stmt: Select[Any],
    key: Any,
    id_col: Any,
    cursor: str | None,
    limit: int,
    *,
    newest_first: bool = True,
) -> tuple[list[Any], str | None]:
    """Keyset paging on (key, id): stable under inserts, unlike offsets."""
    position = Cursor.decode(cursor)
    if position is not None:
        pair, bound = tuple_(key, id_col), tuple_(position.at, position.id)
        stmt = stmt.where(pair < bound if newest_first else pair > bound)
    order = (key.desc(), id_col.desc()) if newest_first else (key.asc(), id_col.asc())
    rows = list(session.execute(stmt.add_columns(key).order_by(*order).limit(limit + 1)).all())
    more = len(rows) > limit
    rows = rows[:limit]
    items = [row[0] for row in rows]
    next_cursor = Cursor(rows[-1][-1], items[-1].id).encode() if more and rows else None
    return items, next_cursor


# --- the tenant's rows (its settings: app/admin/tenant_settings.py) -----------------------------------------


_Row = TypeVar("_Row", ApiKey, ChannelAccount, Conversation, Document, IngestionJob)


def _owned(session: Session, model: type[_Row], tenant_id: str, row_id: str, what: str) -> _Row:
    """The row with this id if it belongs to the tenant; another tenant's row is as missing as a missing one."""
    row = session.scalars(select(model).where(model.id == row_id, model.tenant_id == tenant_id)).first()
    if row is None:
        raise NotFound(f"no {what} {row_id!r} in this tenant")
    return row


# --- API keys -----------------------------------------------------------------------------------------------


def list_api_keys(session: Session, tenant_id: str) -> list[ApiKey]:
    return list(
        session.scalars(select(ApiKey).where(ApiKey.tenant_id == tenant_id).order_by(ApiKey.created_at, ApiKey.id))
    )


def create_api_key(session: Session, who: Principal, name: str, scope: str) -> tuple[ApiKey, str]:
    row, plaintext = issue_key(session, who.tenant_id, scope, name)
    record(
        session,
        who.tenant_id,
        who.actor,
        "api_key.created",
        "api_key",
        row.id,
        {"name": name, "scope": scope, "prefix": row.prefix},
    )
    return row, plaintext


def revoke_api_key(session: Session, who: Principal, key_id: str) -> ApiKey:
    """Revoking is idempotent. The key that authenticates this request cannot revoke itself: that way an admin
    can never lock the tenant out of its last admin key by accident (use another admin key to revoke it)."""
    row = _owned(session, ApiKey, who.tenant_id, key_id, "API key")
    if row.id == who.key_id:
        raise Conflict("this is the key you are calling with: revoke it with another admin key")
    if row.revoked_at is None:
        row.revoked_at = utcnow()
        record(
            session,
            who.tenant_id,
            who.actor,
            "api_key.revoked",
            "api_key",
            row.id,
            {"name": row.name, "scope": row.scope, "prefix": row.prefix},
        )
        session.flush()
    return row


# --- knowledge ----------------------------------------------------------------------------------------------


def get_job(session: Session, tenant_id: str, job_id: str) -> IngestionJob:
    return _owned(session, IngestionJob, tenant_id, job_id, "ingestion job")


def list_jobs(
    session: Session, tenant_id: str, cursor: str | None, limit: int
) -> tuple[list[IngestionJob], str | None]:
    stmt = select(IngestionJob).where(IngestionJob.tenant_id == tenant_id)
    return _page(session, stmt, IngestionJob.created_at, IngestionJob.id, cursor, limit)


def list_documents(session: Session, tenant_id: str, pack_version: int | None) -> list[tuple[Document, int]]:
    counts = (
        select(Chunk.document_id, func.count().label("n"))
        .where(Chunk.tenant_id == tenant_id)
        .group_by(Chunk.document_id)
        .subquery()
    )
    stmt = (
        select(Document, func.coalesce(counts.c.n, 0))
        .outerjoin(counts, counts.c.document_id == Document.id)
        .where(Document.tenant_id == tenant_id)
        .order_by(Document.pack_version.desc(), Document.path)
    )
    if pack_version is not None:
        stmt = stmt.where(Document.pack_version == pack_version)
    return [(doc, int(n)) for doc, n in session.execute(stmt).all()]


def delete_document(session: Session, who: Principal, document_id: str, stores: Deps) -> None:
    """Removes the document's file from every pack version (so a rollback cannot bring it back): its rows, and
    the grounding check's kept vectors of its passages that no other chunk holds, in this transaction; its
    vectors, stored file and cached vectors before the commit, so a failure leaves it listed and the call can
    simply be repeated (every delete is idempotent)."""
    from app.knowledge.versions import delete_unreferenced, forget_passage_vectors

    doc = _owned(session, Document, who.tenant_id, document_id, "document")
    copies = list(session.scalars(
        select(Document).where(Document.tenant_id == who.tenant_id, Document.path == doc.path)
    ))
    record(
        session,
        who.tenant_id,
        who.actor,
        "document.deleted",
        "document",
        doc.id,
        {"path": doc.path, "pack_versions": sorted(c.pack_version for c in copies)},
    )
    keys: set[str | None] = {k for c in copies for k in (c.object_key, c.vectors_key)}
    ids = [c.id for c in copies]
    texts = list(session.scalars(select(Chunk.text).where(Chunk.document_id.in_(ids),
                                                          Chunk.tenant_id == who.tenant_id)))
    session.query(Chunk).filter(Chunk.document_id.in_(ids), Chunk.tenant_id == who.tenant_id).delete()
    for copy in copies:
        session.delete(copy)
    session.flush()
    forget_passage_vectors(session, who.tenant_id, texts)
    stores.vectors.delete_where(who.tenant_id, {"document": doc.path})
    delete_unreferenced(session, stores.objects, who.tenant_id, keys)


# --- conversations ------------------------------------------------------------------------------------------


def _open_escalation(tenant_id: str, conversation_id: Any) -> ColumnElement[bool]:
    return exists().where(Escalation.tenant_id == tenant_id, Escalation.conversation_id == conversation_id,
                          Escalation.status == "open")


def list_conversations(
    session: Session,
    tenant_id: str,
    *,
    mode: str | None,
    escalated: bool | None,
    channel: str | None,
    contact: str | None,
    cursor: str | None,
    limit: int,
) -> tuple[list[tuple[Conversation, Contact, bool]], str | None]:
    activity = func.coalesce(Conversation.updated_at, Conversation.created_at)
    stmt = select(Conversation).where(Conversation.tenant_id == tenant_id)
    if mode:
        stmt = stmt.where(Conversation.mode == mode)
    if channel:
        stmt = stmt.where(Conversation.channel == channel)
    if contact:
        stmt = stmt.where(
            Conversation.contact_id.in_(
                select(Contact.id).where(
                    Contact.tenant_id == tenant_id, (Contact.id == contact) | (Contact.external_id == contact)
                )
            )
        )
    if escalated is not None:
        flag = _open_escalation(tenant_id, Conversation.id)
        stmt = stmt.where(flag if escalated else ~flag)
    conversations: list[Conversation]
    conversations, next_cursor = _page(session, stmt, activity, Conversation.id, cursor, limit)
    return [_with_contact(session, c) for c in conversations], next_cursor


def _with_contact(session: Session, conversation: Conversation) -> tuple[Conversation, Contact, bool]:
    contact = session.get_one(Contact, conversation.contact_id)
    is_open = bool(
        session.scalar(
            select(_open_escalation(conversation.tenant_id, conversation.id))
        )
    )
    return conversation, contact, is_open


def get_conversation(session: Session, tenant_id: str, conversation_id: str) -> tuple[Conversation, Contact, bool]:
    return _with_contact(session, _owned(session, Conversation, tenant_id, conversation_id, "conversation"))


def list_messages(
    session: Session,
    tenant_id: str,
    conversation_id: str,
    cursor: str | None,
    limit: int,
    *,
    newest_first: bool = False,
) -> tuple[list[Message], str | None]:
    get_conversation(session, tenant_id, conversation_id)
    stmt = select(Message).where(Message.tenant_id == tenant_id, Message.conversation_id == conversation_id)
    return _page(session, stmt, Message.created_at, Message.id, cursor, limit, newest_first=newest_first)


# --- audit --------------------------------------------------------------------------------------------------


def key_names(session: Session, tenant_id: str, actors: Iterable[str]) -> dict[str, str]:
    """`key:<id>` audit actors of this tenant -> the key's `scope:name` (revoked keys included)."""
    ids = {actor.removeprefix("key:") for actor in actors if actor.startswith("key:")}
    if not ids:
        return {}
    rows = session.execute(
        select(ApiKey.id, ApiKey.scope, ApiKey.name).where(ApiKey.tenant_id == tenant_id, ApiKey.id.in_(ids))
    )
    return {f"key:{key_id}": f"{scope}:{name}" for key_id, scope, name in rows}


def list_audit(
    session: Session,
    tenant_id: str,
    *,
    action: str | None,
    subject_type: str | None,
    subject_id: str | None,
    cursor: str | None,
    limit: int,
) -> tuple[list[AuditEvent], str | None]:
    stmt = select(AuditEvent).where(AuditEvent.tenant_id == tenant_id)
    if action:
        stmt = stmt.where(AuditEvent.action == action)
    if subject_type:
        stmt = stmt.where(AuditEvent.subject_type == subject_type)
    if subject_id:
        stmt = stmt.where(AuditEvent.subject_id == subject_id)
    return _page(session, stmt, AuditEvent.created_at, AuditEvent.id, cursor, limit)
