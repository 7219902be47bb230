"""Quota exhaustion in scale-out (Postgres + Redis Streams + orchestrator processes): past the plan's monthly
messages, or its messages per minute (counted in Redis, so across replicas), every message still ends answered or
escalated with reason `quota_exceeded` and a holding notice to the customer; nothing is lost or answered twice.
(Its own module: its environment must not meet the embedded stack's.)"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from app.bootstrap import container
from tests.conftest import REDIS_TEST_URL, Graph
from tests.e2e.conftest import EXAMPLE, Visitor, replies

QUESTION = "what are your shipping costs for orders under $75?"


@pytest.fixture(scope="module")
def quota_stack(tmp_path_factory: pytest.TempPathFactory, pg_url: str) -> Iterator[tuple[Any, str, str]]:
    import redis

    from tests.e2e.test_scale_out import ScaleOut

    home = tmp_path_factory.mktemp("quota-scaleout")
    namespace = f"sbtest{uuid.uuid4().hex[:8]}"
    # A minute between usage reads: the processes count from one read, as they would between two reads.
    env = {"SWITCHBOARD_HOME": str(home), "DATABASE_URL": pg_url, "REDIS_URL": REDIS_TEST_URL,
           "SWITCHBOARD_BUS_NAMESPACE": namespace, "SWITCHBOARD_QUOTA_CACHE_S": "60"}
    from app import operations

    graph = Graph(home)
    graph.configure(**env)  # this process: the role processes' settings, read from no environment
    stack = ScaleOut(home, env)
    try:
        slug = f"quota-{uuid.uuid4().hex[:6]}"
        tenant = operations.create_tenant(slug, folder=EXAMPLE)
        assert not operations.ingest(container(), slug, [EXAMPLE / "knowledge"])["files_failed"]
        graph.configure()  # releases the embedded vector store: the orchestrator processes own it from now on
        yield stack, slug, tenant["widget_id"]
    finally:
        stack.stop_all()
        graph.close()
        client = redis.Redis.from_url(REDIS_TEST_URL)
        keys = list(client.scan_iter(f"{namespace}:*"))
        if keys:
            client.delete(*keys)
        client.close()


@pytest.fixture
def api(quota_stack: Any) -> Iterator[TestClient]:
    from app.main import create_app

    with TestClient(create_app()) as client:  # scale-out: no worker threads in the API process
        yield client


def _burst(api: TestClient, widget: str, n: int, tag: str) -> list[tuple[Visitor, str]]:
    """`n` customers (one message each, as fast as they arrive)."""
    sent = []
    for i in range(n):
        visitor = Visitor(api, widget, api.post(f"/widget/v1/{widget}/sessions", json={}).json()["token"])
        sent.append((visitor, visitor.send(QUESTION, f"{tag}-{i}")["message_id"]))
    return sent


def _settle(stack: Any, sent: list[tuple[Visitor, str]]) -> dict[str, tuple[str, str | None, str | None, str]]:
    """Each message's status, escalation reason and detail, and the reply its customer saw (once every customer
    has one)."""
    from app.db import session_scope
    from app.models import Escalation, Message

    seen: dict[str, str] = {}
    for visitor, message_id in sent:
        try:
            messages = visitor.wait_for(lambda ms, mid=message_id: any(  # type: ignore[misc]
                m.get("in_reply_to_id") == mid for m in replies(ms)), timeout=120)
        except AssertionError:
            raise AssertionError(stack.logs()) from None
        seen[message_id] = next(m["text"] for m in replies(messages) if m.get("in_reply_to_id") == message_id)
    time.sleep(1)  # a duplicate answer, were there one, would show up now
    result = {}
    with session_scope(cross_tenant="tests") as session:
        for _, message_id in sent:
            status = session.get_one(Message, message_id).status
            escalation = session.scalars(select(Escalation).where(Escalation.message_id == message_id)).first()
            answers = session.scalar(select(func.count()).select_from(Message).where(
                Message.in_reply_to_id == message_id))
            assert answers == 1, f"message {message_id} has {answers} replies"
            result[message_id] = (status, escalation.reason if escalation else None,
                                  escalation.detail if escalation else None, seen[message_id])
    return result


@pytest.mark.postgres
@pytest.mark.redis
def test_scale_out_past_the_monthly_messages_every_message_is_answered_or_escalated(quota_stack, api) -> None:  # type: ignore[no-untyped-def]
    from app import operations

    stack, slug, widget = quota_stack
    operations.set_plan(container(), slug, "free", {"messages_per_month": 3})
    stack.start_orchestrator()
    outcomes = _settle(stack, _burst(api, widget, 6, "month"))
    answered = [o for o in outcomes.values() if o[0] == "answered"]
    over = [o for o in outcomes.values() if o[1] == "quota_exceeded"]
    assert len(answered) == 3 and len(over) == 3, outcomes
    for status, _, detail, text in over:
        assert status == "escalated" and "3 messages for" in (detail or "")
        assert text.startswith("Thanks for your patience")
    stack.stop_all()
    usage = api.get("/admin/v1/usage", headers={"Authorization": f"Bearer {_admin_key(slug)}"}).json()
    assert usage["messages"] == {"used": 6, "allowance": 3, "remaining": 0}


@pytest.mark.postgres
@pytest.mark.redis
def test_scale_out_messages_per_minute_hold_across_two_orchestrators(quota_stack, api) -> None:  # type: ignore[no-untyped-def]
    from app import operations

    stack, slug, widget = quota_stack
    operations.set_plan(container(), slug, "free", {"messages_per_month": None, "messages_per_minute": 2})
    stack.start_orchestrator()
    stack.start_orchestrator()
    outcomes = _settle(stack, _burst(api, widget, 5, "minute"))
    answered = [o for o in outcomes.values() if o[0] == "answered"]
    over = [o for o in outcomes.values() if o[1] == "quota_exceeded"]
    assert len(answered) == 2 and len(over) == 3, outcomes  # one window in Redis for both processes
    for status, _, detail, text in over:
        assert status == "escalated" and "per minute" in (detail or "")
        assert text.startswith("Thanks for your patience")
    stack.stop_all()


def _admin_key(slug: str) -> str:
    """A fresh admin key for the tenant (the one printed at creation is not kept by the fixture)."""
    from app.auth import issue_key
    from app.db import session_scope
    from app.models import Tenant

    with session_scope(cross_tenant="tests") as session:
        tenant_id = session.scalars(select(Tenant.id).where(Tenant.slug == slug)).one()
        return issue_key(session, tenant_id, "admin", "usage-check")[1]
