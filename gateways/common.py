"""What the provider gateways share on the way in: account routing, normalised items, durable enqueue,
delivery-status updates. (The way out is `gateways.outbound`.)"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from fastapi import HTTPException
from fastapi.concurrency import run_in_threadpool
from sqlalchemy import select

from app import logs
from app.bootstrap import Container
from app.bus.base import Bus
from app.channels import ACCOUNT_ROUTING, Account
from app.contracts import Attachment
from app.conversations.service import Accepted, InboundRequest
from app.crypto import decrypt_json
from app.db import session_scope
from app.models import ChannelAccount, Contact, Message
from app.ratelimit import WEBHOOK_FAILURES_PER_ACCOUNT, WEBHOOK_FAILURES_PER_ENDPOINT, RateLimited
from gateways.payloads import Unreadable, as_payload, clean, clean_text

log = logging.getLogger("gateways")


def _width(column: Any) -> int:
    """The length of a String column: what Postgres refuses to store beyond."""
    return int(column.type.length)


@dataclass
class Inbound:
    """One customer message, normalised from any provider's payload."""

    provider_message_id: str
    contact_id: str
    kind: str = "text"
    text: str = ""
    attachments: list[Attachment] = field(default_factory=list)
    display_name: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class StatusUpdate:
    """A provider's delivery receipt for one of our outbound messages."""

    provider_id: str
    status: str  # sent | delivered | read | failed
    error: str | None = None


@dataclass
class Parsed:
    """What one webhook delivery holds for one provider account."""

    messages: list[Inbound] = field(default_factory=list)
    statuses: list[StatusUpdate] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # why each ignored event was ignored (for the log)
    dead: list[Unreadable] = field(default_factory=list)  # signed but unreadable: acknowledged, dead-lettered


# Webhooks arrive for the same few accounts over and over: routing them from a short-lived in-process cache
# saves a query and a decryption per request. A disabled account or rotated secret takes effect within the TTL.
ACCOUNT_CACHE_TTL_S = 5.0


@dataclass
class _Routing:
    """The routing caches, owned by the process's container (one per container, so tests never share one)."""

    accounts: dict[tuple[str, str], tuple[float, Account | None]] = field(default_factory=dict)
    channels: dict[str, tuple[float, list[Account]]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)


def _routing(services: Container) -> _Routing:
    return services.shared(ACCOUNT_ROUTING, _Routing)


EXTERNAL_ID_CHARS = _width(ChannelAccount.__table__.c.external_id)


def load_account(services: Container, channel: str, external_id: str) -> Account | None:
    known = _known_account(services, channel, external_id)
    return known[0] if known else _reload_account(services, channel, external_id)


async def load_account_async(services: Container, channel: str, external_id: str) -> Account | None:
    """`load_account` for the event loop: a cached account without leaving it, a database read in a worker
    thread."""
    known = _known_account(services, channel, external_id)
    return known[0] if known else await run_in_threadpool(_reload_account, services, channel, external_id)


def _known_account(services: Container, channel: str, external_id: str) -> tuple[Account | None] | None:
    """`(account or None,)` when no query is needed (a fresh cache entry, or an id no account can have)."""
    if len(external_id) > EXTERNAL_ID_CHARS or clean_text(external_id) != external_id:
        return (None,)  # no account has such an id (and Postgres refuses NUL in a query)
    routing = _routing(services)
    with routing.lock:
        cached = routing.accounts.get((channel, external_id))
    if cached is not None and time.monotonic() - cached[0] < ACCOUNT_CACHE_TTL_S:
        return (cached[1],)
    return None


def _reload_account(services: Container, channel: str, external_id: str) -> Account | None:
    # The cache is taken before the read: an admin change committed meanwhile drops this one (`forget_shared`), so
    # what was read goes into the orphaned cache, never into the fresh one as if it were current.
    routing = _routing(services)
    now = time.monotonic()
    account = _load_account(channel, external_id)
    with routing.lock:
        if len(routing.accounts) > 10_000:
            routing.accounts.clear()
        routing.accounts[(channel, external_id)] = (now, account)
    return account


def forget_accounts(services: Container) -> None:
    """Drop cached routing (after an account changes in this process, and between tests)."""
    routing = _routing(services)
    with routing.lock:
        routing.accounts.clear()
        routing.channels.clear()


