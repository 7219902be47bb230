"""Retention of raw PII: a tenant's `pii_retention_days` policy says how long the structured PII customers gave
(emails, phone numbers, cards, IBANs, SSNs, IP addresses) is kept as written. Past it, `purge` replaces it in
place with the placeholders agents already see (`[EMAIL]`, `[PHONE]`... from `pii.redact_pii`), in:

- messages' `text` (marked `meta["pii_purged_at"]`);
- escalations' `detail`, `draft` and `final_text` (marked the same way on their `meta`);
- audit events' `data` (every string value in it but row ids; the audit log's only update).

A tenant's `message_retention_days` policy goes further: past it, the text itself goes. Messages' `text` becomes
empty (`meta["text_purged_at"]`), escalations lose `detail`, `draft`, `final_text` and the passages shown to
agents, and audit events' longer strings become `[purged]`; counts, statuses, times and ids stay, so analytics
still add up. Conversations and contacts stay until erased (app/contacts/privacy.py).

A run records one audit event `retention.pii_purged` per tenant whose rows it changed, with the counts and the
cutoff (never a value). It is idempotent: masked text has nothing left to mask, so a second run changes nothing
and records nothing. Each tenant is purged apart, in batches of `BATCH` rows per transaction, every query
scoped to that tenant. After the purge a reveal (app/review/queue.py) shows the purged text: nothing raw is
left to reveal.

It runs every `RETENTION_INTERVAL_S` in the processes that run the background loops (app/workers_runtime.py)
and on demand: `switchboard retention purge [--tenant SLUG] [--json]`.
"""

from __future__ import annotations

import logging
import re
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from app.assistant.pii import redact_pii
from app.audit import record
from app.db import session_scope
from app.models import AuditEvent, Escalation, Message, Tenant, utcnow

log = logging.getLogger(__name__)

POLICY = "pii_retention_days"
TEXT_POLICY = "message_retention_days"
PURGED_TEXT = "[purged]"
KEPT_AUDIT_CHARS = 64  # audit strings up to this long are reasons, names and ids; longer ones are text
PURGED_ACTION = "retention.pii_purged"
BATCH = 500
ROW_ID = re.compile(r"[0-9a-f]{32}")  # our ids (app/models/base.py): a run of digits in one can read as a phone


@dataclass
class Purged:
    messages: int = 0
    escalations: int = 0
    audit_events: int = 0

    @property
    def total(self) -> int:
        return self.messages + self.escalations + self.audit_events


def _mask(text: str | None) -> str | None:
    return None if not text else redact_pii(text).text


