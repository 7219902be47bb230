"""The request path shared by WhatsApp and Instagram webhooks (both are Meta `entry[]` envelopes)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import PlainTextResponse

from app.api.services import services_of
from app.bootstrap import Container
from gateways.common import (
    ACCOUNT_CACHE_TTL_S,
    UNATTRIBUTED,
    Account,
    Outcome,
    Parsed,
    accounts_of,
    ingest_async,
    log,
    record_dead,
    require_account,
    secret,
    webhook_refused,
)
from gateways.meta.verify import handshake_ok, signature_valid
from gateways.payloads import Malformed, json_object, reading

SIGNATURE_HEADER = "X-Hub-Signature-256"


Split = Callable[[dict[str, Any]], dict[str | None, Parsed]]


def meta_router(channel: str, objects: set[str], split: Split) -> APIRouter:
    """`GET/POST /webhooks/{channel}`: the subscription handshake and signed notifications of one Meta product."""
    router = APIRouter(prefix=f"/webhooks/{channel}", tags=[channel])

    @router.get("", response_class=PlainTextResponse)
    def verify_subscription(request: Request) -> PlainTextResponse:
        """Meta's subscription handshake: echoes `hub.challenge` when `hub.verify_token` matches an account's."""
        return handshake(services_of(request), channel, request)

    @router.post("")
    async def webhook(request: Request) -> dict[str, Any]:
        """Signed (X-Hub-Signature-256) notifications. 200 means every message in the body is stored and queued."""
        return await receive(channel, request, objects, split)

    return router


def handshake(services: Container, channel: str, request: Request) -> PlainTextResponse:
    """Answer Meta's subscription check: echo `hub.challenge` when `hub.verify_token` matches an account."""
    q = request.query_params
    tokens = [str(a.credentials.get("verify_token") or "") for a in accounts_of(services, channel)]
    if not handshake_ok(q.get("hub.mode"), q.get("hub.verify_token"), tokens):
        raise HTTPException(403, "hub.verify_token does not match any configured account's verify token")
    return PlainTextResponse(q.get("hub.challenge", ""))


def load_body(raw: bytes, objects: set[str]) -> dict[str, Any]:
    """The (verified) body as a Meta webhook object for one of `objects`; `Malformed` saying why when it is not."""
    body = json_object(raw, "a Meta webhook object")
    if body.get("object") not in objects:
        raise Malformed(f"unexpected object {body.get('object')!r}; this endpoint takes {sorted(objects)}")
    if not isinstance(body.get("entry"), list):
        raise Malformed("a Meta webhook object needs an 'entry' list")
    return body


async def receive(
    channel: str,
    request: Request,
    objects: set[str],
    split: Split,
) -> dict[str, Any]:
    """Verify -> parse -> route -> durable enqueue. The signature is checked on the raw bytes before anything
    reads them, so an unsigned or forged body is refused (401) whatever it holds. A signed body that cannot be
    read is acknowledged, since Meta retries anything but a 200 for days, and dead-lettered with the reason.

    `split` maps the body to {account external id: Parsed}; the key None holds what names no messaging account:
    account-level events (template or account updates: skipped) and items too broken to name one (dead)."""
    services = services_of(request)
    raw = await request.body()
    header = request.headers.get(SIGNATURE_HEADER)
    if not header:
        raise HTTPException(401, f"missing {SIGNATURE_HEADER} header")
    # Checking and routing may query accounts (a thread); the enqueue is awaited on the loop, not parked on a thread.
    signers = await run_in_threadpool(signed_by, services, channel, raw, header)
    if not signers:
        log.warning("%s webhook signed by none of the channel's accounts: refused unread", channel)
        raise await run_in_threadpool(webhook_refused, services, channel, HTTPException(
            401, f"{SIGNATURE_HEADER} does not match the body for any configured {channel} account"))
    unreadable = Parsed()
    by_account: dict[str | None, Parsed] = {None: unreadable}
    with reading(unreadable.dead, "the webhook body", raw):
        by_account = split(load_body(raw, objects))
    accounts, outcome = await run_in_threadpool(_route, services, channel, signers, by_account)
    for account, parsed in accounts:
        await ingest_async(services, account, parsed, outcome)
    return outcome.as_dict()


def signed_by(services: Container, channel: str, raw: bytes, header: str) -> list[Account]:
    """The channel's accounts whose app secret signed `raw` (one HMAC per distinct secret). From the routing
    cache first; when nothing matches, from the database, in case the signer was connected a moment ago."""
    for max_age_s in (ACCOUNT_CACHE_TTL_S, 0.0):
        accounts = [a for a in accounts_of(services, channel, max_age_s) if a.credentials.get("app_secret")]
        valid = {s for s in {str(a.credentials["app_secret"]) for a in accounts} if signature_valid(s, raw, header)}
        if valid:
            return [a for a in accounts if str(a.credentials["app_secret"]) in valid]
    return []


def _route(
    services: Container, channel: str, signers: list[Account], by_account: dict[str | None, Parsed]
) -> tuple[list[tuple[Account, Parsed]], Outcome]:
    """Every account the body names must be configured and among the signers (one app secret per Meta app);
    what names no account is counted as skipped, or dead-lettered: in the signers' tenant, or with
    `UNATTRIBUTED` when the signing secret is shared by several tenants. Raises the HTTP error to answer."""
    unroutable = by_account.pop(None, None)
    signer_ids = {a.id for a in signers}
    accounts: list[tuple[Account, Parsed]] = []
    for ext, parsed in by_account.items():
        if ext is None:
            continue
        account = require_account(services, channel, ext)
        secret(account, "app_secret")  # 403 for an account that has none: it can verify nothing
        if account.id not in signer_ids:
            log.warning("%s webhook with a bad %s for account %s: refused", channel, SIGNATURE_HEADER, account.id)
            raise webhook_refused(services, account, HTTPException(401, f"{SIGNATURE_HEADER} does not match the body"))
        accounts.append((account, parsed))
    outcome = Outcome()
    if unroutable is not None:
        outcome.skipped += len(unroutable.skipped)
        for reason in unroutable.skipped:
            log.info("%s webhook: skipped %s", channel, reason)
        if unroutable.dead:
            tenants = {a.tenant_id for a in signers}
            tenant = tenants.pop() if len(tenants) == 1 else UNATTRIBUTED
            record_dead(services.bus, tenant, channel, signers[0].id if len(signers) == 1 else "", unroutable.dead)
            outcome.dead += len(unroutable.dead)
    return accounts, outcome
