"""Postgres + Redis: drafts written by an orchestrator process travel over Redis pub/sub to the widget's event
stream in the API process, and the stored reply replaces them. (Its own module: its environment must not meet
the embedded stack's.)"""

from __future__ import annotations

import httpx
import pytest

from app.assistant.drafts import DRAFT_EVERY_CHUNKS
from app.bootstrap import container
from tests.e2e.sse import EventStream
from tests.e2e.test_widget_push_scale_out import scale_out_api  # noqa: F401  (fixture)
from tests.e2e.test_widget_stream import ANSWER, point_llm_at, watch_a_streamed_reply


@pytest.fixture
def scale_out_env() -> dict[str, str]:
    # The fake LLM the tenant points at listens on loopback: the operator allows it, as one would a local model.
    return {"OUTBOUND_ALLOW_HOSTS": "127.0.0.1"}


@pytest.mark.postgres
@pytest.mark.redis
def test_drafts_travel_through_redis_from_an_orchestrator_process(  # type: ignore[no-untyped-def]
    scale_out_api, openai_server  # noqa: F811
) -> None:
    from sqlalchemy import select

    from app.db import session_scope
    from app.models import Tenant
    from gateways.common import load_account

    url, widget, roles = scale_out_api
    account = load_account(container(), "webchat", widget)
    assert account is not None
    with session_scope(cross_tenant="tests") as session:
        slug = session.scalars(select(Tenant.slug).where(Tenant.id == account.tenant_id)).one()
    openai_server.reply(ANSWER)
    openai_server.pause_stream_after(DRAFT_EVERY_CHUNKS, 2 * DRAFT_EVERY_CHUNKS)
    point_llm_at(slug, openai_server, min_relevance=0.3)
    try:
        with httpx.Client(base_url=url, timeout=30) as client:
            session_out = client.post(f"/widget/v1/{widget}/sessions", json={})
            assert session_out.status_code == 201, session_out.text
            auth = {"Authorization": f"Bearer {session_out.json()['token']}"}
            with EventStream(f"{url}/widget/v1/{widget}/events", headers=auth) as events:
                events.next("ready")
                sent = client.post(f"/widget/v1/{widget}/messages", headers=auth,
                                   json={"text": "do gift cards expire?", "client_message_id": "so-stream-1"})
                assert sent.status_code == 202, sent.text
                assert events.next("message").data["direction"] == "in"
                try:
                    drafts, final = watch_a_streamed_reply(events, openai_server)
                except AssertionError:
                    raise AssertionError(roles.logs()) from None
                assert len(drafts) >= 2 and all(ANSWER.startswith(d.data["text"]) for d in drafts)
                assert len(drafts[-1].data["text"]) > len(drafts[0].data["text"])
                assert final.event == "message" and final.data["text"] == ANSWER
                assert final.data["in_reply_to_id"] == sent.json()["message_id"]
    finally:
        openai_server.resume_stream()
        openai_server.resume_stream()
