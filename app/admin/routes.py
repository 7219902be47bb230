"""The tenant admin API (`/admin/v1`): the tenant's persona and policies, API keys, channel accounts,
knowledge uploads and documents, conversations and the audit log.

Every route acts on the caller's own tenant, taken from its API key and from nothing else in the request: an
id that belongs to another tenant gets the same 404 as an id that does not exist. Conversation reads accept
agent keys and every role's login; everything else needs an admin key or an owner's or admin's login. Every
change is written to the audit log in the same transaction."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import date, timedelta
from typing import Annotated, Any, Literal, TypeVar

from fastapi import APIRouter, HTTPException, Path, Query, Response
from sqlalchemy.orm import Session

from app.accounts.service import user_names
from app.admin import knowledge_schemas as ks
from app.admin import schemas as s
from app.admin import service, tenant_settings
from app.admin.policy_schemas import Channel
from app.admin.request_limit import LIMITED
from app.api.services import Services
from app.assistant.pii_restore import mask_for_agents
from app.auth import Admin, Principal, Viewer
from app.db import session_scope
from app.jobs import JobQueue
from app.models import (
    ApiKey,
    Contact,
    Conversation,
    IngestionJob,
    Message,
    Tenant,
    utcnow,
)

router = APIRouter(prefix="/admin/v1", tags=["admin"], dependencies=LIMITED)

_T = TypeVar("_T")
Limit = Annotated[int, Query(ge=1, le=200, description="Page size.")]
ProviderPath = Annotated[str, Path(pattern=r"^[a-z0-9][a-z0-9_-]{0,39}$", description="The provider entry's name.")]
CursorQ = Annotated[str | None, Query(description="`next_cursor` of the previous page.")]


@contextmanager
def _unit(tenant_id: str) -> Iterator[Session]:
    """One transaction per request in the caller's tenant; service errors become HTTP errors after the rollback."""
    try:
        with session_scope(tenant=tenant_id) as session:
            yield session
    except service.AdminError as exc:
        raise HTTPException(exc.status, exc.message) from exc


def in_transaction(tenant_id: str, fn: Callable[[Session], _T]) -> _T:
    with _unit(tenant_id) as session:
        return fn(session)


# --- converters (rows -> response models) -------------------------------------------------------------------


def _tenant(t: Tenant) -> s.TenantOut:
    return s.TenantOut(
        id=t.id,
        slug=t.slug,
        name=t.name,
        persona=t.persona or {},
        policies=t.policies or {},
        has_llm_key=t.llm_api_key_encrypted is not None,
        llm_provider_keys=tenant_settings.llm_provider_keys(t),
        live_pack_version=t.live_pack_version,
        created_at=t.created_at,
    )


def _key(k: ApiKey) -> s.ApiKeyOut:
    return s.ApiKeyOut(
        id=k.id,
        name=k.name,
        scope=k.scope,
        prefix=k.prefix,
        created_at=k.created_at,
        last_used_at=k.last_used_at,
        revoked_at=k.revoked_at,
    )


def job_out(jobs: JobQueue, j: IngestionJob) -> ks.JobOut:
    done_files, chunks = j.done_files, j.chunks
    progress = None
    if j.status == "running":  # the row is written at the end; a job running in this process reports live
        live = jobs.progress(j.id) or {}
        done_files, chunks = live.get("done_files", done_files), live.get("chunks", chunks)
        if "bytes_total" in live:
            progress = ks.JobProgress(**{k: live[k] for k in ks.JobProgress.model_fields})
    return ks.JobOut(
        id=j.id,
        status=j.status,
        pack_version=j.pack_version,
        total_files=j.total_files,
        done_files=done_files,
        chunks=chunks,
        errors=[ks.FileError(**e) for e in j.errors or []],
        detail=j.detail,
        created_at=j.created_at,
        finished_at=j.finished_at,
        progress=progress,
    )


