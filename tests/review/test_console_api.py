"""The console's side of the review API: the live queue stream (per tenant, with tickets), masked texts and
audited reveals, the conversation view, and what viewers may not do."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.admin.conftest import TenantKeys
from tests.auth.conftest import add_person, audit, bearer, email, login
from tests.conftest import REDIS_TEST_URL, Graph
from tests.e2e.sse import EventStream, serve_http
from tests.review.helpers import open_escalation

PII_TEXT = "My email is jane.roe@example.com and my card is 4111 1111 1111 1111, where is my order?"


@pytest.fixture
def notifications() -> Iterator[None]:
    """The consumers that read the events stream (the console wake-ups; webhooks), as `serve` runs them."""
    from app.bootstrap import container
    from app.workers_runtime import notification_consumers

    stop = threading.Event()
    consumers = notification_consumers(container(), container().bus, stop)
    threads = [threading.Thread(target=c.run, daemon=True) for c in consumers]
    for thread in threads:
        thread.start()
    yield
    stop.set()
    for thread in threads:
        thread.join(10)
    assert not any(t.is_alive() for t in threads), "a notification consumer outlived the test"


def _ticket(client: TestClient, headers: dict[str, str]) -> str:
    response = client.post("/review/v1/events/tickets", headers=headers)
    assert response.status_code == 201, response.text
    return response.json()["ticket"]  # type: ignore[no-any-return]


def _next_escalation(stream: EventStream) -> dict[str, Any]:
    while True:
        event = stream.next(timeout=30)
        if event.event == "escalation":
            return event.data  # type: ignore[no-any-return]


@pytest.mark.parametrize("push", ["in-process", "redis"])
def test_the_queue_stream_carries_only_the_agents_own_tenant(
    client: TestClient, tenant_a: TenantKeys, tenant_b: TenantKeys, push: str, graph: Graph,
    request: pytest.FixtureRequest,
) -> None:
    if push == "redis":  # scale-out: wake-ups cross processes on Redis pub/sub
        graph.configure(redis_url=REDIS_TEST_URL, bus_namespace=request.getfixturevalue("redis_namespace"))
    request.getfixturevalue("notifications")
    from app.main import create_app

    waiting_in_a = open_escalation(tenant_a.id, "already waiting in A")
    agent_a = bearer(login(client, add_person(tenant_a, email("ana"), "agent")))
    agent_b = bearer(login(client, add_person(tenant_b, email("ben"), "agent")))
    with serve_http(create_app(run_workers=False)) as base, \
            EventStream(f"{base}/review/v1/events?ticket={_ticket(client, agent_a)}") as stream_a, \
            EventStream(f"{base}/review/v1/events?ticket={_ticket(client, agent_b)}") as stream_b:
        assert stream_a.status == 200 and stream_b.status == 200
        # The current queue first, then `ready`.
        first = stream_a.next("escalation")
        assert first.data["id"] == waiting_in_a.escalation_id
        assert stream_a.next("ready").data == {"open": 1}
        assert stream_b.next("ready").data == {"open": 0}

        in_b = open_escalation(tenant_b.id, "B's question", channel="telegram")
        in_a = open_escalation(tenant_a.id, "A's question")
        # Pushed, not polled: the woken stream sends the new escalation of its own tenant only.
        pushed_a = _next_escalation(stream_a)
        assert pushed_a["id"] == in_a.escalation_id, "tenant A's stream carried another tenant's escalation"
        assert pushed_a["customer_text"] == "A's question" and pushed_a["channel"] == "webchat"
        pushed_b = _next_escalation(stream_b)
        assert pushed_b["id"] == in_b.escalation_id and pushed_b["channel"] == "telegram"

        # A decision closes it in every console of the tenant.
        decided = client.post(f"/review/v1/escalations/{in_a.escalation_id}/decision", headers=agent_a,
                              json={"decision": "reject", "note": "spam"})
        assert decided.status_code == 200, decided.text
        while (event := stream_a.next(timeout=30)).event != "closed":
            assert event.data.get("id") != in_b.escalation_id
        assert event.data == {"id": in_a.escalation_id}

        # Clients that can send headers open the stream with a key or token instead of a ticket.
        with EventStream(f"{base}/review/v1/events", headers=tenant_b.headers("agent")) as stream_key:
            assert stream_key.next("escalation").data["id"] == in_b.escalation_id
            assert stream_key.next("ready").data == {"open": 1}

    # B's escalation still waits for B, and A's API cannot see it either.
    assert client.get(f"/review/v1/escalations/{in_b.escalation_id}", headers=agent_a).status_code == 404
    assert client.get(f"/review/v1/conversations/{in_b.conversation_id}", headers=agent_a).status_code == 404


def test_stream_tickets_cannot_be_forged_used_late_or_moved_to_another_tenant(
    client: TestClient, tenant_a: TenantKeys, tenant_b: TenantKeys,
) -> None:
    from app import keys
    from app.review import console_routes

    agent_a = bearer(login(client, add_person(tenant_a, email("ana"), "agent")))
    ticket = _ticket(client, agent_a)
    tenant, expires, signature = ticket.split(".")
    assert tenant == tenant_a.id
    refused = [
        f"{tenant_b.id}.{expires}.{signature}",  # another tenant, A's signature
        f"{tenant}.{int(expires) + 3600}.{signature}",  # a longer life
        f"{tenant}.{expires}.{'0' * len(signature)}",
        "garbage",
        "",
    ]
    for forged in refused:
        response = client.get("/review/v1/events", params={"ticket": forged})
        assert response.status_code == 401 and "ticket" in response.json()["detail"], forged
    assert client.get("/review/v1/events").status_code == 401  # neither ticket nor login
    past = int(time.time()) - 1  # a genuine ticket whose minute is over
    signature = keys.sign(console_routes.TICKET_LABEL, console_routes._ticket_message(tenant, past))
    expired = f"{tenant}.{past}.{signature}"
    late = client.get("/review/v1/events", params={"ticket": expired})
    assert late.status_code == 401 and "expired" in late.json()["detail"]


def test_texts_are_masked_and_each_reveal_is_audited_with_the_person(
    client: TestClient, tenant_a: TenantKeys, tenant_b: TenantKeys,
) -> None:
    opened = open_escalation(tenant_a.id, PII_TEXT, draft="We wrote to jane.roe@example.com [1].", publish=False)
    dana = add_person(tenant_a, email("dana"), "agent")
    headers = bearer(login(client, dana))

    escalation = client.get(f"/review/v1/escalations/{opened.escalation_id}", headers=headers).json()
    assert "jane.roe@example.com" not in str(escalation)
    assert not re.search(r"(?<![0-9a-f])4111(?![0-9a-f])", str(escalation))  # a hex id may hold "4111"
    assert "[EMAIL]" in escalation["customer_text"] and "[EMAIL]" in escalation["draft"]
    assert escalation["masked"] is True and escalation["channel"] == "webchat"
    assert escalation["passages"][0]["score"] == 0.71 and escalation["passages"][0]["document"] == "shipping.md"
    queue = client.get("/review/v1/escalations", headers=headers).json()
    assert [e["customer_text"] for e in queue] == [escalation["customer_text"]]
    history = client.get(f"/review/v1/conversations/{opened.conversation_id}", headers=headers).json()
    [message] = history["messages"]
    assert message["masked"] is True and "jane.roe" not in message["text"]
    assert audit(client, tenant_a, action="pii.revealed") == []  # reading masked text reveals nothing

    raw = client.post(f"/review/v1/messages/{opened.message_id}/reveal", headers=headers)
    assert raw.status_code == 200 and raw.json()["text"] == PII_TEXT
    both = client.post(f"/review/v1/escalations/{opened.escalation_id}/reveal", headers=headers).json()
    assert both == {"id": opened.escalation_id, "customer_text": PII_TEXT,
                    "draft": "We wrote to jane.roe@example.com [1]."}
    events = audit(client, tenant_a, action="pii.revealed")
    assert [(e["subject_type"], e["subject_id"]) for e in events] == [
        ("escalation", opened.escalation_id), ("message", opened.message_id)]  # newest first
    assert {e["actor"] for e in events} == {f"user:{dana.user_id}"} and events[0]["actor_name"] == dana.email

    # Another tenant's agent: the same 404 as an unknown id, and nothing recorded anywhere.
    other = bearer(login(client, add_person(tenant_b, email("ben"), "agent")))
    assert client.post(f"/review/v1/messages/{opened.message_id}/reveal", headers=other).status_code == 404
    assert client.post(f"/review/v1/escalations/{opened.escalation_id}/reveal", headers=other).status_code == 404
    assert len(audit(client, tenant_a, action="pii.revealed")) == 2
    assert audit(client, tenant_b, action="pii.revealed") == []


def test_viewers_follow_the_queue_but_cannot_reveal_or_decide(client: TestClient, tenant_a: TenantKeys) -> None:
    opened = open_escalation(tenant_a.id, PII_TEXT, publish=False)
    viewer = bearer(login(client, add_person(tenant_a, email("vic"), "viewer")))
    assert client.post("/review/v1/events/tickets", headers=viewer).status_code == 201
    assert client.get(f"/review/v1/conversations/{opened.conversation_id}", headers=viewer).status_code == 200
    assert client.get(f"/review/v1/escalations/{opened.escalation_id}", headers=viewer).status_code == 200
    for path in (f"/review/v1/messages/{opened.message_id}/reveal",
                 f"/review/v1/escalations/{opened.escalation_id}/reveal"):
        refused = client.post(path, headers=viewer)
        assert refused.status_code == 403 and "viewers can read but not act" in refused.json()["detail"]
    for decision in ({"decision": "approve"}, {"decision": "takeover"}):
        refused = client.post(f"/review/v1/escalations/{opened.escalation_id}/decision", headers=viewer,
                              json=decision)
        assert refused.status_code == 403
    assert audit(client, tenant_a, action="pii.revealed") == []
    escalation = client.get(f"/review/v1/escalations/{opened.escalation_id}", headers=viewer).json()
    assert escalation["status"] == "open"


def test_queue_filters_by_reason_channel_and_age(client: TestClient, tenant_a: TenantKeys) -> None:
    web = open_escalation(tenant_a.id, "one", reason="no_knowledge", publish=False)
    tg = open_escalation(tenant_a.id, "two", reason="human_requested", channel="telegram", publish=False)
    headers = tenant_a.headers("agent")

    def ids(**params: Any) -> list[str]:
        response = client.get("/review/v1/escalations", headers=headers, params=params)
        assert response.status_code == 200, response.text
        return [e["id"] for e in response.json()]

    assert ids() == [web.escalation_id, tg.escalation_id]
    assert ids(reason="human_requested") == [tg.escalation_id]
    assert ids(channel="webchat") == [web.escalation_id]
    assert ids(channel="telegram", reason="no_knowledge") == []
    assert ids(older_than_s=0) == [web.escalation_id, tg.escalation_id]
    assert ids(older_than_s=3600) == []
    assert client.get("/review/v1/escalations", headers=headers, params={"older_than_s": -1}).status_code == 422


def test_the_console_page_is_served_without_anything_from_elsewhere(client: TestClient) -> None:
    page = client.get("/console")
    assert page.status_code == 200 and "Switchboard review console" in page.text
    policy = page.headers["content-security-policy"]
    assert "default-src 'self'" in policy and "frame-ancestors 'none'" in policy
    assert "http" not in page.text.replace("http-equiv", "")  # no CDN, no absolute URLs
    for asset in ("/console/static/console.js", "/console/static/console.css"):
        response = client.get(asset)
        assert response.status_code == 200 and len(response.content) > 1000
