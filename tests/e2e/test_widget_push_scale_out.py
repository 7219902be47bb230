"""Postgres + Redis: a reply stored by an orchestrator process is pushed through Redis to the widget's event
stream in the API process. (Its own module: its environment must not meet the embedded stack's.)"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from app.bootstrap import container
from tests.conftest import REDIS_TEST_URL, Graph
from tests.e2e.conftest import EXAMPLE
from tests.e2e.sse import EventStream, serve_http


@pytest.fixture
def scale_out_env() -> dict[str, str]:
    """Settings of the processes beyond the scale-out ones, as environment variables (a module overrides it)."""
    return {}


@pytest.fixture
def scale_out_api(tmp_path: Any, pg_url: str, scale_out_env: dict[str, str]) -> Iterator[tuple[str, str, Any]]:
    import redis

    from tests.e2e.test_scale_out import ScaleOut

    namespace = f"sbtest{uuid.uuid4().hex[:8]}"
    env = {"SWITCHBOARD_HOME": str(tmp_path), "DATABASE_URL": pg_url, "REDIS_URL": REDIS_TEST_URL,
           "SWITCHBOARD_BUS_NAMESPACE": namespace, **scale_out_env}
    from app import operations
    from app.main import create_app

    graph = Graph(tmp_path)
    graph.configure(**env)  # this process: the role processes' settings, read from no environment
    roles = ScaleOut(tmp_path, env)
    try:
        slug = f"push-{uuid.uuid4().hex[:6]}"
        tenant = operations.create_tenant(slug, folder=EXAMPLE)
        assert not operations.ingest(container(), slug, [EXAMPLE / "knowledge"])["files_failed"]
        graph.configure()  # releases the embedded vector store: the orchestrator process owns it from now on
        roles.start_orchestrator()
        with serve_http(create_app()) as url:  # scale-out: no worker threads in the API process
            yield url, tenant["widget_id"], roles
    finally:
        roles.stop_all()
        graph.close()
        client = redis.Redis.from_url(REDIS_TEST_URL)
        keys = list(client.scan_iter(f"{namespace}:*"))
        if keys:
            client.delete(*keys)
        client.close()


@pytest.mark.postgres
@pytest.mark.redis
def test_a_reply_is_pushed_through_redis_from_an_orchestrator_process(scale_out_api) -> None:  # type: ignore[no-untyped-def]
    url, widget, roles = scale_out_api
    with httpx.Client(base_url=url, timeout=30) as client:
        session = client.post(f"/widget/v1/{widget}/sessions", json={})
        assert session.status_code == 201, session.text
        auth = {"Authorization": f"Bearer {session.json()['token']}"}
        with EventStream(f"{url}/widget/v1/{widget}/events", headers=auth) as events:
            events.next("ready")
            sent = client.post(f"/widget/v1/{widget}/messages", headers=auth,
                               json={"text": "what are your shipping costs for orders under $75?",
                                     "client_message_id": "so-1"})
            assert sent.status_code == 202, sent.text
            assert events.next("message").data["direction"] == "in"
            try:
                reply = events.next("message", timeout=120)  # the orchestrator process loads its models first
            except AssertionError:
                raise AssertionError(roles.logs()) from None
            assert reply.data["direction"] == "out"
            assert {c["document"] for c in reply.data["citations"]} & {"shipping-policy.md", "faq.csv"}
