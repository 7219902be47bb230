"""Traces of the embedded stack (in-process bus, orchestrator threads), kept by an in-memory exporter: one widget
message makes one trace, from the HTTP request through the intake, the bus, the orchestrator's stages (guardrails,
retrieval, the LLM through the real SDK against the fake OpenAI server, grounding) to the dispatcher, every span a
child of the one before; the log lines written on the way carry that trace's id; no span holds the message's text
or the customer's identifiers."""

from __future__ import annotations

import io
import json
import logging
import time
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import select

from app import logs
from app.crypto import encrypt_json
from app.db import session_scope
from app.models import Tenant
from tests.e2e.conftest import Stack, replies
from tests.fakes.openai_server import first_sentence, prompt_passages
from tests.traces import Recorded, ancestry, one

QUESTION = "my email is jane.doe@example.com, do gift cards expire?"


@pytest.fixture
def tenant_llm(stack: Stack, openai_server: Any) -> Iterator[None]:
    openai_server.reply_with(lambda body: f"{first_sentence(prompt_passages(body)[0])} [1]")
    with session_scope(cross_tenant="tests") as session:
        tenant = session.scalars(select(Tenant).where(Tenant.slug == "northwind")).one()
        saved = dict(tenant.policies)
        tenant.policies = {**tenant.policies, "llm": {
            "base_url": openai_server.base_url, "model": "test-model", "timeout_s": 10, "max_retries": 0}}
        tenant.llm_api_key_encrypted = encrypt_json({"api_key": openai_server.api_key})
    yield
    with session_scope(cross_tenant="tests") as session:
        tenant = session.scalars(select(Tenant).where(Tenant.slug == "northwind")).one()
        tenant.policies, tenant.llm_api_key_encrypted = saved, None


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


def _wait_for_spans(traced: Recorded, *names: str, timeout: float = 30) -> None:
    """Until every span named has ended: the threads end theirs in any order (a child before its parent)."""
    deadline = time.monotonic() + timeout
    while not set(names) <= {s.name for s in traced.spans()}:
        if time.monotonic() > deadline:
            raise AssertionError(f"not all of {names}; got {sorted({s.name for s in traced.spans()})}")
        time.sleep(0.05)


def test_one_widget_message_is_one_trace_from_request_to_delivery(stack: Stack, tenant_llm: None, traced: Recorded,
                                                                  json_logs: io.StringIO) -> None:
    visitor = stack.visitor(stack.northwind)
    response = stack.client.post(f"/widget/v1/{visitor.widget}/messages", headers=visitor.auth,
                                 json={"text": QUESTION, "client_message_id": "t1"})
    assert response.status_code == 202, response.text
    message_id = response.json()["message_id"]
    visitor.wait_for(lambda ms: bool(replies(ms)), timeout=60)
    _wait_for_spans(traced, "POST /widget/v1/{widget_id}/messages", "process inbound")

    spans = traced.spans()
    request = one(spans, "POST /widget/v1/{widget_id}/messages")
    trace = [s for s in spans if s.trace_id == request.trace_id]
    assert request.kind == "server" and not request.parent_id
    assert request.attributes["http.response.status_code"] == 202
    assert request.attributes["switchboard.message.id"] == message_id

    orchestrate = one(trace, "orchestrate")
    assert ancestry(trace, orchestrate) == ["POST /widget/v1/{widget_id}/messages", "intake", "publish inbound",
                                            "process inbound", "orchestrate"]
    assert orchestrate.attributes["switchboard.outcome"] == "answered"
    assert orchestrate.attributes["switchboard.tenant.slug"] == "northwind"
    assert orchestrate.attributes["switchboard.channel"] == "webchat"
    assert orchestrate.attributes["switchboard.message.id"] == message_id
    for stage in ("guardrails", "retrieval", "llm", "grounding", "record answer"):
        assert one(trace, stage).parent_id == orchestrate.span_id, stage
    assert one(trace, "retrieval").attributes["switchboard.retrieval.passages"] > 0
    attempt = one(trace, "llm attempt")
    assert attempt.parent_id == one(trace, "llm").span_id and attempt.kind == "client"
    assert attempt.attributes["gen_ai.request.model"] == "test-model"
    assert attempt.attributes["gen_ai.usage.output_tokens"] > 0
    # The web chat's reply is delivered by the answer's own transaction: no outbound entry, no dispatcher.
    assert not {"publish outbound", "process outbound", "dispatch"} & {s.name for s in trace}

    # Nothing a customer wrote or is identified by is in any span.
    everything = json.dumps([[s.name, s.attributes] for s in spans], default=str)
    for secret in ("jane.doe", "example.com", "gift cards", visitor.token):
        assert secret not in everything, secret

    # The log lines written while handling the message carry the trace's real id, and the span they were in.
    lines = [json.loads(line) for line in json_logs.getvalue().splitlines()]
    about = [r for r in lines if r.get("message_id") == message_id]
    assert about and all(r.get("trace_id") == request.trace_id for r in about), about
    assert {r["span_id"] for r in about} <= {s.span_id for s in trace}