def _load_account(channel: str, external_id: str) -> Account | None:
    with session_scope(cross_tenant="webhook account routing") as session:
        row = session.scalars(
            select(ChannelAccount).where(ChannelAccount.channel == channel, ChannelAccount.external_id == external_id)
        ).first()
        if row is None or not row.enabled:
            return None
        return _detached(row)


def accounts_of(services: Container, channel: str, max_age_s: float = 0.0) -> list[Account]:
    """The channel's enabled accounts, from the cache if it was read at most `max_age_s` ago (Meta checks every
    signature against them)."""
    now = time.monotonic()
    routing = _routing(services)
    with routing.lock:
        cached = routing.channels.get(channel)
    if cached is not None and now - cached[0] < max_age_s:
        return cached[1]
    accounts = _accounts_of(channel)
    with routing.lock:
        routing.channels[channel] = (now, accounts)
    return accounts


def _accounts_of(channel: str) -> list[Account]:
    with session_scope(cross_tenant="webhook account routing") as session:
        rows = session.scalars(
            select(ChannelAccount).where(ChannelAccount.channel == channel, ChannelAccount.enabled.is_(True))
        ).all()
        accounts = []
        for row in rows:
            try:
                accounts.append(_detached(row))
            except RuntimeError as exc:  # one account's unreadable credentials must not refuse every tenant's webhooks
                log.error("%s account %s (tenant %s) skipped: %s; save its credentials again", channel, row.id,
                          row.tenant_id, exc)
        return accounts


def _detached(row: ChannelAccount) -> Account:
    creds = decrypt_json(row.credentials_encrypted) if row.credentials_encrypted else {}
    return Account(row.id, row.tenant_id, row.channel, row.external_id, dict(row.config or {}), creds)


def require_account(services: Container, channel: str, external_id: str) -> Account:
    account = load_account(services, channel, external_id)
    if account is None:
        log.warning("%s webhook for unknown account %r: answered 404", channel, external_id)
        raise HTTPException(404, f"no {channel} channel account {external_id!r} is configured")
    return account


def secret(account: Account, name: str) -> str:
    """A credential the webhook check needs. Missing means misconfigured: fail closed (the request is refused)."""
    value = account.credentials.get(name)
    if not value:
        log.error("%s account %s has no %r credential: refusing its webhooks", account.channel, account.id, name)
        raise HTTPException(403, f"this {account.channel} account has no {name} configured; webhooks are refused")
    return str(value)


def webhook_refused(services: Container, source: Account | str, error: HTTPException) -> HTTPException:
    """The answer to a webhook whose signature or secret did not match, for an account (or, when the request
    names none before it is verified, a channel's endpoint): `error`, or 429 once its failures are over their
    limit. Only failures count and a valid webhook is checked before any limit, so a flood of forged requests
    never makes the provider's real messages wait. Blocking (Redis in scale-out)."""
    rule, identity = ((WEBHOOK_FAILURES_PER_ACCOUNT, source.id) if isinstance(source, Account)
                      else (WEBHOOK_FAILURES_PER_ENDPOINT, source))
    try:
        services.rate_limiter.hit(rule, identity)
    except RateLimited as exc:
        return exc.http()
    return error


@dataclass
class Outcome:
    accepted: int = 0
    duplicates: int = 0
    statuses: int = 0
    skipped: int = 0
    dead: int = 0

    def as_dict(self) -> dict[str, int]:
        return {"accepted": self.accepted, "duplicates": self.duplicates, "statuses": self.statuses,
                "skipped": self.skipped, "dead": self.dead}


# Topic of the dead-letter streams holding signed deliveries no gateway could read (`sb:webhook:{tenant}:dead`).
WEBHOOK_TOPIC = "webhook"
# Where those go when no single tenant can be named: a body naming no account, signed with an app secret that
# several tenants' accounts share. The operator's; tenant ids are uuid hex, so none is spelled like this.
UNATTRIBUTED = "unattributed"
ID_CHARS = _width(Message.__table__.c.provider_message_id)  # contact ids are as wide
NAME_CHARS = _width(Contact.__table__.c.display_name)


