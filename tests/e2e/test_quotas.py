"""Quota exhaustion, embedded: past the plan's monthly messages or LLM tokens every message still ends answered or
escalated (never dropped), as the tenant chose with `over_quota`: `escalate` (reason `quota_exceeded`, the customer
gets the holding notice) or `offline` (answered from the knowledge without calling the LLM)."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import select

from app import operations
from app.bootstrap import container
from app.db import session_scope
from app.models import Escalation, Message, Tenant
from tests.e2e.conftest import Stack, TenantKeys, Visitor, replies

QUESTION = "what are your shipping costs for orders under $75?"
GIFT_CARDS = "do gift cards expire"  # the fake LLM's answer below is grounded in the FAQ's passage


def _usage(stack: Stack, tenant: TenantKeys) -> dict[str, Any]:
    response = stack.client.get("/admin/v1/usage", headers=stack.headers(tenant.admin))
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def _policies(**changes: Any) -> None:
    with session_scope(cross_tenant="tests") as session:
        tenant = session.scalars(select(Tenant).where(Tenant.slug == "northwind")).one()
        tenant.policies = {**tenant.policies, **changes}


def _ask(visitor: Visitor, text: str, mid: str) -> tuple[str, dict[str, Any]]:
    """Send and wait for this message's reply (an answer or the holding notice): its id and the reply."""
    sent = visitor.send(text, mid)
    mine = visitor.wait_for(lambda ms: any(m.get("in_reply_to_id") == sent["message_id"] for m in replies(ms)),
                            timeout=60)
    return sent["message_id"], next(m for m in replies(mine) if m.get("in_reply_to_id") == sent["message_id"])


def _outcome(message_id: str) -> tuple[str, str | None, str | None]:
    with session_scope(cross_tenant="tests") as session:
        status = session.get_one(Message, message_id).status
        escalation = session.scalars(select(Escalation).where(Escalation.message_id == message_id)).first()
        return status, escalation.reason if escalation else None, escalation.detail if escalation else None


@pytest.fixture
def plain(stack: Stack) -> Any:
    """Northwind without an LLM, on the default plan again afterwards."""
    _policies(llm=None, over_quota=None)
    yield
    operations.set_plan(container(), "northwind", "unlimited", clear_overrides=True)
    _policies(llm=None, over_quota=None)


def test_past_the_monthly_messages_each_message_is_escalated_as_quota_exceeded(stack: Stack, plain: Any) -> None:
    used = _usage(stack, stack.northwind)["messages"]["used"]
    operations.set_plan(container(), "northwind", "free", {"messages_per_month": used + 2})
    visitor = stack.visitor(stack.northwind)
    outcomes = []
    for i in range(4):
        message_id, reply = _ask(visitor, QUESTION, f"q-msg-{i}")
        outcomes.append((_outcome(message_id), reply))
    for (status, reason, _), reply in outcomes[:2]:
        assert (status, reason) == ("answered", None) and reply["citations"]
    for (status, reason, detail), reply in outcomes[2:]:
        assert (status, reason) == ("escalated", "quota_exceeded")
        assert f"{used + 2} messages for" in (detail or "")
        assert reply["text"].startswith("Thanks for your patience")  # explained to the customer, not dropped
    usage = _usage(stack, stack.northwind)["messages"]
    assert usage == {"used": used + 4, "allowance": used + 2, "remaining": 0}
    # Another tenant's messages are not held against it, nor its plan touched.
    other = _usage(stack, stack.other)
    assert other["plan"]["name"] == "unlimited" and other["messages"]["used"] == 0


def test_offline_choice_answers_from_the_knowledge_without_calling_the_llm(stack: Stack, plain: Any,
                                                                           openai_server: Any) -> None:
    from app.crypto import encrypt_json

    _policies(llm={"base_url": openai_server.base_url, "model": "m", "timeout_s": 10, "max_retries": 0},
              over_quota="offline", stream_replies=False)
    with session_scope(cross_tenant="tests") as session:
        session.scalars(select(Tenant).where(Tenant.slug == "northwind")).one().llm_api_key_encrypted = (
            encrypt_json({"api_key": openai_server.api_key}))
    openai_server.reply("Gift cards never expire [1].")
    used = _usage(stack, stack.northwind)["messages"]["used"]
    operations.set_plan(container(), "northwind", "free", {"messages_per_month": used + 1})
    visitor = stack.visitor(stack.northwind)

    first_id, first = _ask(visitor, GIFT_CARDS, "q-off-0")
    assert first["text"].startswith("Gift cards never expire"), _outcome(first_id)
    assert len(openai_server.completion_requests) == 1
    second_id, second = _ask(visitor, GIFT_CARDS, "q-off-1")
    assert len(openai_server.completion_requests) == 1  # past the allowance: no LLM call
    assert _outcome(second_id)[:2] == ("answered", None)
    assert second["citations"] and not second["text"].startswith("Gift cards never expire")
    assert _outcome(first_id)[:2] == ("answered", None)
    with session_scope(cross_tenant="tests") as session:
        session.scalars(select(Tenant).where(Tenant.slug == "northwind")).one().llm_api_key_encrypted = None
    _policies(stream_replies=None)


def test_past_the_monthly_llm_tokens_the_next_message_is_escalated(stack: Stack, plain: Any,
                                                                    openai_server: Any) -> None:
    from app.bootstrap import container
    from app.crypto import encrypt_json

    _policies(llm={"base_url": openai_server.base_url, "model": "m", "timeout_s": 10, "max_retries": 0},
              over_quota="escalate", stream_replies=False)
    with session_scope(cross_tenant="tests") as session:
        session.scalars(select(Tenant).where(Tenant.slug == "northwind")).one().llm_api_key_encrypted = (
            encrypt_json({"api_key": openai_server.api_key}))
    openai_server.reply("Gift cards never expire [1].")
    tokens = _usage(stack, stack.northwind)["llm_tokens"]["used"]
    operations.set_plan(container(), "northwind", "free",
                        {"messages_per_month": None, "llm_tokens_per_month": tokens + 1})
    gate = container().quota
    saved, gate.cache_s = gate.cache_s, 0.0  # re-read the rows for every message: the test sees the call's tokens
    try:
        visitor = stack.visitor(stack.northwind)
        _, first = _ask(visitor, GIFT_CARDS, "q-tok-0")
        assert first["text"].startswith("Gift cards never expire")
        spent = _usage(stack, stack.northwind)["llm_tokens"]
        assert spent["used"] == tokens + 49 and spent["remaining"] == 0  # the fake reports 42 + 7 tokens
        second_id, second = _ask(visitor, GIFT_CARDS, "q-tok-1")
        status, reason, detail = _outcome(second_id)
        assert (status, reason) == ("escalated", "quota_exceeded") and "LLM tokens" in (detail or "")
        assert len(openai_server.completion_requests) == 1
        assert second["text"].startswith("Thanks for your patience")
    finally:
        gate.cache_s = saved
        with session_scope(cross_tenant="tests") as session:
            session.scalars(select(Tenant).where(Tenant.slug == "northwind")).one().llm_api_key_encrypted = None
        _policies(stream_replies=None)
