"""Admin API, notifications (`/admin/v1/webhook`): the URL that hears of every new escalation of the tenant.

Deliveries are signed with a secret the server generates, shown once when the URL is set (each PUT makes a new
one); see app/review/notify.py and docs/console.md for the payload, the headers and how to verify them. The URL
must reach a public address: loopback, private and link-local addresses are refused (app/netguard.py)."""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter, HTTPException, Response
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.admin.request_limit import LIMITED
from app.audit import record
from app.auth import Admin
from app.db import session_scope
from app.models import TenantWebhook
from app.review.notify import set_webhook

router = APIRouter(prefix="/admin/v1", tags=["admin: notifications"], dependencies=LIMITED)


class WebhookIn(BaseModel):
    url: str = Field(min_length=1, max_length=2000, description="https://... on a public address.")

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"url": "https://hooks.example.com/switchboard"},
    ]})


class WebhookOut(BaseModel):
    url: str
    updated_at: datetime


class NewWebhookOut(WebhookOut):
    secret: str = Field(description="Signs every delivery (X-Switchboard-Signature). Shown once: keep it.")


def _get(session: Session, tenant_id: str) -> TenantWebhook | None:
    return session.scalars(select(TenantWebhook).where(TenantWebhook.tenant_id == tenant_id)).first()


@router.get("/webhook", response_model=WebhookOut, summary="Get the escalation webhook",
            responses={404: {"description": "No webhook is set."}})
def get_webhook(who: Admin) -> WebhookOut:
    with session_scope(tenant=who.tenant_id) as session:
        hook = _get(session, who.tenant_id)
        if hook is None:
            raise HTTPException(404, "no webhook is set: PUT /admin/v1/webhook with {\"url\": ...}")
        return WebhookOut(url=hook.url, updated_at=hook.updated_at)


@router.put("/webhook", response_model=NewWebhookOut, summary="Set the escalation webhook",
            responses={422: {"description": "Not an http(s) URL, or it points at a private, loopback or link-local "
                                            "address."}})
def put_webhook(body: WebhookIn, who: Admin) -> NewWebhookOut:
    """Every new escalation of the tenant is POSTed to `url`, signed. Escalations opened before this call are not
    sent. Each call makes a new secret (the old one stops signing at once), returned here only."""
    url = body.url.strip()
    with session_scope(tenant=who.tenant_id) as session:
        try:
            hook, secret = set_webhook(session, who.tenant_id, url)
        except ValueError as exc:
            raise HTTPException(422, f"url: {exc}") from exc
        record(session, who.tenant_id, who.actor, "webhook.set", "tenant", who.tenant_id, {"url": url})
        return NewWebhookOut(url=hook.url, updated_at=hook.updated_at, secret=secret)


@router.delete("/webhook", status_code=204, summary="Remove the escalation webhook")
def delete_webhook(who: Admin) -> Response:
    """Nothing more is sent (a delivery being retried stops when the bus next hands it out). Idempotent."""
    with session_scope(tenant=who.tenant_id) as session:
        hook = _get(session, who.tenant_id)
        if hook is not None:
            session.delete(hook)
            record(session, who.tenant_id, who.actor, "webhook.removed", "tenant", who.tenant_id, {"url": hook.url})
    return Response(status_code=204)