def _conversation(c: Conversation, contact: Contact, is_open: bool) -> dict[str, Any]:
    return dict(
        id=c.id,
        channel=c.channel,
        mode=c.mode,
        assigned_agent=c.assigned_agent,
        contact=s.ContactOut(id=contact.id, external_id=contact.external_id, display_name=contact.display_name),
        open_escalation=is_open,
        created_at=c.created_at,
        updated_at=c.updated_at,
    )


def _message(m: Message, who: Principal) -> s.MessageOut:
    """Agents and viewers read structured PII masked, as in the review console (raw only through its audited
    reveal); owners and admins, who answer for the tenant's data, read it as stored."""
    return s.MessageOut(
        id=m.id,
        direction=m.direction,
        author=m.author,
        text=m.text if who.rank in ("owner", "admin") else (mask_for_agents(m.text) or ""),
        status=m.status,
        citations=m.citations,
        in_reply_to_id=m.in_reply_to_id,
        created_at=m.created_at,
    )


# --- tenant -------------------------------------------------------------------------------------------------


@router.get("/tenant", response_model=s.TenantOut, summary="Get the tenant")
def get_tenant(who: Admin) -> s.TenantOut:
    """The caller's tenant: name, persona, policies, whether it has its own LLM key, and the live pack
    version."""
    return in_transaction(who.tenant_id, lambda db: _tenant(tenant_settings.get_tenant(db, who.tenant_id)))


@router.patch("/tenant", response_model=s.TenantOut, summary="Update name, persona or policies")
def patch_tenant(body: s.TenantPatch, who: Admin, services: Services) -> s.TenantOut:
    """Changes only the fields sent; inside `persona` and `policies` too (send a field as `null` to reset it).
    Takes effect on the next message the assistant answers."""
    return in_transaction(who.tenant_id,
        lambda db: _tenant(
            tenant_settings.update_tenant(
                db,
                who,
                name=body.name,
                persona=body.persona.model_dump(mode="json", exclude_unset=True) if body.persona else None,
                policies=body.policies.model_dump(mode="json", exclude_unset=True) if body.policies else None,
                pii_ner=services.pii_ner,
            )
        )
    )


@router.put("/tenant/llm-key", response_model=s.LLMKeyOut, summary="Set the tenant's LLM API key")
def put_llm_key(body: s.LLMKeyIn, who: Admin) -> s.LLMKeyOut:
    """Stores the key encrypted, for the endpoint in `policies.llm`. It is never returned."""
    return in_transaction(who.tenant_id,
        lambda db: s.LLMKeyOut(
            has_llm_key=tenant_settings.set_llm_key(
                db, who, body.api_key.get_secret_value()).llm_api_key_encrypted is not None
        )
    )


@router.delete("/tenant/llm-key", response_model=s.LLMKeyOut, summary="Remove the tenant's LLM API key")
def delete_llm_key(who: Admin) -> s.LLMKeyOut:
    """The server's default LLM key applies again."""
    return in_transaction(who.tenant_id,
        lambda db: s.LLMKeyOut(has_llm_key=tenant_settings.set_llm_key(db, who, None).llm_api_key_encrypted is not None)
    )


@router.put("/tenant/llm-keys/{name}", response_model=s.LLMProviderKeysOut,
            summary="Set the LLM API key of one provider entry")
def put_llm_provider_key(name: ProviderPath, body: s.LLMKeyIn, who: Admin) -> s.LLMProviderKeysOut:
    """Stores the key encrypted, for the entry of `policies.llm.providers` with this name (it may be set before
    the entry exists). That entry gets this key instead of the tenant's key. It is never returned."""
    return in_transaction(who.tenant_id, lambda db: s.LLMProviderKeysOut(
        llm_provider_keys=tenant_settings.set_llm_provider_key(db, who, name, body.api_key.get_secret_value())))


@router.delete("/tenant/llm-keys/{name}", response_model=s.LLMProviderKeysOut,
               summary="Remove the LLM API key of one provider entry")
