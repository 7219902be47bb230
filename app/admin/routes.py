"""The tenant admin API (`/admin/v1`): the tenant's persona, policies and LLM keys, its API keys and the audit log;
and what every admin route shares (one transaction per request, paging parameters). Its other parts:
conversation_routes.py, channel_routes.py, knowledge_routes.py, user_routes.py, usage_routes.py, webhook_routes.py.

Every route acts on the caller's own tenant, taken from its API key and from nothing else in the request: an
id that belongs to another tenant gets the same 404 as an id that does not exist. Conversation reads accept
agent keys and every role's login; everything else needs an admin key or an owner's or admin's login. Every
change is written to the audit log in the same transaction."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import date, timedelta
from typing import Annotated, TypeVar

from fastapi import APIRouter, HTTPException, Path, Query, Response
from sqlalchemy.orm import Session

from app.accounts.service import user_names
from app.admin import schemas as s
from app.admin import service, tenant_settings
from app.admin.request_limit import LIMITED
from app.api.services import Services
from app.auth import Admin
from app.db import session_scope
from app.models import ApiKey, Tenant, utcnow

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
