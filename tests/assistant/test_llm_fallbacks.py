"""LLM fallbacks through the orchestrator: a tenant's ordered providers (two fake OpenAI-compatible servers on
127.0.0.1, the real `openai` SDK), the offline draft when all fail, the routing rule, keys that go only where they
belong, and the `llm_calls` rows each attempt leaves (SQLite and Postgres)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import select

from app.bootstrap import container
from app.bus.memory import MemoryBus
from app.contracts import InboundMessage
from app.db import migrate, session_scope
from app.models import Escalation, LLMCall
from tests.assistant.helpers import FakePassage
from tests.conftest import Graph
from tests.fakes.openai_server import FakeOpenAIServer

PASSAGES = [FakePassage("c1", "returns.md", "Returns", "Returns are free within 30 days.", 0.82)]
# Both grounded in the passage (so the checks send them), worded apart so a test can tell who answered.
FIRST = "Returns are free within 30 days [1]."
SECOND = "Within 30 days, returns are free [1]."
QUESTION = "I bought a jacket last month and it does not fit, can I still return it for a refund?"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def backend(request: pytest.FixtureRequest, graph: Graph) -> str:
    if request.param == "postgres":
        graph.configure(database_url=request.getfixturevalue("pg_url"))
    graph.configure(outbound_allow_hosts="127.0.0.1")  # the fakes stand for public endpoints
    migrate()
    return request.param  # type: ignore[no-any-return]


@pytest.fixture
def fakes() -> Iterator[tuple[FakeOpenAIServer, FakeOpenAIServer]]:
    with FakeOpenAIServer(api_key="sk-first") as first, FakeOpenAIServer(api_key="sk-second") as second:
        first.reply(FIRST)
        second.reply(SECOND)
        yield first, second


def _tenant(llm: dict[str, Any], keys: dict[str, str] | None = None) -> str:
    from app.crypto import encrypt_json
    from app.tenants.service import create_tenant

    with session_scope(cross_tenant="tests") as session:
        tenant = create_tenant(session, f"acme-{len(llm)}-{id(llm)}").tenant
        tenant.live_pack_version = 1
        tenant.policies = {**tenant.policies, "llm": llm}
        tenant.llm_provider_keys_encrypted = encrypt_json(keys) if keys else None
        return tenant.id


def _entry(server: FakeOpenAIServer, name: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "base_url": server.base_url, "model": f"{name}-model", "max_retries": 0, **extra}


def _ask(tenant_id: str, text: str = QUESTION, channel: str = "sms") -> tuple[Any, str]:
    from app.assistant.orchestrator import Orchestrator
    from app.conversations.push import LocalPush
    from app.conversations.service import accept_inbound

    bus = MemoryBus()
    accepted = accept_inbound(bus, tenant_id=tenant_id, channel=channel, contact_external_id="+15550001",
                              provider_message_id=f"p-{text[:20]}", text=text)
    event = InboundMessage(tenant_id=tenant_id, message_id=accepted.message_id, conversation_id="-", contact_id="-",
                           channel=channel, provider_message_id=f"p-{text[:20]}", text=text)
    orchestrator = Orchestrator.of(container(), bus=bus, retrieve=lambda *a, **k: PASSAGES, push=LocalPush())  # type: ignore[arg-type]
    return orchestrator.process(event), accepted.message_id


def _calls(tenant_id: str) -> list[LLMCall]:
    with session_scope(cross_tenant="tests") as session:
        rows = session.scalars(select(LLMCall).where(LLMCall.tenant_id == tenant_id)).all()
        return sorted(rows, key=lambda r: (r.created_at, r.attempt))


def test_llm_first_provider_down_the_second_answers_and_both_calls_are_recorded(backend: str, fakes) -> None:
    first, second = fakes
    tenant = _tenant({"providers": [_entry(first, "first"),
                                    _entry(second, "second", input_per_1m=3.0, output_per_1m=15.0)]},
                     keys={"first": "sk-first", "second": "sk-second"})
    first.stop()  # connection refused

    outcome, message_id = _ask(tenant)
    assert outcome.status == "answered" and outcome.text == SECOND
    assert second.completion_requests[-1].headers["authorization"] == "Bearer sk-second"  # its own key

    calls = _calls(tenant)
    assert [(c.provider, c.model, c.outcome) for c in calls] == [
        ("first", "first-model", "unavailable"), ("second", "second-model", "ok")]
    ok = calls[1]
    assert ok.message_id == message_id and not ok.streamed
    assert (ok.prompt_tokens, ok.completion_tokens) == (42, 7)
    assert ok.cost == pytest.approx((42 * 3.0 + 7 * 15.0) / 1_000_000)
    assert calls[0].cost is None and calls[0].prompt_tokens == 0


def test_llm_all_providers_down_escalates_with_the_offline_draft(backend: str, fakes) -> None:
    first, second = fakes
    first.fail_always(503)
    second.fail_always(500)
    tenant = _tenant({"providers": [_entry(first, "first"), _entry(second, "second")]},
                     keys={"first": "sk-first", "second": "sk-second"})

    outcome, message_id = _ask(tenant)
    assert outcome.status == "escalated" and outcome.reason == "llm_unavailable"
    with session_scope(cross_tenant="tests") as session:
        escalation = session.scalars(select(Escalation).where(Escalation.message_id == message_id)).one()
        assert escalation.draft and "30 days" in escalation.draft  # the offline composer's, for the agent
        assert escalation.detail and "first: unavailable" in escalation.detail
        assert "second: unavailable" in escalation.detail
    assert [c.outcome for c in _calls(tenant)] == ["unavailable", "unavailable"]


def test_llm_streamed_answer_falls_over_before_its_first_token(backend: str, fakes) -> None:
    first, second = fakes
    first.then_stream_break(0, "never shown")
    tenant = _tenant({"providers": [_entry(first, "first"), _entry(second, "second")]},
                     keys={"first": "sk-first", "second": "sk-second"})

    outcome, _ = _ask(tenant, channel="webchat")
    assert outcome.status == "answered" and outcome.text == SECOND
    assert second.completion_requests[-1].body["stream"] is True  # type: ignore[index]
    ok = _calls(tenant)[-1]
    assert ok.streamed and ok.outcome == "ok" and (ok.prompt_tokens, ok.completion_tokens) == (42, 7)


def test_llm_routing_rule_sends_a_short_faq_question_to_the_cheap_model(backend: str, fakes) -> None:
    first, second = fakes
    tenant = _tenant({"providers": [_entry(first, "full"), _entry(second, "cheap")],
                      "route": {"max_words": 8, "use": "cheap", "min_score": 0.6}},
                     keys={"full": "sk-first", "cheap": "sk-second"})

    _ask(tenant, "can I return a jacket?")
    _ask(tenant, QUESTION)
    assert [r.body["model"] for r in second.completion_requests] == ["cheap-model"]  # type: ignore[index]
    assert [r.body["model"] for r in first.completion_requests] == ["full-model"]  # type: ignore[index]
    assert [c.provider for c in _calls(tenant)] == ["cheap", "full"]


def test_llm_operator_key_goes_only_to_the_operators_endpoint(backend: str, fakes, graph: Graph) -> None:
    """An entry on the tenant's own URL without a key gets none (and fails auth here); the next entry, without a
    URL, is the operator's endpoint with the operator's key."""
    first, operator = fakes
    graph.configure(llm_base_url=operator.base_url, llm_api_key=operator.api_key)
    tenant = _tenant({"providers": [_entry(first, "own"), {"name": "house", "model": "house-model"}]})

    outcome, _ = _ask(tenant)
    assert outcome.status == "answered" and outcome.text == SECOND
    assert [r.headers["authorization"] for r in first.requests] == ["Bearer unused"]
    assert [r.headers["authorization"] for r in operator.requests] == [f"Bearer {operator.api_key}"]
    assert [(c.provider, c.outcome) for c in _calls(tenant)] == [("own", "auth"), ("house", "ok")]