def delete_llm_provider_key(name: ProviderPath, who: Admin) -> s.LLMProviderKeysOut:
    """The entry uses the tenant's key again (or none on its own URL). 404 when no key is stored under `name`."""
    return in_transaction(who.tenant_id, lambda db: s.LLMProviderKeysOut(
        llm_provider_keys=tenant_settings.set_llm_provider_key(db, who, name, None)))


@router.get("/llm/usage", response_model=s.LLMUsageOut, summary="LLM usage and cost by day, provider and model")
def llm_usage(
    who: Admin,
    since: Annotated[date | None, Query(description="First UTC day (default: 30 days before `until`).")] = None,
    until: Annotated[date | None, Query(description="Last UTC day, included (default: today).")] = None,
) -> s.LLMUsageOut:
    """Every LLM attempt made for the tenant's messages, failed ones included, summed per UTC day, provider and
    model: tokens from the provider's own `usage`, cost from the price table (`input_per_1m` / `output_per_1m` of
    the entry, else the server's LLM_PRICES)."""
    from app.providers.llm.usage import summary

    last = until or utcnow().date()
    first = since or last - timedelta(days=30)
    if first > last:
        raise HTTPException(422, f"since ({first}) is after until ({last})")
    if (last - first).days > 366:
        raise HTTPException(422, "ask for at most 366 days at once")
    rows = in_transaction(who.tenant_id, lambda db: summary(db, who.tenant_id, first, last))
    return s.LLMUsageOut(
        since=first, until=last, usage=[s.LLMUsageRow(**vars(r)) for r in rows],
        total_cost=sum(r.cost or 0.0 for r in rows), total_prompt_tokens=sum(r.prompt_tokens for r in rows),
        total_completion_tokens=sum(r.completion_tokens for r in rows),
    )


# --- API keys -----------------------------------------------------------------------------------------------


@router.get("/api-keys", response_model=s.ApiKeysOut, summary="List API keys")
def list_api_keys(who: Admin) -> s.ApiKeysOut:
    """Every key of the tenant, revoked ones included. Keys are stored hashed: only their prefix is shown."""
    return in_transaction(who.tenant_id, lambda db: s.ApiKeysOut(
        api_keys=[_key(k) for k in service.list_api_keys(db, who.tenant_id)]))


@router.post("/api-keys", response_model=s.NewApiKeyOut, status_code=201, summary="Create an API key")
def create_api_key(body: s.ApiKeyIn, who: Admin) -> s.NewApiKeyOut:
    """Returns the key once, in `api_key`; it cannot be shown again."""

    def work(db: Session) -> s.NewApiKeyOut:
        row, plaintext = service.create_api_key(db, who, body.name, body.scope)
        return s.NewApiKeyOut(**_key(row).model_dump(), api_key=plaintext)

    return in_transaction(who.tenant_id, work)


@router.delete(
    "/api-keys/{key_id}",
    status_code=204,
    summary="Revoke an API key",
    responses={
        404: {"description": "No such key in this tenant."},
        409: {"description": "The key authenticating this request cannot revoke itself."},
    },
)
def revoke_api_key(key_id: str, who: Admin) -> Response:
    """Revokes at once (idempotent). A key cannot revoke itself, so a tenant cannot lose its last admin key by
    accident: revoke it with another admin key."""
    in_transaction(who.tenant_id, lambda db: service.revoke_api_key(db, who, key_id))
    return Response(status_code=204)


# --- conversations (agent keys too) -------------------------------------------------------------------------


