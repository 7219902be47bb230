"""Plans, usage and the admin API's own limit: `GET /admin/v1/usage` recounts stored rows per month and per tenant,
the operator assigns plans and overrides (`switchboard tenant plan`), and an admin over its plan's request limit
gets 429 with Retry-After and a message naming the limit."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, date, datetime

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from app import operations
from app.bootstrap import container
from app.db import session_scope
from app.models import LLMCall, Message, new_id
from tests.admin.conftest import TenantKeys, seed_conversation

NOW = datetime.now(UTC)
LAST_MONTH = datetime(NOW.year - (NOW.month == 1), (NOW.month - 2) % 12 + 1, 15, 12, tzinfo=UTC)


def _inbound(tenant_id: str, conversation_id: str, n: int, at: datetime, status: str = "answered") -> None:
    with session_scope(cross_tenant="tests") as session:
        for _ in range(n):
            session.add(Message(tenant_id=tenant_id, conversation_id=conversation_id, channel="webchat",
                                direction="in", provider_message_id=uuid.uuid4().hex, text="q", status=status,
                                created_at=at))


def _calls(tenant_id: str, at: datetime, tokens: list[tuple[int, int]]) -> None:
    with session_scope(cross_tenant="tests") as session:
        for prompt, completion in tokens:
            session.add(LLMCall(id=new_id(), created_at=at, day=at.date(), tenant_id=tenant_id, provider="p",
                                model="m", outcome="ok", prompt_tokens=prompt, completion_tokens=completion))


def _usage(client: TestClient, tenant: TenantKeys, **params: str) -> dict:
    response = client.get("/admin/v1/usage", headers=tenant.headers(), params=params)
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def test_usage_is_recounted_from_rows_per_month_and_never_counts_another_tenant(
        client: TestClient, tenant_a: TenantKeys, tenant_b: TenantKeys) -> None:
    operations.set_plan(container(), tenant_a.slug, "free", {"messages_per_month": 10})
    conv_a = seed_conversation(tenant_a.id, n_turns=3)  # 3 inbound (and 3 outbound, not counted) this month
    _inbound(tenant_a.id, conv_a, 2, NOW, status="escalated")
    _inbound(tenant_a.id, conv_a, 4, LAST_MONTH)
    _calls(tenant_a.id, NOW, [(100, 20), (50, 5)])
    _calls(tenant_a.id, LAST_MONTH, [(1000, 1)])
    conv_b = seed_conversation(tenant_b.id, contact="v_bob", n_turns=7)
    _calls(tenant_b.id, NOW, [(9000, 900)])

    body = _usage(client, tenant_a)
    assert body["month"] == f"{NOW.year:04d}-{NOW.month:02d}"
    assert body["period_start"].startswith(f"{NOW.year:04d}-{NOW.month:02d}-01T00:00:00")
    assert body["plan"]["name"] == "free" and body["plan"]["overrides"] == ["messages_per_month"]
    assert body["messages"] == {"used": 5, "allowance": 10, "remaining": 5}
    assert body["llm_tokens"] == {"used": 175, "allowance": 500_000, "remaining": 500_000 - 175}
    assert body["over_quota"] == "escalate"

    previous = _usage(client, tenant_a, month=f"{LAST_MONTH.year:04d}-{LAST_MONTH.month:02d}")
    assert previous["messages"]["used"] == 4 and previous["llm_tokens"]["used"] == 1001
    assert previous["period_end"].startswith(body["period_start"][:10])

    other = _usage(client, tenant_b)  # B: only its own rows, on the default (unlimited) plan
    assert other["plan"]["name"] == "unlimited"
    assert other["messages"] == {"used": 7, "allowance": None, "remaining": None}
    assert other["llm_tokens"]["used"] == 9900
    assert conv_b != conv_a

    _inbound(tenant_a.id, conv_a, 8, NOW)  # past the allowance: remaining stops at 0
    assert _usage(client, tenant_a)["messages"] == {"used": 13, "allowance": 10, "remaining": 0}


def test_usage_rejects_a_malformed_month_with_the_form_to_use(client: TestClient, tenant_a: TenantKeys) -> None:
    for bad in ("2026-13", "11-2026", "now"):
        response = client.get("/admin/v1/usage", headers=tenant_a.headers(), params={"month": bad})
        assert response.status_code == 422 and "YYYY-MM" in response.text
    assert client.get("/admin/v1/usage", headers=tenant_a.headers("agent")).status_code == 403


def test_set_plan_merges_overrides_and_refuses_unknown_plans_and_figures(client: TestClient,
                                                                         tenant_a: TenantKeys) -> None:
    result = operations.set_plan(container(), tenant_a.slug, "standard", {"messages_per_month": 50})
    assert result["plan"]["name"] == "standard" and result["plan"]["messages_per_month"] == 50
    result = operations.set_plan(container(), tenant_a.slug, None, {"llm_tokens_per_month": 7})
    assert result["plan"]["messages_per_month"] == 50 and result["plan"]["llm_tokens_per_month"] == 7
    result = operations.set_plan(container(), tenant_a.slug, "scale", clear_overrides=True)
    assert result["overrides"] == [] and result["plan"]["messages_per_month"] == 250_000
    with pytest.raises(operations.OperationError, match="choose one of free, standard, scale"):
        operations.set_plan(container(), tenant_a.slug, "gold")
    with pytest.raises(operations.OperationError, match="unknown plan figures"):
        operations.set_plan(container(), tenant_a.slug, None, {"messages": 3})
    with pytest.raises(operations.OperationError, match="no tenant"):
        operations.set_plan(container(), "nobody", "free")


@pytest.mark.parametrize("backend", ["sqlite"])
def test_cli_tenant_plan_prints_the_plan_in_effect(client: TestClient, tenant_a: TenantKeys) -> None:
    from app.cli import cli

    result = CliRunner().invoke(cli, ["tenant", "plan", tenant_a.slug, "--plan", "free", "--messages", "3",
                                      "--llm-tokens", "1000", "--json"])
    assert result.exit_code == 0, result.output
    shown = json.loads(result.output)
    assert shown["plan"] == {"name": "free", "messages_per_month": 3, "llm_tokens_per_month": 1000,
                             "messages_per_minute": 20, "admin_requests_per_minute": 60}
    assert _usage(client, tenant_a)["messages"]["allowance"] == 3
    result = CliRunner().invoke(cli, ["tenant", "plan", tenant_a.slug, "--plan", "gold"])
    assert result.exit_code == 1 and "no plan 'gold'" in result.output


def test_admin_over_its_request_limit_gets_429_with_retry_after_naming_the_limit(
        client: TestClient, tenant_a: TenantKeys, tenant_b: TenantKeys) -> None:
    operations.set_plan(container(), tenant_a.slug, "free", {"admin_requests_per_minute": 3})
    operations.set_plan(container(), tenant_b.slug, "free", {"admin_requests_per_minute": 3})
    for _ in range(3):
        assert client.get("/admin/v1/tenant", headers=tenant_a.headers()).status_code == 200
    refused = client.get("/admin/v1/usage", headers=tenant_a.headers())
    assert refused.status_code == 429
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    assert "at most 3 admin API requests per tenant" in refused.json()["detail"]
    assert "admin_requests_per_minute" in refused.json()["detail"]
    # Every key of the tenant shares its limit; another tenant's is its own.
    assert client.get("/admin/v1/conversations", headers=tenant_a.headers("agent")).status_code == 429
    assert client.get("/admin/v1/tenant", headers=tenant_b.headers()).status_code == 200


def test_llm_tokens_count_every_attempt_of_the_month(client: TestClient, tenant_a: TenantKeys) -> None:
    _calls(tenant_a.id, NOW, [(10, 1), (0, 0), (5, 5)])
    start_of_month = datetime(NOW.year, NOW.month, 1, tzinfo=UTC)
    _calls(tenant_a.id, start_of_month, [(1, 1)])  # the first instant of the month is in it
    assert _usage(client, tenant_a)["llm_tokens"]["used"] == 23
    assert date.fromisoformat(_usage(client, tenant_a)["period_start"][:10]) == start_of_month.date()


@pytest.mark.parametrize("backend", ["sqlite"])
def test_over_quota_policy_is_checked_and_shown(client: TestClient, tenant_a: TenantKeys) -> None:
    bad = client.patch("/admin/v1/tenant", headers=tenant_a.headers(), json={"policies": {"over_quota": "drop"}})
    assert bad.status_code == 422 and "over_quota" in bad.text
    ok = client.patch("/admin/v1/tenant", headers=tenant_a.headers(), json={"policies": {"over_quota": "offline"}})
    assert ok.status_code == 200, ok.text
    assert _usage(client, tenant_a)["over_quota"] == "offline"
