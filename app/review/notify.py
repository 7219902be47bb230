"""Telling people that an escalation opened: every open review console of the tenant, and the tenant's webhook.

Both read the tenant's events stream (`sb:events:{tenant}`, where the orchestrator publishes `EscalationOpened`
and the review API `EscalationDecided`), each as a consumer group of its own, so a slow webhook receiver never
delays the consoles:

- `console` group: wakes the tenant's consoles through the push hub (app/conversations/push.py: in-process
  embedded, Redis pub/sub in scale-out) under the key `(tenant id, CONSOLE_KEY)`. A wake-up carries nothing;
  each woken console stream re-reads its own tenant's queue (app/review/events.py), so a wake-up can never show
  one tenant's escalation to another, and a lost one only delays until the stream's next re-read.
- `webhooks` group: POSTs `escalation.opened` to the URL the tenant set (`PUT /admin/v1/webhook`), signed with
  the tenant's secret. At least once: a failed delivery is retried at once with back-off, then left pending on
  the bus, which hands it out again (`BUS_CLAIM_IDLE_MS`) until `BUS_MAX_DELIVERIES`, then dead-letters it with
  the last reason. A receiver's 4xx (but 408 and 429) is final and dead-lettered at once.

Signature (like Stripe's and Slack's): `X-Switchboard-Signature: v1=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>`
with `X-Switchboard-Timestamp: <unix seconds>`; `X-Switchboard-Delivery` is the same on every retry of one event,
for the receiver to drop duplicates. `verify_signature` is the receiver's side.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

import httpx
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.bus.base import Delivery, PermanentFailure
from app.config import get_settings
from app.contracts import EscalationOpened, event_of
from app.conversations.push import Push
from app.crypto import decrypt_json, encrypt_json
from app.db import session_scope
from app.models import Conversation, Escalation, Tenant, TenantWebhook, utcnow
from app.netguard import blocked_reason, check_url, guarded_transport

log = logging.getLogger(__name__)

CONSOLE_KEY = "@console"  # the push hub's key for a tenant's consoles; visitors' contact ids never start with "@"
CONSOLE_GROUP = "console"
WEBHOOK_GROUP = "webhooks"
SIGNATURE_HEADER = "X-Switchboard-Signature"
TIMESTAMP_HEADER = "X-Switchboard-Timestamp"
DELIVERY_HEADER = "X-Switchboard-Delivery"
EVENT_HEADER = "X-Switchboard-Event"
SIGNATURE_TOLERANCE_S = 300


# --- consoles -----------------------------------------------------------------------------------------------


def wake_consoles(push: Push, tenant_id: str) -> None:
    """Make the tenant's open consoles re-read their queue. Call after the commit; never raises."""
    push.publish(tenant_id, CONSOLE_KEY)


@dataclass(frozen=True)
class ConsoleWaker:
    """`console` group: any escalation event (opened, decided, of any version) wakes the tenant's consoles.
    Other events on the stream (ingestion progress) are not for consoles."""

    push: Push

    def handle(self, delivery: Delivery) -> None:
        if delivery.fields.get("type", "").startswith("Escalation"):
            wake_consoles(self.push, delivery.tenant_id)


# --- webhook: the tenant's setting --------------------------------------------------------------------------


def new_secret() -> str:
    return "whsec_" + secrets.token_urlsafe(32)


def set_webhook(session: Session, tenant_id: str, url: str) -> tuple[TenantWebhook, str]:
    """Set (or replace) the tenant's webhook URL with a new secret, returned once. Raises ValueError for a URL
    tenants may not use."""
    if problem := check_url(url):
        raise ValueError(problem)
    secret = new_secret()
    hook = session.scalars(select(TenantWebhook).where(TenantWebhook.tenant_id == tenant_id)).first()
    if hook is None:
        hook = TenantWebhook(tenant_id=tenant_id)
        session.add(hook)
    hook.url = url
    hook.secret_encrypted = encrypt_json({"secret": secret})
    hook.updated_at = utcnow()
    session.flush()
    return hook, secret


# --- webhook: signing ---------------------------------------------------------------------------------------


def sign(secret: str, timestamp: int, body: bytes) -> str:
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"v1={digest}"


def verify_signature(secret: str, timestamp: str, body: bytes, signature: str, *,
                     tolerance_s: int = SIGNATURE_TOLERANCE_S, now: float | None = None) -> bool:
    """The receiver's check: the signature matches the body and the timestamp, and the timestamp is recent
    (a replayed request older than `tolerance_s` fails)."""
    if not timestamp.isascii() or not timestamp.isdigit():
        return False
    if abs((time.time() if now is None else now) - int(timestamp)) > tolerance_s:
        return False
    return hmac.compare_digest(sign(secret, int(timestamp), body).encode(), signature.strip().encode())


