"""The escalation webhook: set by tenant admins (never to a private, loopback or link-local address), signed with
the tenant's secret, retried with back-off, at least once."""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from tests.admin.conftest import TenantKeys
from tests.auth.conftest import add_person, audit, bearer, email, login
from tests.fakes.provider_server import Scripted
from tests.fakes.webhook_receiver import WebhookReceiver
from tests.review.helpers import open_escalation


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    fake = WebhookReceiver()
    yield fake
    fake.close()


@pytest.fixture
def loopback_allowed(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    """The fake receiver listens on 127.0.0.1: the operator allows it, as tests/e2e does for fake LLMs."""
    from app.config import get_settings

    monkeypatch.setattr(get_settings(), "outbound_allow_hosts", "127.0.0.1")


def _set(client: TestClient, tenant: TenantKeys, url: str) -> str:
    response = client.put("/admin/v1/webhook", headers=tenant.headers(), json={"url": url})
    assert response.status_code == 200, response.text
    assert response.json()["url"] == url
    return response.json()["secret"]  # type: ignore[no-any-return]


@pytest.mark.parametrize("url", [
    "http://127.0.0.1:9/hook", "http://localhost/hook", "http://[::1]/hook", "http://10.1.2.3/hook",
    "http://192.168.0.10/hook", "http://169.254.169.254/latest/meta-data", "http://[fe80::1]/hook",
    "http://2130706433/hook", "ftp://hooks.example.com/", "not a url",
])
def test_private_loopback_and_link_local_urls_are_refused(client: TestClient, tenant_a: TenantKeys, url: str) -> None:
    response = client.put("/admin/v1/webhook", headers=tenant_a.headers(), json={"url": url})
    assert response.status_code == 422, response.text
    assert "url" in response.json()["detail"]
    assert client.get("/admin/v1/webhook", headers=tenant_a.headers()).status_code == 404


def test_only_admins_set_the_webhook(client: TestClient, tenant_a: TenantKeys) -> None:
    agent = bearer(login(client, add_person(tenant_a, email("ag"), "agent")))
    for headers in (agent, tenant_a.headers("agent")):
        refused = client.put("/admin/v1/webhook", headers=headers, json={"url": "https://hooks.example.com/x"})
        assert refused.status_code == 403
    assert client.get("/admin/v1/webhook", headers=tenant_a.headers()).status_code == 404


def test_a_new_escalation_is_posted_signed_to_its_tenants_webhook_only(
    client: TestClient, tenant_a: TenantKeys, tenant_b: TenantKeys, receiver: WebhookReceiver,
    loopback_allowed: None,
) -> None:
    from app.bootstrap import container
    from app.review.notify import verify_signature
    from app.workers_runtime import notification_consumers

    before = open_escalation(tenant_a.id, publish=True)  # opened before the URL was set: not sent
    secret = _set(client, tenant_a, f"{receiver.url}/hooks/a")
    assert secret.startswith("whsec_") and len(secret) > 40
    got = client.get("/admin/v1/webhook", headers=tenant_a.headers()).json()
    assert got["url"] == f"{receiver.url}/hooks/a" and "secret" not in got
    [event] = audit(client, tenant_a, action="webhook.set")
    assert secret not in json.dumps(event)

    stop = threading.Event()
    consumers = notification_consumers(container(), container().bus, stop)
    threads = [threading.Thread(target=c.run, daemon=True) for c in consumers]
    for thread in threads:
        thread.start()
    try:
        open_escalation(tenant_b.id)  # tenant B has no webhook
        opened = open_escalation(tenant_a.id, "my card is 4111 1111 1111 1111", channel="telegram",
                                 reason="human_requested")
        deadline = time.monotonic() + 30
        while not receiver.sends():
            assert time.monotonic() < deadline, "no webhook delivery"
            time.sleep(0.05)
    finally:
        stop.set()
        for thread in threads:
            thread.join(10)
        assert not any(t.is_alive() for t in threads), "a notification consumer outlived the test"

    [delivery] = receiver.sends()
    assert receiver.path_of(delivery) == "/hooks/a"
    body = delivery.json()
    assert body["type"] == "escalation.opened" and body["tenant"] == tenant_a.slug
    assert body["escalation"]["id"] == opened.escalation_id != before.escalation_id
    assert body["escalation"]["reason"] == "human_requested" and body["escalation"]["channel"] == "telegram"
    assert body["escalation"]["console_url"].endswith(f"/console#escalation={opened.escalation_id}")
    # no customer text leaves in a webhook (a hex id may hold "4111")
    assert not re.search(rb"(?<![0-9a-f])4111(?![0-9a-f])", delivery.body)
    headers = {k.lower(): v for k, v in delivery.headers.items()}
    assert headers["x-switchboard-delivery"] == opened.escalation_id
    assert headers["x-switchboard-event"] == "escalation.opened"
    timestamp, signature = headers["x-switchboard-timestamp"], headers["x-switchboard-signature"]
    assert signature.startswith("v1=")
    assert verify_signature(secret, timestamp, delivery.body, signature)
    # What a receiver must refuse: another body, another secret, a replay long after.
    assert not verify_signature(secret, timestamp, delivery.body.replace(b"telegram", b"whatsapp"), signature)
    assert not verify_signature("whsec_other", timestamp, delivery.body, signature)
    assert not verify_signature(secret, timestamp, delivery.body, signature, now=int(timestamp) + 3600)
    assert not verify_signature(secret, "soon", delivery.body, signature)


def test_failed_deliveries_are_retried_with_back_off_then_left_for_the_bus(
    client: TestClient, tenant_a: TenantKeys, receiver: WebhookReceiver, loopback_allowed: None,
) -> None:
    from app.bootstrap import container
    from app.bus.base import PermanentFailure
    from app.contracts import EVENTS
    from app.review.notify import WebhookFailed, WebhookSender

    _set(client, tenant_a, f"{receiver.url}/hook")
    opened = open_escalation(tenant_a.id)
    bus = container().bus
    bus.ensure_group(EVENTS, "test-webhooks")
    [entry] = bus.read(EVENTS, "test-webhooks", "t", count=10, block_ms=0)
    waits: list[float] = []
    sender = WebhookSender(attempts=3, backoff_s=0.5, sleep=waits.append)

    receiver.fail_next(Scripted(503), Scripted(429))  # then the receiver recovers
    sender.handle(entry)
    assert [r.headers["X-Switchboard-Delivery"] for r in receiver.sends()] == [opened.escalation_id] * 3
    assert waits == [0.5, 1.0]

    receiver.fail_next(Scripted(500), Scripted(502), Scripted(504))
    with pytest.raises(WebhookFailed, match="504"):  # not acked: the bus hands it out again later
        sender.handle(entry)

    receiver.fail_next(Scripted(410))  # the receiver says it is gone: dead-lettered, with the reason
    with pytest.raises(PermanentFailure, match="answered 410"):
        sender.handle(entry)


def test_a_url_that_became_private_is_refused_when_connecting(
    client: TestClient, tenant_a: TenantKeys, receiver: WebhookReceiver, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The check runs on the connection too: allowed when set, no longer allowed when sent (or a DNS name that
    now resolves to a private address) is refused and dead-lettered, and nothing reaches the address."""
    from app.bootstrap import container
    from app.bus.base import PermanentFailure
    from app.config import get_settings
    from app.contracts import EVENTS
    from app.review.notify import WebhookSender

    monkeypatch.setattr(get_settings(), "outbound_allow_hosts", "127.0.0.1")
    _set(client, tenant_a, f"{receiver.url}/hook")
    monkeypatch.setattr(get_settings(), "outbound_allow_hosts", None)
    open_escalation(tenant_a.id)
    bus = container().bus
    bus.ensure_group(EVENTS, "test-webhooks")
    [entry] = bus.read(EVENTS, "test-webhooks", "t", count=10, block_ms=0)
    with pytest.raises(PermanentFailure, match="refused"):
        WebhookSender(sleep=lambda s: None).handle(entry)
    assert receiver.sends() == []


def test_removing_the_webhook_stops_deliveries(
    client: TestClient, tenant_a: TenantKeys, receiver: WebhookReceiver, loopback_allowed: None,
) -> None:
    from app.bootstrap import container
    from app.contracts import EVENTS
    from app.review.notify import WebhookSender

    _set(client, tenant_a, f"{receiver.url}/hook")
    assert client.delete("/admin/v1/webhook", headers=tenant_a.headers()).status_code == 204
    assert client.delete("/admin/v1/webhook", headers=tenant_a.headers()).status_code == 204  # idempotent
    assert client.get("/admin/v1/webhook", headers=tenant_a.headers()).status_code == 404
    open_escalation(tenant_a.id)
    bus = container().bus
    bus.ensure_group(EVENTS, "test-webhooks")
    [entry] = bus.read(EVENTS, "test-webhooks", "t", count=10, block_ms=0)
    WebhookSender(sleep=lambda s: None).handle(entry)
    assert receiver.sends() == []
    assert [e["action"] for e in audit(client, tenant_a, subject_type="tenant")][:2] == ["webhook.removed",
                                                                                        "webhook.set"]
