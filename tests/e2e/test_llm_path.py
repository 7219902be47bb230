"""The LLM path through the real `openai` SDK against a local OpenAI-compatible server: answers, retries on 429,
timeouts and persistent rate limits that end in an escalation (never a dropped message)."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest
from sqlalchemy import select

from app import operations
from app.assistant.pii_restore import PLACEHOLDER
from app.bootstrap import container
from app.db import session_scope
from app.models import AuditEvent, Escalation, Message, Tenant
from tests.e2e.conftest import EXAMPLE, Stack, replies
from tests.fakes.openai_server import first_sentence, prompt_passages


@pytest.fixture(scope="module")
def llm_tenant(stack: Stack) -> dict[str, Any]:
    created = operations.create_tenant("northwind-llm", folder=EXAMPLE)
    report = operations.ingest(container(), "northwind-llm", [EXAMPLE / "knowledge" / "faq.csv"])
    assert report["chunks"] > 30
    return created


def _point_llm_at(server: Any, timeout_s: float = 5.0, max_retries: int = 2) -> None:
    with session_scope(cross_tenant="tests") as session:
        tenant = session.scalars(select(Tenant).where(Tenant.slug == "northwind-llm")).one()
        tenant.policies = {**tenant.policies, "llm": {
            "base_url": server.base_url, "model": "test-model", "timeout_s": timeout_s, "max_retries": max_retries,
        }}
    from app.crypto import encrypt_json

    with session_scope(cross_tenant="tests") as session:
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
    with session_scope(cross_tenant="tests") as session:
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
    with session_scope(cross_tenant="tests") as session:
        escalation = session.scalars(select(Escalation).where(Escalation.message_id == message_id)).one()
        assert escalation.draft  # the offline composer's draft is there for the agent to approve
        assert session.get_one(Message, message_id).status == "escalated"


def test_llm_timeout_is_escalated(stack, llm_tenant, openai_server) -> None:
    openai_server.then_delay(3.0, times=5)
    _point_llm_at(openai_server, timeout_s=0.5, max_retries=1)
    _, message_id = _ask(stack, llm_tenant, "what payment methods do you accept?", "l4")
    assert _escalation_reason(message_id) == "llm_timeout"


# -- grounded or reviewed ------------------------------------------------------------------------------------
def _escalation_json(stack: Stack, tenant: dict[str, Any], message_id: str) -> dict[str, Any]:
    queue = stack.client.get("/review/v1/escalations", headers=stack.headers(tenant["agent_api_key"])).json()
    return next(e for e in queue if e["message_id"] == message_id)


def test_an_invented_claim_citing_a_passage_is_escalated_as_ungrounded(stack, llm_tenant, openai_server) -> None:
    claim = "Every Northwind product comes with a lifetime free-repair guarantee."
    openai_server.reply(f"{claim} [1]")
    _point_llm_at(openai_server)
    reply, message_id = _ask(stack, llm_tenant, "what warranty do your boots have?", "g1")
    assert "lifetime" not in reply["text"] and "team" in reply["text"]  # the customer got the holding notice
    assert _escalation_reason(message_id) == "ungrounded"
    escalation = _escalation_json(stack, llm_tenant, message_id)
    assert escalation["draft"].startswith(claim)  # the agent can edit it
    unsupported = escalation["meta"]["grounding"]["unsupported"]
    assert [s["text"] for s in unsupported] == [claim]
    assert unsupported[0]["citations"] == [1] and unsupported[0]["problem"]


def test_an_answer_that_cites_nothing_is_escalated_as_ungrounded(stack, llm_tenant, openai_server) -> None:
    openai_server.reply_with(lambda body: first_sentence(prompt_passages(body)[0]))  # true, but no [n]
    _point_llm_at(openai_server)
    reply, message_id = _ask(stack, llm_tenant, "do gift cards expire?", "g2")
    assert "team" in reply["text"]
    assert _escalation_reason(message_id) == "ungrounded"
    assert _escalation_json(stack, llm_tenant, message_id)["meta"]["grounding"]["cites_nothing"] is True


def test_an_answer_quoting_the_passage_it_cites_is_sent(stack, llm_tenant, openai_server) -> None:
    quoted: list[str] = []

    def quote(body: dict[str, Any]) -> str:
        quoted.append(first_sentence(prompt_passages(body)[0]))
        return f"Happy to help! {quoted[-1]} [1] Let me know if anything else comes up."

    openai_server.reply_with(quote)
    _point_llm_at(openai_server)
    reply, message_id = _ask(stack, llm_tenant, "how long do i have to return something?", "g3")
    assert quoted and quoted[-1] in reply["text"]
    assert reply["citations"]
    assert _escalation_reason(message_id) is None


# -- PII both ways -------------------------------------------------------------------------------------------
EMAIL = "jane.doe@example.com"


def test_placeholders_are_restored_and_the_raw_value_never_reaches_the_llm_or_the_logs(
        stack, llm_tenant, openai_server, caplog) -> None:
    openai_server.reply_with(
        lambda body: f"Thanks for your message, [EMAIL_1]! {first_sentence(prompt_passages(body)[0])} [1]")
    _point_llm_at(openai_server)
    from tests.e2e.conftest import Visitor

    token = stack.client.post(f"/widget/v1/{llm_tenant['widget_id']}/sessions", json={}).json()["token"]
    visitor = Visitor(stack.client, llm_tenant["widget_id"], token)
    with caplog.at_level(logging.DEBUG):
        visitor.send(f"do gift cards expire? write me at {EMAIL}", "p1")
        reply = replies(visitor.wait_for(lambda ms: len(replies(ms)) >= 1, timeout=60))[0]
        # the next turn's history carries the restored reply: masked again, with the same placeholder
        visitor.send("and can i use it online?", "p2")
        second = replies(visitor.wait_for(lambda ms: len(replies(ms)) >= 2, timeout=60))[1]
    assert reply["text"].startswith(f"Thanks for your message, {EMAIL}!")
    for text in (reply["text"], second["text"]):
        assert not PLACEHOLDER.search(text)
    for request in openai_server.completion_requests[-2:]:
        sent = json.dumps(request.body)
        assert EMAIL not in sent and "[EMAIL_1]" in sent
    assert EMAIL not in caplog.text


def test_a_placeholder_that_cannot_be_restored_is_never_sent(stack, llm_tenant, openai_server) -> None:
    openai_server.reply_with(lambda body: f"{first_sentence(prompt_passages(body)[0])} [1] Thanks, [PHONE]!")
    _point_llm_at(openai_server)
    reply, message_id = _ask(stack, llm_tenant, "do gift cards expire?", "p3")
    assert not PLACEHOLDER.search(reply["text"])
    assert _escalation_reason(message_id) == "pii_placeholder"
    escalation = _escalation_json(stack, llm_tenant, message_id)
    approve = stack.client.post(f"/review/v1/escalations/{escalation['id']}/decision",
                                headers=stack.headers(llm_tenant["agent_api_key"]), json={"decision": "approve"})
    assert approve.status_code == 422 and "placeholder" in approve.json()["detail"]


def test_agents_see_masked_text_unless_they_reveal_it(stack, llm_tenant, openai_server) -> None:
    openai_server.reply("Every order ships by drone within the hour [1].")
    _point_llm_at(openai_server)
    _, message_id = _ask(stack, llm_tenant, f"how fast do you ship? i'm {EMAIL}", "p4")
    escalation = _escalation_json(stack, llm_tenant, message_id)
    assert EMAIL not in json.dumps(escalation) and "[EMAIL]" in escalation["customer_text"]
    from app.auth import Principal
    from app.review import queue

    with session_scope(cross_tenant="tests") as session:
        tenant_id = session.get_one(Message, message_id).tenant_id
        principal = Principal(tenant_id=tenant_id, tenant_slug="northwind-llm", scope="agent", key_id="k1", name="ana")
        _, revealed = queue.reveal_escalation(session, principal, escalation["id"])
        audit = session.scalars(select(AuditEvent).where(AuditEvent.action == "pii.revealed",
                                                         AuditEvent.subject_id == escalation["id"])).one()
    assert EMAIL in revealed
    assert audit.actor == principal.actor and EMAIL not in json.dumps(audit.data)  # who, never the value


def test_llm_fallback_answers_from_the_second_provider_and_usage_is_billed(stack, llm_tenant, openai_server) -> None:
    """The tenant's list: the first entry is down (connection refused), the second answers the visitor (a streamed
    answer, falling over before its first token); both attempts show in the tenant's usage summary, priced."""
    from tests.fakes.openai_server import FakeOpenAIServer

    down = FakeOpenAIServer().start()
    down_url = down.base_url
    down.stop()
    openai_server.reply("Gift cards never expire [1].")
    admin = stack.headers(llm_tenant["admin_api_key"])
    with session_scope(cross_tenant="tests") as session:  # loopback URLs: the admin API would refuse them, rightly
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