# --- webhook: delivery --------------------------------------------------------------------------------------


class WebhookFailed(Exception):
    """This attempt failed in a way a later one may not (network, timeout, 5xx, 408, 429)."""


@dataclass(frozen=True)
class Outgoing:
    url: str
    secret: str
    body: bytes
    delivery_id: str


class WebhookSender:
    """The `webhooks` group's handler. `attempts` tries per delivery, `backoff_s` doubling between them."""

    def __init__(self, *, attempts: int = 3, backoff_s: float = 1.0, timeout_s: float = 10.0,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.attempts = attempts
        self.backoff_s = backoff_s
        self.timeout_s = timeout_s
        self.sleep = sleep

    def handle(self, delivery: Delivery) -> None:
        event = event_of(delivery, EscalationOpened)
        if event is not None and (outgoing := self._prepare(event)) is not None:
            self.deliver(outgoing)

    def _prepare(self, event: EscalationOpened) -> Outgoing | None:
        with session_scope(tenant=event.tenant_id) as session:
            hook = session.scalars(select(TenantWebhook).where(TenantWebhook.tenant_id == event.tenant_id)).first()
            if hook is None:
                return None
            row = session.execute(
                select(Escalation, Conversation.channel, Tenant.slug)
                .join(Conversation, Conversation.id == Escalation.conversation_id)
                .join(Tenant, Tenant.id == Escalation.tenant_id)
                .where(Escalation.id == event.escalation_id, Escalation.tenant_id == event.tenant_id)
            ).first()
            if row is None:  # the tenant or the conversation was deleted meanwhile
                return None
            escalation, channel, slug = row
            if escalation.created_at < hook.updated_at:
                return None  # opened before this URL was set: not news to it (a new group reads the stream's past)
            body = payload(escalation, channel, slug)
            secret = str(decrypt_json(hook.secret_encrypted)["secret"])
            return Outgoing(hook.url, secret, body, escalation.id)

    def deliver(self, outgoing: Outgoing) -> None:
        delay = self.backoff_s
        last = ""
        for attempt in range(1, self.attempts + 1):
            try:
                self._post(outgoing)
                return
            except WebhookFailed as exc:
                last = str(exc)
                log.warning("webhook delivery %s, attempt %d of %d: %s", outgoing.delivery_id, attempt,
                            self.attempts, last)
            if attempt < self.attempts:
                self.sleep(delay)
                delay *= 2
        raise WebhookFailed(last)  # left pending: the bus hands it out again later

    def _post(self, outgoing: Outgoing) -> None:
        timestamp = int(time.time())
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "Switchboard-Webhook/1",
            EVENT_HEADER: "escalation.opened",
            DELIVERY_HEADER: outgoing.delivery_id,
            TIMESTAMP_HEADER: str(timestamp),
            SIGNATURE_HEADER: sign(outgoing.secret, timestamp, outgoing.body),
        }
        try:
            with httpx.Client(transport=guarded_transport(), timeout=self.timeout_s, trust_env=False,
                              follow_redirects=False) as client:
                response = client.post(outgoing.url, content=outgoing.body, headers=headers)
        except httpx.HTTPError as exc:
            if reason := blocked_reason(exc):
                raise PermanentFailure(f"webhook URL refused: {reason}") from exc
            raise WebhookFailed(f"{exc.__class__.__name__}: {exc}") from exc
        if response.is_success:
            return
        status = response.status_code
        if status in (408, 429) or status >= 500:
            raise WebhookFailed(f"the receiver answered {status}")
        raise PermanentFailure(f"the webhook receiver answered {status} (not retried: fix the receiver or the URL "
                               "with PUT /admin/v1/webhook)")


def payload(escalation: Escalation, channel: str, tenant_slug: str) -> bytes:
    """What the receiver gets: no message text (customer PII stays in the console, behind a login)."""
    console = get_settings().public_base_url.rstrip("/") + f"/console#escalation={escalation.id}"
    return json.dumps({
        "type": "escalation.opened",
        "tenant": tenant_slug,
        "escalation": {
            "id": escalation.id,
            "conversation_id": escalation.conversation_id,
            "reason": escalation.reason,
            "channel": channel,
            "created_at": escalation.created_at.isoformat(),
            "console_url": console,
        },
    }, separators=(",", ":")).encode()
