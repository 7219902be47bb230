"""The request path shared by WhatsApp and Instagram webhooks (both are Meta `entry[]` envelopes)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import PlainTextResponse

from gateways.common import (
    Account,
    Outcome,
    Parsed,
    accounts_of,
    ingest_async,
    log,
    require_account,
    secret,
    webhook_refused,
)
from gateways.meta.verify import handshake_ok, signature_valid

SIGNATURE_HEADER = "X-Hub-Signature-256"


Split = Callable[[dict[str, Any]], dict[str | None, Parsed]]


def meta_router(channel: str, objects: set[str], split: Split) -> APIRouter:
    """`GET/POST /webhooks/{channel}`: the subscription handshake and signed notifications of one Meta product."""
    router = APIRouter(prefix=f"/webhooks/{channel}", tags=[channel])

    @router.get("", response_class=PlainTextResponse)
    def verify_subscription(request: Request) -> PlainTextResponse:
        """Meta's subscription handshake: echoes `hub.challenge` when `hub.verify_token` matches an account's."""
        return handshake(channel, request)

    @router.post("")
    async def webhook(request: Request) -> dict[str, Any]:
        """Signed (X-Hub-Signature-256) notifications. 200 means every message in the body is stored and queued."""
        return await receive(channel, request, objects, split)

    return router


def handshake(channel: str, request: Request) -> PlainTextResponse:
    """Answer Meta's subscription check: echo `hub.challenge` when `hub.verify_token` matches an account."""
    q = request.query_params
    tokens = [str(a.credentials.get("verify_token") or "") for a in accounts_of(channel)]
    if not handshake_ok(q.get("hub.mode"), q.get("hub.verify_token"), tokens):
        raise HTTPException(403, "hub.verify_token does not match any configured account's verify token")
    return PlainTextResponse(q.get("hub.challenge", ""))


def load_body(raw: bytes) -> dict[str, Any]:
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise HTTPException(400, f"request body is not valid JSON: {exc}") from exc
    if not isinstance(body, dict) or not isinstance(body.get("entry"), list):
        raise HTTPException(400, "expected a Meta webhook object with an 'entry' list")
    return body


async def receive(
    channel: str,
    request: Request,
    objects: set[str],
    split: Split,
) -> dict[str, Any]:
    """Verify -> route -> normalise -> durable enqueue. `split` maps the body to {account external id: Parsed};
    the key None holds account-level events that name no messaging account (template or account updates):
    those are skipped once the signature matches any of the channel's accounts."""
    raw = await request.body()
    header = request.headers.get(SIGNATURE_HEADER)
    if not header:
        raise HTTPException(401, f"missing {SIGNATURE_HEADER} header")
    body = load_body(raw)
    if body.get("object") not in objects:
        raise HTTPException(400, f"unexpected object {body.get('object')!r}; this endpoint takes {sorted(objects)}")
    by_account = split(body)
    # Verification may query accounts (a thread); the enqueue is awaited on the loop, not parked on a thread.
    accounts, outcome = await run_in_threadpool(_verify, channel, raw, header, by_account)
    for account, parsed in accounts:
        await ingest_async(account, parsed, outcome)
    return outcome.as_dict()


def _verify(
    channel: str, raw: bytes, header: str, by_account: dict[str | None, Parsed]
) -> tuple[list[tuple[Account, Parsed]], Outcome]:
    """Route and check the signature for every account the body names; account-level events are counted as
    skipped. Raises the HTTP error to answer when anything fails."""
    unroutable = by_account.pop(None, None)
    accounts: list[tuple[Account, Parsed]] = [
        (require_account(channel, ext), p) for ext, p in by_account.items() if ext is not None
    ]
    if unroutable is not None or not accounts:
        candidates = [a for a in accounts_of(channel) if a.credentials.get("app_secret")]
        if not any(signature_valid(str(a.credentials["app_secret"]), raw, header) for a in candidates):
            log.warning("%s webhook naming no known account, signed by none of them: refused", channel)
            raise webhook_refused(channel, HTTPException(
                401, f"{SIGNATURE_HEADER} does not match any configured {channel} account"))
    # Every account named in the body must have signed it: one app secret per Meta app.
    for account, _ in accounts:
        if not signature_valid(secret(account, "app_secret"), raw, header):
            log.warning("%s webhook with a bad %s for account %s: refused", channel, SIGNATURE_HEADER, account.id)
            raise webhook_refused(account, HTTPException(401, f"{SIGNATURE_HEADER} does not match the body"))
    outcome = Outcome()
    if unroutable is not None:
        outcome.skipped += len(unroutable.skipped)
        for reason in unroutable.skipped:
            log.info("%s webhook: skipped %s", channel, reason)
    return accounts, outcome
