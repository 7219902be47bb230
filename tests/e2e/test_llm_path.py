"""The LLM path through the real `openai` SDK against a local OpenAI-compatible server: answers, retries on 429,
timeouts and persistent rate limits that end in an escalation (never a dropped message)."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import select

from app import operations
from app.db import session_scope
from app.models import Escalation, Message, Tenant
from tests.e2e.conftest import EXAMPLE, Stack, replies


@pytest.fixture(scope="module")
def llm_tenant(stack: Stack) -> dict[str, Any]:
    created = operations.create_tenant("northwind-llm", folder=EXAMPLE)
    report = operations.ingest("northwind-llm", [EXAMPLE / "knowledge" / "faq.csv"])
    assert report["chunks"] > 30
    return created


def _point_llm_at(server: Any, timeout_s: float = 5.0, max_retries: int = 2) -> None:
    with session_scope() as session:
        tenant = session.scalars(select(Tenant).where(Tenant.slug == "northwind-llm")).one()
        tenant.policies = {**tenant.policies, "llm": {
            "base_url": server.base_url, "model": "test-model", "timeout_s": timeout_s, "max_retries": max_retries,
        }}
    from app.crypto import encrypt_json

    with session_scope() as session:
        tenant = session.scalars(select(Tenant).where(Tenant.slug == "northwind-llm")).one()
        tenant.llm_api_key_encrypted = encrypt_json({"api_key": server.api_key})


def _ask(stack: Stack, tenant: dict[str, Any], text: str, mid: str) -> tuple[dict[str, Any], str]:
    response = stack.client.post(f"/widget/v1/{tenant['widget_id']}/sessions", json={})
    from tests.e2e.conftest import Visitor

    visitor = Visitor(stack.client, tenant["widget_id"], response.json()["token"])
    sent = visitor.send(text, mid)
    reply = replies(visitor.wait_for(lambda ms: bool(replies(ms)), timeout=60))[0]
    return reply, sent["message_id"]


def _escalation_reason(message_id: str) -> str | None:
    with session_scope() as session:
        escalation = session.scalars(select(Escalation).where(Escalation.message_id == message_id)).first()
        return escalation.reason if escalation else None


def test_llm_answer_with_citations_and_pii_redacted_before_the_llm(stack, llm_tenant, openai_server) -> None:
    openai_server.reply("Gift cards never expire [1].")
    _point_llm_at(openai_server)
    reply, _ = _ask(stack, llm_tenant, "do gift cards expire? my email is jane.doe@example.com", "l1")
    assert reply["text"] == "Gift cards never expire [1]." or reply["text"].startswith("Gift cards never expire")
    assert reply["citations"] and reply["citations"][0]["document"] == "faq.csv"
    request = openai_server.completion_requests[-1]
    assert request.headers.get("authorization") == f"Bearer {openai_server.api_key}"
    prompt = "\n".join(m["content"] for m in request.messages)
    assert "jane.doe@example.com" not in prompt and "[EMAIL" in prompt
    assert "gift card" in prompt.lower()  # the retrieved passages are in the prompt


def test_429_is_retried_then_answered(stack, llm_tenant, openai_server) -> None:
    openai_server.reply("Yes, we ship to Canada [1].")
    openai_server.then_status(429, times=1, retry_after=0.05)
    _point_llm_at(openai_server)
    reply, _ = _ask(stack, llm_tenant, "do you ship to canada", "l2")
    assert reply["text"].startswith("Yes, we ship to Canada")
    assert len(openai_server.completion_requests) == 2


def test_persistent_429_is_retried_a_bounded_number_of_times_then_escalated(stack, llm_tenant,
                                                                             openai_server) -> None:
    openai_server.fail_always(429, retry_after=0.05)
    _point_llm_at(openai_server, max_retries=2)
    reply, message_id = _ask(stack, llm_tenant, "can i pay with klarna?", "l3")
    assert "team" in reply["text"]
    assert _escalation_reason(message_id) == "llm_rate_limited"
    assert len(openai_server.completion_requests) == 3  # the first try + max_retries
    with session_scope() as session:
        escalation = session.scalars(select(Escalation).where(Escalation.message_id == message_id)).one()
        assert escalation.draft  # the offline composer's draft is there for the agent to approve
        assert session.get_one(Message, message_id).status == "escalated"


def test_llm_timeout_is_escalated(stack, llm_tenant, openai_server) -> None:
    openai_server.then_delay(3.0, times=5)
    _point_llm_at(openai_server, timeout_s=0.5, max_retries=1)
    _, message_id = _ask(stack, llm_tenant, "what payment methods do you accept?", "l4")
    assert _escalation_reason(message_id) == "llm_timeout"


def test_llm_fallback_answers_from_the_second_provider_and_usage_is_billed(stack, llm_tenant, openai_server) -> None:
    """The tenant's list: the first entry is down (connection refused), the second answers the visitor (a streamed
    answer, falling over before its first token); both attempts show in the tenant's usage summary, priced."""
    from tests.fakes.openai_server import FakeOpenAIServer

    down = FakeOpenAIServer().start()
    down_url = down.base_url
    down.stop()
    openai_server.reply("Gift cards never expire [1].")
    admin = stack.headers(llm_tenant["admin_api_key"])
    with session_scope() as session:  # loopback URLs: the admin API would refuse them, rightly
        tenant = session.scalars(select(Tenant).where(Tenant.slug == "northwind-llm")).one()
        tenant.policies = {**tenant.policies, "llm": {"providers": [
            {"name": "primary", "base_url": down_url, "model": "big-model", "max_retries": 0},
            {"name": "backup", "base_url": openai_server.base_url, "model": "small-model",
             "input_per_1m": 1.0, "output_per_1m": 4.0},
        ]}}
    r = stack.client.put("/admin/v1/tenant/llm-keys/backup", headers=admin, json={"api_key": openai_server.api_key})
    assert r.status_code == 200, r.text

    reply, _ = _ask(stack, llm_tenant, "do gift cards expire?", "l5")
    assert reply["text"].startswith("Gift cards never expire")
    assert openai_server.completion_requests[-1].body["model"] == "small-model"

    usage = stack.client.get("/admin/v1/llm/usage", headers=admin).json()
    rows = {u["provider"]: u for u in usage["usage"]}
    assert rows["primary"]["failed"] == rows["primary"]["calls"] >= 1
    backup = rows["backup"]
    assert backup["failed"] == 0 and backup["prompt_tokens"] >= 42 and backup["completion_tokens"] >= 7
    assert backup["cost"] == pytest.approx((backup["prompt_tokens"] * 1.0 + backup["completion_tokens"] * 4.0) / 1e6)
    other = stack.client.get("/admin/v1/llm/usage", headers=stack.headers(stack.other.admin)).json()
    assert all(u["provider"] not in ("primary", "backup") for u in other["usage"])