@router.get(
    "/conversations",
    response_model=s.ConversationsOut,
    summary="List conversations",
    tags=["admin", "conversations"],
)
def list_conversations(
    who: Viewer,
    mode: Annotated[Literal["bot", "human"] | None, Query(description="`human`: taken over by an agent.")] = None,
    escalated: Annotated[
        bool | None, Query(description="Only those with (true) or without an open escalation.")
    ] = None,
    channel: Annotated[Channel | None, Query()] = None,
    contact: Annotated[str | None, Query(description="A contact id or the channel's id of the contact.")] = None,
    limit: Limit = 50,
    cursor: CursorQ = None,
) -> s.ConversationsOut:
    """Most recently active first. Agent keys and every login (viewers too) may call this."""

    def work(db: Session) -> s.ConversationsOut:
        rows, nxt = service.list_conversations(
            db,
            who.tenant_id,
            mode=mode,
            escalated=escalated,
            channel=channel,
            contact=contact,
            cursor=cursor,
            limit=limit,
        )
        return s.ConversationsOut(conversations=[s.ConversationOut(**_conversation(*r)) for r in rows], next_cursor=nxt)

    return in_transaction(who.tenant_id, work)


@router.get(
    "/conversations/{conversation_id}",
    response_model=s.ConversationDetail,
    summary="Get a conversation with its latest messages",
    tags=["admin", "conversations"],
)
def get_conversation(
    conversation_id: str,
    who: Viewer,
    messages: Annotated[int, Query(ge=0, le=200, description="How many of the latest messages.")] = 50,
) -> s.ConversationDetail:
    """The conversation, its contact and its latest messages (oldest first) with their citations."""

    def work(db: Session) -> s.ConversationDetail:
        row = service.get_conversation(db, who.tenant_id, conversation_id)
        latest, more = (
            service.list_messages(db, who.tenant_id, conversation_id, None, messages, newest_first=True)
            if messages
            else ([], None)
        )
        return s.ConversationDetail(
            **_conversation(*row),
            messages=[_message(m, who) for m in reversed(latest)],
            more_messages=more is not None,
        )

    return in_transaction(who.tenant_id, work)


@router.get(
    "/conversations/{conversation_id}/messages",
    response_model=s.MessagesOut,
    summary="Page through a conversation's messages",
    tags=["admin", "conversations"],
)
def list_messages(conversation_id: str, who: Viewer, limit: Limit = 100, cursor: CursorQ = None) -> s.MessagesOut:
    """Oldest first, inbound and outbound, with status and citations."""

    def work(db: Session) -> s.MessagesOut:
        rows, nxt = service.list_messages(db, who.tenant_id, conversation_id, cursor, limit)
        return s.MessagesOut(messages=[_message(m, who) for m in rows], next_cursor=nxt)

    return in_transaction(who.tenant_id, work)


# --- audit --------------------------------------------------------------------------------------------------


@router.get("/audit", response_model=s.AuditPage, summary="Read the audit log")
def list_audit(
    who: Admin,
    action: Annotated[str | None, Query(description="e.g. `channel.created`, `escalation.approved`.")] = None,
    subject_type: Annotated[str | None, Query()] = None,
    subject_id: Annotated[str | None, Query()] = None,
    limit: Limit = 50,
    cursor: CursorQ = None,
) -> s.AuditPage:
    """Who did what, newest first. The log is append-only. `actor` is exact (`key:<id>`, `user:<id>`, `operator`,
    `system`, `bot`); `actor_name` adds a key's current scope and name, or a person's email, for reading."""

    def work(db: Session) -> s.AuditPage:
        rows, nxt = service.list_audit(
            db,
            who.tenant_id,
            action=action,
            subject_type=subject_type,
            subject_id=subject_id,
            cursor=cursor,
            limit=limit,
        )
        actors = {e.actor for e in rows}
        names = {**service.key_names(db, who.tenant_id, actors), **user_names(db, actors)}
        return s.AuditPage(
            events=[
                s.AuditOut(
                    id=e.id,
                    actor=e.actor,
                    actor_name=names.get(e.actor),
                    action=e.action,
                    subject_type=e.subject_type,
                    subject_id=e.subject_id,
                    data=e.data or {},
                    created_at=e.created_at,
                )
                for e in rows
            ],
            next_cursor=nxt,
        )

    return in_transaction(who.tenant_id, work)
