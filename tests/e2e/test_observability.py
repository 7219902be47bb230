"""Operating the embedded stack: `/metrics` read with Prometheus's own text parser after real traffic (a widget
message answered, an escalation, an LLM call against the fake OpenAI server), labels that stay bounded however
many visitors write, and JSON log lines that name the request, tenant and message and hold no raw PII."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select

from app import logs
from app.crypto import encrypt_json
from app.db import session_scope
from app.models import Tenant
from tests.e2e.conftest import Stack, Visitor, replies
from tests.fakes.openai_server import first_sentence, prompt_passages

TOKEN = "metrics-token-for-the-tests-0123"
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@pytest.fixture(scope="module")
def stack_settings() -> dict[str, Any]:  # the shared stack, built with METRICS_TOKEN set
    return {"metrics_token": TOKEN}


def scrape(stack: Stack) -> Samples:
    response = stack.client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sum of the samples named `name` whose labels include `labels` (0 when there is none)."""
    return sum(v for (n, ls), v in samples.items() if n == name and set(labels.items()) <= set(ls))


def ask(stack: Stack, text: str, mid: str) -> tuple[Visitor, dict[str, Any]]:
    visitor = stack.visitor(stack.northwind)
    visitor.send(text, mid)
    reply = replies(visitor.wait_for(lambda ms: bool(replies(ms)), timeout=60))[0]
    return visitor, reply


def test_metrics_need_the_operator_token(stack: Stack) -> None:
    assert stack.client.get("/metrics").status_code == 401
    wrong = stack.client.get("/metrics", headers={"Authorization": "Bearer not-the-token-at-all"})
    assert wrong.status_code == 401
    assert "METRICS_TOKEN" in wrong.json()["detail"]


def test_metrics_move_with_answers_escalations_and_llm_calls(stack: Stack, openai_server: Any) -> None:
    before = scrape(stack)
    ask(stack, "do gift cards expire?", "m1")  # the offline composer answers from the pack
    ask(stack, "I want to talk to a real person please", "m2")  # escalated: human_requested
    after = scrape(stack)

    widget_post = {"method": "POST", "route": "/widget/v1/{widget_id}/messages", "status": "202"}
    assert value(after, "switchboard_http_requests_total", **widget_post) - \
        value(before, "switchboard_http_requests_total", **widget_post) == 2
    latency = {"method": "POST", "route": "/widget/v1/{widget_id}/messages"}
    assert value(after, "switchboard_http_request_duration_seconds_count", **latency) - \
        value(before, "switchboard_http_request_duration_seconds_count", **latency) == 2
    assert not any(stack.northwind.widget in v for (_, ls) in after for _, v in ls)  # templates, never raw paths
    assert value(after, "switchboard_messages_total", outcome="answered") - \
        value(before, "switchboard_messages_total", outcome="answered") == 1
    assert value(after, "switchboard_messages_total", outcome="escalated") - \
        value(before, "switchboard_messages_total", outcome="escalated") == 1
    assert value(after, "switchboard_escalations_total", reason="human_requested") - \
        value(before, "switchboard_escalations_total", reason="human_requested") == 1
    # The streams, read from the bus when scraped: every inbound entry was delivered and acknowledged.
    assert value(after, "switchboard_bus_up") == 1
    assert value(after, "switchboard_stream_length", topic="inbound") >= 2
    assert value(after, "switchboard_stream_pending", topic="inbound", group="orchestrator") == 0
    assert value(after, "switchboard_stream_lag", topic="inbound", group="orchestrator") == 0
    assert ("switchboard_stream_dead_letters", (("topic", "inbound"),)) in after
    # Ingestion of the example pack at start-up counted its files.
    assert value(after, "switchboard_ingest_files_total") > 0

    # An LLM call, through the real SDK against the fake OpenAI-compatible server.
    answer: list[str] = []

    def grounded(body: dict[str, Any]) -> str:  # the first passage's own words, citing it
        answer.append(f"{first_sentence(prompt_passages(body)[0])} [1]")
        return answer[-1]

    openai_server.reply_with(grounded)
    with session_scope(cross_tenant="tests") as session:
        tenant = session.scalars(select(Tenant).where(Tenant.slug == "northwind")).one()
        saved_policies = dict(tenant.policies)
        tenant.policies = {**tenant.policies, "llm": {
            "base_url": openai_server.base_url, "model": "test-model", "timeout_s": 5, "max_retries": 0}}
        tenant.llm_api_key_encrypted = encrypt_json({"api_key": openai_server.api_key})
    try:
        _, reply = ask(stack, "do gift cards expire?", "m3")
    finally:
        with session_scope(cross_tenant="tests") as session:
            tenant = session.scalars(select(Tenant).where(Tenant.slug == "northwind")).one()
            tenant.policies, tenant.llm_api_key_encrypted = saved_policies, None
    assert (answer and reply["text"] == answer[0].removesuffix(" [1]").strip()) or reply["citations"], reply
    llm = scrape(stack)
    assert value(llm, "switchboard_llm_calls_total", outcome="ok") - value(after, "switchboard_llm_calls_total",
                                                                          outcome="ok") == 1
    assert value(llm, "switchboard_llm_tokens_total", kind="prompt") > value(after, "switchboard_llm_tokens_total",
                                                                             kind="prompt")
    assert value(llm, "switchboard_llm_tokens_total", kind="completion") > \
        value(after, "switchboard_llm_tokens_total", kind="completion")
    assert value(llm, "switchboard_llm_call_duration_seconds_count") - \
        value(after, "switchboard_llm_call_duration_seconds_count") == 1


