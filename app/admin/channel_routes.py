"""The admin API's channel accounts (`/admin/v1/channels`), built from the registered channels: the create body
is a union discriminated by `channel`, so the OpenAPI document shows each channel type's own credentials, config
and example, and every type is validated by the same code as `switchboard channel add` (app/tenants/channels.py).
"""

# No `from __future__ import annotations` here: the body type is built at run time from the channel registry.
from collections.abc import Callable
from typing import Annotated, Any, TypeVar, Union

from fastapi import APIRouter, Body, HTTPException, Response
from pydantic import Field
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.admin import schemas as s
from app.admin.request_limit import LIMITED
from app.auth import Admin
from app.bootstrap import Container
from app.channels import ACCOUNT_ROUTING
from app.db import session_scope
from app.models import ChannelAccount
from app.tenants import channels as service

_T = TypeVar("_T")


def _in_transaction(services: Container, tenant_id: str, fn: Callable[[Session], _T]) -> _T:
    try:
        with session_scope(tenant=tenant_id) as session:
            result = fn(session)
    except service.ChannelAccountError as exc:
        raise HTTPException(exc.status, exc.message) from exc
    # This process's webhooks see the change at once (other processes within their cache's few seconds).
    services.forget_shared(ACCOUNT_ROUTING)
    return result


def channel_router(services: Container) -> APIRouter:
    """The channel-account routes for `services`' channel specs (each channel's typed request body)."""
    registry = services.channels
    router = APIRouter(prefix="/admin/v1", tags=["admin"], dependencies=LIMITED)
    models = tuple(service.create_request(spec) for spec in registry.specs())
    ChannelIn = Annotated[Union[models], Field(discriminator="channel")]  # type: ignore[valid-type]  # noqa: UP007

    def out(account: ChannelAccount, setup: dict[str, str] | None = None) -> s.ChannelOut:
        return s.ChannelOut(
            id=account.id, channel=account.channel, external_id=account.external_id, name=account.name,
            config=account.config or {}, enabled=account.enabled,
            has_credentials=account.credentials_encrypted is not None,
            webhook_url=service.webhook_url(registry, account, setup), created_at=account.created_at,
            setup=setup or {},
        )

    @router.get("/channels", response_model=s.ChannelsOut, summary="List channel accounts")
    def list_channels(who: Admin) -> s.ChannelsOut:
        """The tenant's accounts on each channel, with the webhook URL to give each provider. Credentials are
        never returned; `has_credentials` says whether some are stored."""
        def run(db: Session) -> s.ChannelsOut:
            rows = db.scalars(select(ChannelAccount).where(ChannelAccount.tenant_id == who.tenant_id)
                              .order_by(ChannelAccount.created_at, ChannelAccount.id))
            return s.ChannelsOut(channels=[out(a) for a in rows])
        return _in_transaction(services, who.tenant_id, run)

    @router.post("/channels", response_model=s.ChannelOut, status_code=201, summary="Add a channel account",
                 responses={409: {"description": "That provider account is already registered."}})
    def create_channel(body: Annotated[ChannelIn, Body()], who: Admin) -> s.ChannelOut:
        """Registers a provider account of any channel type (`channel` says which; each type has its own
        `credentials` and `config`, see the schemas). Credentials are encrypted at rest and never returned,
        except the secrets generated here (a verify token, a Telegram secret token, a USSD webhook token), shown
        once under `setup` for you to give the provider."""
        def run(db: Session) -> s.ChannelOut:
            request = body.model_dump(mode="json", exclude_unset=True)  # type: ignore[attr-defined]
            account, generated = service.create_account(db, registry, who.tenant_id, who.actor,
                                                        request | _secrets(body))
            return out(account, generated)
        return _in_transaction(services, who.tenant_id, run)

    @router.get("/channels/{account_id}", response_model=s.ChannelOut, summary="Get a channel account")
    def get_channel(account_id: str, who: Admin) -> s.ChannelOut:
        return _in_transaction(services, who.tenant_id,
                               lambda db: out(service.find_account(db, who.tenant_id, account_id)))

    @router.patch("/channels/{account_id}", response_model=s.ChannelOut, summary="Update a channel account")
    def patch_channel(account_id: str, body: s.ChannelPatch, who: Admin) -> s.ChannelOut:
        """Changes the fields sent, validated against the account's channel type: `config` replaces the stored
        config; `credentials` replaces the stored secrets (generated ones are kept unless given)."""
        changes = body.model_dump(exclude_unset=True)
        return _in_transaction(services, who.tenant_id, lambda db: out(service.update_account(
            db, registry, service.find_account(db, who.tenant_id, account_id), who.actor, changes)))

    @router.delete("/channels/{account_id}", status_code=204, summary="Delete a channel account")
    def delete_channel(account_id: str, who: Admin) -> Response:
        """The provider's webhooks stop being accepted. Conversations on it are kept."""
        def run(db: Session) -> None:
            account = service.find_account(db, who.tenant_id, account_id)
            from app.audit import record

            record(db, who.tenant_id, who.actor, "channel.deleted", "channel_account", account.id,
                   {"channel": account.channel, "external_id": account.external_id})
            db.delete(account)
            db.flush()
        _in_transaction(services, who.tenant_id, run)
        return Response(status_code=204)

    return router


def _secrets(body: Any) -> dict[str, Any]:
    """`model_dump(mode="json")` masks secrets; the service validates the request again, so it gets them plain,
    and only those that were sent (a generated one must be reported as generated)."""
    if "credentials" not in body.model_fields_set:
        return {}
    given = body.credentials.model_fields_set
    return {"credentials": {k: v for k, v in service.plain(body.credentials).items() if k in given}}
