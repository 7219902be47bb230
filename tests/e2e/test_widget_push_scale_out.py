"""Postgres + Redis: a reply stored by an orchestrator process is pushed through Redis to the widget's event
stream in the API process. (Its own module: its environment must not meet the embedded stack's.)"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from app.bootstrap import container
from tests.conftest import REDIS_TEST_URL
from tests.e2e.conftest import EXAMPLE, SCALE_OUT_VARS
from tests.e2e.sse import EventStream, serve_http


@pytest.fixture
def scale_out_api(tmp_path: Any, pg_url: str) -> Iterator[tuple[str, str, Any]]:
    import redis

    from tests.e2e.test_scale_out import ScaleOut

    namespace = f"sbtest{uuid.uuid4().hex[:8]}"
    env = {"SWITCHBOARD_HOME": str(tmp_path), "DATABASE_URL": pg_url, "REDIS_URL": REDIS_TEST_URL,
           "SWITCHBOARD_BUS_NAMESPACE": namespace}
    saved = {k: os.environ.get(k) for k in (*env, *SCALE_OUT_VARS)}
    for var in SCALE_OUT_VARS:
        os.environ.pop(var, None)
    os.environ.update(env)
    from app import operations
    from app.bootstrap import reset_caches
    from app.main import create_app

    reset_caches()
    slug = f"push-{uuid.uuid4().hex[:6]}"
    tenant = operations.create_tenant(slug, folder=EXAMPLE)
    assert not operations.ingest(container(), slug, [EXAMPLE / "knowledge"])["files_failed"]
    reset_caches()  # releases the embedded vector store: the orchestrator process owns it from now on
    roles = ScaleOut(tmp_path, env)
    try:
        roles.start_orchestrator()
        with serve_http(create_app()) as url:  # scale-out: no worker threads in the API process
            yield url, tenant["widget_id"], roles
    finally:
        roles.stop_all()
        reset_caches()
        client = redis.Redis.from_url(REDIS_TEST_URL)
        keys = list(client.scan_iter(f"{namespace}:*"))
        if keys:
            client.delete(*keys)
        client.close()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


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