def _requests(account: Account, parsed: Parsed) -> list[InboundRequest]:
    """Every channel's parsed messages, cleaned (see `gateways.payloads`); one that still cannot be stored
    moves to `parsed.dead`."""
    out = []
    for item in parsed.messages:
        provider_id, contact = clean_text(item.provider_message_id), clean_text(item.contact_id)
        if not (0 < len(provider_id) <= ID_CHARS and 0 < len(contact) <= ID_CHARS):
            parsed.dead.append(Unreadable(
                f"message id and contact id must be 1 to {ID_CHARS} characters", as_payload({
                    "provider_message_id": item.provider_message_id, "contact_id": item.contact_id,
                    "text": item.text})))
            continue
        out.append(InboundRequest(
            tenant_id=account.tenant_id,
            channel=account.channel,
            contact_external_id=contact,
            provider_message_id=provider_id,
            text=clean_text(item.text),
            kind=item.kind,
            attachments=[Attachment.model_validate(clean(a.model_dump())) for a in item.attachments],
            channel_account_id=account.id,
            display_name=clean_text(item.display_name)[:NAME_CHARS] if isinstance(item.display_name, str) else None,
            meta=clean(item.meta),
        ))
    return out


def _count(outcome: Outcome, results: Iterable[Accepted]) -> None:
    for result in results:
        if result.duplicate:
            outcome.duplicates += 1
        else:
            outcome.accepted += 1


def _finish(bus: Bus, account: Account, parsed: Parsed, outcome: Outcome) -> None:
    for status in parsed.statuses:
        apply_status(account, StatusUpdate(clean_text(status.provider_id), status.status,
                                           clean_text(status.error) if status.error else None))
        outcome.statuses += 1
    for reason in parsed.skipped:
        log.info("%s webhook for account %s: skipped %s", account.channel, account.id, reason)
    outcome.skipped += len(parsed.skipped)
    record_dead(bus, account.tenant_id, account.channel, account.id, parsed.dead)
    outcome.dead += len(parsed.dead)


def record_dead(bus: Bus, tenant_id: str, channel: str, account_id: str, dead: list[Unreadable]) -> None:
    """Keep each unreadable item in the tenant's `webhook` dead-letter stream with its reason. Blocking."""
    for item in dead:
        bus.record_dead(WEBHOOK_TOPIC, tenant_id, {"channel": channel, "account_id": account_id,
                                                   "payload": item.payload}, item.reason)
    if dead:  # the reasons may quote the payload: they go to the dead-letter stream, not the log
        log.warning("%s webhook for account %s: %d unreadable item(s) acknowledged and dead-lettered (%s)",
                    channel, account_id or "-", len(dead), f"{WEBHOOK_TOPIC}:{tenant_id}:dead")


async def ingest_async(services: Container, account: Account, parsed: Parsed,
                       outcome: Outcome | None = None) -> Outcome:
    """Durably enqueue every message (deduplicated by provider id) through the one intake (app/intake.py) and apply
    every status; returns once everything is stored, so the caller may answer 2xx. The batch is awaited on the event
    loop; statuses and dead letters, which need their own round trips, go to a thread."""
    outcome = outcome or Outcome()
    requests = _requests(account, parsed)
    if requests:
        logs.bind(tenant_id=account.tenant_id)
    _count(outcome, await services.intake.accept_async(requests))
    if parsed.statuses or parsed.dead:
        await run_in_threadpool(_finish, services.bus, account, parsed, outcome)
    else:
        _finish(services.bus, account, parsed, outcome)
    return outcome


# Delivery states only move forward; "failed" can replace "sent" but never a confirmed delivery.
_STATUS_RANK = {"pending": 0, "sent": 1, "failed": 2, "delivered": 3, "read": 4}


def apply_status(account: Account, update: StatusUpdate) -> bool:
    """Move our outbound message's status forward. Unknown provider ids (messages sent outside Switchboard)
    are ignored. Returns whether a row changed."""
    with session_scope(tenant=account.tenant_id) as session:
        message = session.scalars(
            select(Message).where(
                Message.tenant_id == account.tenant_id,
                Message.channel == account.channel,
                Message.direction == "out",
                Message.provider_ref == update.provider_id,
            )
        ).first()
        if message is None:
            return False
        if _STATUS_RANK.get(update.status, -1) <= _STATUS_RANK.get(message.status, 0):
            return False
        message.status = update.status
        if update.error:
            message.error = update.error
        return True