def test_many_contacts_add_no_label_values(stack: Stack) -> None:
    ask(stack, "do gift cards expire?", "c0")  # every route and outcome below has been seen once
    before = scrape(stack)
    visitors = [stack.visitor(stack.northwind) for _ in range(15)]
    for i, visitor in enumerate(visitors):
        visitor.send("do gift cards expire?", f"c{i + 1}")
    for visitor in visitors:
        visitor.wait_for(lambda ms: bool(replies(ms)), timeout=60)
    after = scrape(stack)
    assert set(after) - set(before) == set()  # the same series, their values moved
    assert value(after, "switchboard_messages_total", outcome="answered") - \
        value(before, "switchboard_messages_total", outcome="answered") == 15


@pytest.fixture
def json_logs() -> Iterator[io.StringIO]:
    out = io.StringIO()
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    logs.configure("json", logging.DEBUG, stream=out)
    yield out
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)


def test_json_log_lines_name_request_tenant_and_message_without_pii(stack: Stack, json_logs: io.StringIO) -> None:
    visitor = stack.visitor(stack.northwind)
    response = stack.client.post(
        f"/widget/v1/{visitor.widget}/messages", headers={**visitor.auth, "X-Request-ID": "req-observe-1"},
        json={"text": "my email is jane.doe@example.com, do gift cards expire?", "client_message_id": "j1"})
    assert response.status_code == 202
    assert response.headers["x-request-id"] == "req-observe-1"
    message_id = response.json()["message_id"]
    visitor.wait_for(lambda ms: bool(replies(ms)), timeout=60)
    # A line written in the request's context, with a caller's PII in both the message and an extra field.
    token = logs.start("req-observe-2")
    logs.bind(tenant_id="t-1", message_id="m-1")
    logging.getLogger("tests.observe").warning("contact %s wrote", "jane.doe@example.com",
                                               extra={"customer": "jane.doe@example.com"})
    logs.reset(token)

    lines = [json.loads(line) for line in json_logs.getvalue().splitlines()]
    assert "jane.doe@example.com" not in json_logs.getvalue()
    stored = [r for r in lines if r["message"] == "web chat message accepted"]
    assert stored and stored[0]["request_id"] == "req-observe-1" and stored[0]["message_id"] == message_id
    assert stored[0]["tenant_id"] and stored[0]["level"] == "DEBUG" and stored[0]["logger"]
    # The orchestrator's lines for that message carry its tenant and id too (no request: it runs off the bus).
    handled = [r for r in lines if r.get("message_id") == message_id and "request_id" not in r]
    assert handled and all(r["tenant_id"] == stored[0]["tenant_id"] for r in handled)
    mine = next(r for r in lines if r["logger"] == "tests.observe")
    assert (mine["request_id"], mine["tenant_id"], mine["message_id"]) == ("req-observe-2", "t-1", "m-1")
    assert "[EMAIL" in mine["message"] and "[EMAIL" in mine["customer"]


def test_a_request_gets_a_request_id_and_a_bad_one_is_replaced(stack: Stack) -> None:
    response = stack.client.get("/healthz", headers={"X-Request-ID": "bad id with spaces"})
    assert response.status_code == 200
    given = response.headers["x-request-id"]
    assert given != "bad id with spaces" and len(given) == 32
