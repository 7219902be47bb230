"""Retention of raw PII (app/retention.py): past a tenant's `pii_retention_days`, messages, escalations and audit
data keep only the placeholders agents see; recent rows, tenants without the policy and other tenants' rows stay as
they are; a second run changes nothing; reveals return the purged text; the CLI prints counts per tenant."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.admin.conftest import TenantKeys
from tests.auth.conftest import add_person, audit, bearer, email, login
from tests.cli_support import run
from tests.review.helpers import Opened, open_escalation

PII_TEXT = "My email is jane.roe@example.com and my card is 4111 1111 1111 1111, where is my order?"
DRAFT = "We wrote to jane.roe@example.com [1]."
FINAL = "Call us back on +44 20 7946 0958, Jane."
DETAIL = "customer gave jane.roe@example.com"
MASKED_TEXT = "My email is [EMAIL] and my card is [CREDIT_CARD], where is my order?"


def _policy(client: TestClient, tenant: TenantKeys, days: int | None) -> None:
    response = client.patch("/admin/v1/tenant", headers=tenant.headers(),
                            json={"policies": {"pii_retention_days": days}})
    assert response.status_code == 200, response.text
    assert response.json()["policies"].get("pii_retention_days") == days


def _seed(tenant: TenantKeys, *, age_days: int) -> tuple[Opened, str]:
    """An escalation (customer message, draft, final text, detail) and an audit event with raw PII, `age_days`
    old."""
    from sqlalchemy import update

    from app.audit import record
    from app.db import session_scope
    from app.models import AuditEvent, Escalation, Message, utcnow

    opened = open_escalation(tenant.id, PII_TEXT, draft=DRAFT, publish=False)
    when = utcnow() - timedelta(days=age_days)
    with session_scope(cross_tenant="tests") as session:
        event = record(session, tenant.id, "bot", "message.answered", "message", opened.message_id,
                       {"text": PII_TEXT, "conversation_id": opened.conversation_id, "tokens": 12})
        session.flush()
        session.execute(update(Message).where(Message.id == opened.message_id).values(created_at=when))
        session.execute(update(Escalation).where(Escalation.id == opened.escalation_id)
                        .values(created_at=when, final_text=FINAL, detail=DETAIL))
        session.execute(update(AuditEvent).where(AuditEvent.id == event.id).values(created_at=when))
        return opened, event.id


def _rows(opened: Opened, event_id: str) -> dict[str, Any]:
    from app.db import session_scope
    from app.models import AuditEvent, Escalation, Message

    with session_scope(cross_tenant="tests") as session:
        message = session.get_one(Message, opened.message_id)
        escalation = session.get_one(Escalation, opened.escalation_id)
        event = session.get_one(AuditEvent, event_id)
        return {"text": message.text, "message_meta": dict(message.meta or {}), "draft": escalation.draft,
                "final_text": escalation.final_text, "detail": escalation.detail,
                "escalation_meta": dict(escalation.meta or {}), "audit": dict(event.data)}


RAW = {"text": PII_TEXT, "draft": DRAFT, "final_text": FINAL, "detail": DETAIL}


def _assert_raw(rows: dict[str, Any], opened: Opened) -> None:
    assert {k: rows[k] for k in RAW} == RAW
    assert "pii_purged_at" not in rows["message_meta"] and "pii_purged_at" not in rows["escalation_meta"]
    assert rows["audit"] == {"text": PII_TEXT, "conversation_id": opened.conversation_id, "tokens": 12}


def _assert_masked(rows: dict[str, Any], opened: Opened) -> None:
    assert rows["text"] == MASKED_TEXT
    assert rows["draft"] == "We wrote to [EMAIL] [1]." and rows["final_text"] == "Call us back on [PHONE], Jane."
    assert rows["detail"] == "customer gave [EMAIL]"
    assert "pii_purged_at" in rows["message_meta"] and "pii_purged_at" in rows["escalation_meta"]
    assert rows["audit"] == {"text": MASKED_TEXT, "conversation_id": opened.conversation_id, "tokens": 12}


def test_old_pii_is_masked_per_tenant_policy_only_once_and_reveals_show_the_purged_text(
    client: TestClient, tenant_a: TenantKeys, tenant_b: TenantKeys,
) -> None:
    from app.retention import purge

    _policy(client, tenant_a, 30)
    old_a = [_seed(tenant_a, age_days=40), _seed(tenant_a, age_days=31)]
    recent_a = _seed(tenant_a, age_days=29)
    old_b = _seed(tenant_b, age_days=400)

    # Only tenant A has the policy: B's year-old rows stay raw. batch=1: every row its own transaction.
    report = purge(batch=1)
    assert report == {tenant_a.slug: {"messages": 2, "escalations": 2, "audit_events": 2}}
    for opened, event_id in old_a:
        _assert_masked(_rows(opened, event_id), opened)
    _assert_raw(_rows(*recent_a), recent_a[0])
    _assert_raw(_rows(*old_b), old_b[0])
    [event] = audit(client, tenant_a, action="retention.pii_purged")
    assert event["data"]["messages"] == 2 and event["data"]["escalations"] == 2
    assert event["data"]["audit_events"] == 2 and event["data"]["days"] == 30
    assert "jane" not in json.dumps(event).lower()
    assert audit(client, tenant_b, action="retention.pii_purged") == []

    # Idempotent: a second run changes nothing and records nothing.
    before = [_rows(*row) for row in old_a]
    assert purge() == {tenant_a.slug: {"messages": 0, "escalations": 0, "audit_events": 0}}
    assert [_rows(*row) for row in old_a] == before
    assert len(audit(client, tenant_a, action="retention.pii_purged")) == 1

    # Nothing raw is left to reveal: the reveal returns the purged text (and is still audited).
    agent = bearer(login(client, add_person(tenant_a, email("dana"), "agent")))
    opened = old_a[0][0]
    raw = client.post(f"/review/v1/messages/{opened.message_id}/reveal", headers=agent)
    assert raw.status_code == 200 and raw.json()["text"] == MASKED_TEXT
    both = client.post(f"/review/v1/escalations/{opened.escalation_id}/reveal", headers=agent).json()
    assert both["customer_text"] == MASKED_TEXT and both["draft"] == "We wrote to [EMAIL] [1]."

    # Isolation: naming tenant A purges only A, even when B has a policy too; then a full run reaches B.
    _policy(client, tenant_b, 365)
    assert purge(tenant_slug=tenant_a.slug) == {tenant_a.slug: {"messages": 0, "escalations": 0, "audit_events": 0}}
    _assert_raw(_rows(*old_b), old_b[0])
    assert purge()[tenant_b.slug] == {"messages": 1, "escalations": 1, "audit_events": 1}
    _assert_masked(_rows(*old_b), old_b[0])
    _assert_raw(_rows(*recent_a), recent_a[0])


@pytest.mark.parametrize("days", [0, 5000, -1, "thirty"])
def test_the_policy_is_validated(client: TestClient, tenant_a: TenantKeys, days: Any) -> None:
    _policy(client, tenant_a, 7)
    response = client.patch("/admin/v1/tenant", headers=tenant_a.headers(),
                            json={"policies": {"pii_retention_days": days}})
    assert response.status_code == 422 and "pii_retention_days" in response.text
    assert client.get("/admin/v1/tenant", headers=tenant_a.headers()).json()["policies"]["pii_retention_days"] == 7
    _policy(client, tenant_a, None)  # null: kept again


@pytest.mark.parametrize("backend", ["sqlite"])  # the command runs embedded, on the test's SWITCHBOARD_HOME
def test_cli_purge_prints_counts_per_tenant(client: TestClient, tenant_a: TenantKeys, tenant_b: TenantKeys,
                                            sb_home: Path) -> None:
    _policy(client, tenant_a, 30)
    opened, event_id = _seed(tenant_a, age_days=60)
    result = run(sb_home, "retention", "purge", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {tenant_a.slug: {"messages": 1, "escalations": 1, "audit_events": 1}}
    _assert_masked(_rows(opened, event_id), opened)

    result = run(sb_home, "retention", "purge", "--tenant", tenant_b.slug, "--json")
    assert result.returncode == 0 and json.loads(result.stdout) == {
        tenant_b.slug: {"messages": 0, "escalations": 0, "audit_events": 0}}
    result = run(sb_home, "retention", "purge", "--tenant", "no-such-tenant", "--json")
    assert result.returncode == 1 and "no tenant 'no-such-tenant'" in result.stderr


def test_past_message_retention_the_texts_themselves_go_and_counts_stay(
    client: TestClient, tenant_a: TenantKeys, tenant_b: TenantKeys,
) -> None:
    from app.db import session_scope
    from app.models import Escalation, Message
    from app.retention import PURGED_TEXT, purge

    response = client.patch("/admin/v1/tenant", headers=tenant_a.headers(),
                            json={"policies": {"message_retention_days": 90}})
    assert response.status_code == 200 and response.json()["policies"]["message_retention_days"] == 90
    bad = client.patch("/admin/v1/tenant", headers=tenant_a.headers(),
                       json={"policies": {"message_retention_days": 0}})
    assert bad.status_code == 422
    old, old_event = _seed(tenant_a, age_days=91)
    recent, recent_event = _seed(tenant_a, age_days=30)
    other, other_event = _seed(tenant_b, age_days=400)

    # Each tenant named: the Postgres database is shared with other tests' tenants.
    assert purge(tenant_slug=tenant_a.slug) == {tenant_a.slug: {"messages": 1, "escalations": 1, "audit_events": 1}}
    assert purge(tenant_slug=tenant_b.slug) == {tenant_b.slug: {"messages": 0, "escalations": 0, "audit_events": 0}}
    rows = _rows(old, old_event)
    assert rows["text"] == "" and "text_purged_at" in rows["message_meta"]
    assert rows["draft"] is None and rows["final_text"] is None and rows["detail"] is None
    assert rows["audit"] == {"text": PURGED_TEXT, "conversation_id": old.conversation_id, "tokens": 12}
    with session_scope(cross_tenant="tests") as session:
        escalation = session.get_one(Escalation, old.escalation_id)
        assert escalation.passages is None and escalation.reason and escalation.status  # what happened stays
        assert session.get_one(Message, old.message_id).status  # the message row stays, counted
    _assert_raw(_rows(recent, recent_event), recent)  # younger than the policy
    _assert_raw(_rows(other, other_event), other)  # another tenant, without the policy
    assert purge(tenant_slug=tenant_a.slug) == {
        tenant_a.slug: {"messages": 0, "escalations": 0, "audit_events": 0}}  # nothing left