def _mask_data(value: Any) -> Any:
    """`value` (an audit event's JSON data) with every string masked."""
    if isinstance(value, str):
        return value if ROW_ID.fullmatch(value) else redact_pii(value).text
    if isinstance(value, dict):
        return {k: _mask_data(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_mask_data(v) for v in value]
    return value


def retention_days(policies: dict[str, Any] | None, policy: str = POLICY) -> int | None:
    days = (policies or {}).get(policy)
    return days if isinstance(days, int) and not isinstance(days, bool) and days > 0 else None


def _drop_text(value: Any) -> Any:
    if isinstance(value, str):
        return PURGED_TEXT if len(value) > KEPT_AUDIT_CHARS and not ROW_ID.fullmatch(value) else value
    if isinstance(value, dict):
        return {k: _drop_text(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_drop_text(v) for v in value]
    return value


def _purge_texts(sessions: sessionmaker[Session] | None, tenant_id: str, cutoff: datetime, stamp: str,
                 batch: int, done: Purged) -> None:
    for _session, messages in _batches(sessions, Message, tenant_id, cutoff, batch):
        for message in messages:
            if message.text:
                message.text = ""
                message.meta = {k: v for k, v in (message.meta or {}).items() if k != "attachments"} | {
                    "text_purged_at": stamp}
                done.messages += 1
    for _session, escalations in _batches(sessions, Escalation, tenant_id, cutoff, batch):
        for escalation in escalations:
            if escalation.detail or escalation.draft or escalation.final_text or escalation.passages:
                escalation.detail = escalation.draft = escalation.final_text = None
                escalation.passages = None
                escalation.meta = {"text_purged_at": stamp}
                done.escalations += 1
    for _session, events in _batches(sessions, AuditEvent, tenant_id, cutoff, batch):
        for event in events:
            kept = _drop_text(event.data or {})
            if kept != (event.data or {}):
                event.data = kept
                done.audit_events += 1


def _batches(sessions: sessionmaker[Session] | None, model: Any, tenant_id: str, cutoff: datetime,
             batch: int) -> Any:
    """Yield (session, rows) for the tenant's rows of `model` created before `cutoff`, `batch` at a time in id
    order, each batch in its own transaction (committed when the caller moves on)."""
    last = ""
    while True:
        with session_scope(tenant=tenant_id, sessions=sessions) as session:
            rows = session.scalars(
                select(model)
                .where(model.tenant_id == tenant_id, model.created_at < cutoff, model.id > last)
                .order_by(model.id)
                .limit(batch)
            ).all()
            if not rows:
                return
            yield session, rows
            last = rows[-1].id
        if len(rows) < batch:
            return


def purge_tenant(tenant_id: str, days: int | None, *, text_days: int | None = None, now: datetime | None = None,
                 batch: int = BATCH, sessions: sessionmaker[Session] | None = None) -> Purged:
    """Empty the texts of the tenant's messages, escalations and audit data older than `text_days`, and mask
    the structured PII of those older than `days` (either may be None: not that step)."""
    now = now or utcnow()
    stamp = now.isoformat()
    done = Purged()
    if text_days is not None:
        _purge_texts(sessions, tenant_id, now - timedelta(days=text_days), stamp, batch, done)
    if days is None:
        if done.total:
            with session_scope(tenant=tenant_id, sessions=sessions) as session:
                record(session, tenant_id, "system", PURGED_ACTION, "tenant", tenant_id,
                       {**asdict(done), "text_days": text_days})
        return done
    cutoff = now - timedelta(days=days)
    for _session, messages in _batches(sessions, Message, tenant_id, cutoff, batch):
        for message in messages:
            masked = _mask(message.text)
            if masked is not None and masked != message.text:
                message.text = masked
                message.meta = {**(message.meta or {}), "pii_purged_at": stamp}
                done.messages += 1
    for _session, escalations in _batches(sessions, Escalation, tenant_id, cutoff, batch):
        for escalation in escalations:
            changed = False
            for name in ("detail", "draft", "final_text"):
                value = getattr(escalation, name)
                masked = _mask(value)
                if masked != value and value:
                    setattr(escalation, name, masked)
                    changed = True
            if changed:
                escalation.meta = {**(escalation.meta or {}), "pii_purged_at": stamp}
                done.escalations += 1
    for _session, events in _batches(sessions, AuditEvent, tenant_id, cutoff, batch):
        for event in events:
            if event.action == PURGED_ACTION:
                continue
            masked_data = _mask_data(event.data or {})
            if masked_data != (event.data or {}):
                event.data = masked_data
                done.audit_events += 1
    if done.total:
        with session_scope(tenant=tenant_id, sessions=sessions) as session:
            record(session, tenant_id, "system", PURGED_ACTION, "tenant", tenant_id,
                   {**asdict(done), "days": days, "before": cutoff.isoformat(), "text_days": text_days})
    return done


def purge(*, tenant_slug: str | None = None, now: datetime | None = None, batch: int = BATCH,
          sessions: sessionmaker[Session] | None = None) -> dict[str, dict[str, int]]:
    """Purge every tenant with a `pii_retention_days` policy (or only `tenant_slug`, which must exist): counts
    of rows masked, by tenant slug. A tenant without the policy is left alone (and reported only when named)."""
    with session_scope(cross_tenant="retention sweep over all tenants", sessions=sessions) as session:
        query = select(Tenant.id, Tenant.slug, Tenant.policies).order_by(Tenant.slug)
        if tenant_slug is not None:
            query = query.where(Tenant.slug == tenant_slug)
        tenants = session.execute(query).all()
    if tenant_slug is not None and not tenants:
        raise LookupError(f"no tenant {tenant_slug!r}")
    report: dict[str, dict[str, int]] = {}
    for tenant_id, slug, policies in tenants:
        days, text_days = retention_days(policies), retention_days(policies, TEXT_POLICY)
        if days is None and text_days is None:
            if tenant_slug is not None:
                report[slug] = asdict(Purged())
            continue
        done = purge_tenant(tenant_id, days, text_days=text_days, now=now, batch=batch, sessions=sessions)
        report[slug] = asdict(done)
        if done.total:
            log.info("retention: purged %d row(s) of tenant %s (PII after %s days, texts after %s days)",
                     done.total, slug, days, text_days)
    return report
