"""Findings 1 and 2 of the red-team run: the operator's LLM key never goes to a tenant's URL, and tenant-set URLs
(an LLM base URL, a channel's `api_base_url`) never reach loopback, private, link-local or metadata addresses,
neither when saved (422 naming the rule) nor when used (checked on the address the socket connects to)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from app.bootstrap import container
from app.netguard import blocked_reason, check_url, guarded_client2, guarded_transport
from tests.assistant.helpers import FakePassage
from tests.conftest import Graph
from tests.fakes.fake_telegram import FakeTelegram
from tests.fakes.openai_server import FakeOpenAIServer

HOSTILE_URLS = [
    "http://127.0.0.1:6379",
    "http://localhost:6379/v1",
    "http://2130706433/v1",  # 127.0.0.1 as one decimal number
    "http://0x7f.1/v1",  # 127.0.0.1, hex and short form
    "http://0177.0.0.1/v1",  # octal
    "http://[::1]:8080/v1",
    "http://[::ffff:127.0.0.1]/v1",  # IPv4-mapped IPv6
    "http://169.254.169.254/latest/meta-data",  # cloud metadata
    "http://10.0.0.5/v1",
    "http://192.168.1.1/v1",
    "http://172.16.0.1/v1",
    "http://100.64.0.1/v1",  # carrier-grade NAT
    "http://0.0.0.0:8080/v1",
    "http://[fd00:ec2::254]/",  # metadata over IPv6
    "http://224.0.0.1/",  # multicast
    "file:///etc/passwd",
    "gopher://127.0.0.1:6379/_INFO",
]


@pytest.fixture
def servers() -> Iterator[tuple[FakeOpenAIServer, FakeOpenAIServer]]:
    """The operator's LLM and a tenant's, both on loopback."""
    with FakeOpenAIServer(api_key="sk-operator-secret") as operator, FakeOpenAIServer(api_key="sk-tenant") as own:
        operator.reply("Gift cards never expire [1].")  # grounded in the test's passage: the checks send it
        own.reply("Gift cards never expire [1].")
        yield operator, own


@pytest.fixture
def tenant(sb_home: Path) -> str:
    from app.db import migrate, session_scope
    from app.tenants.service import create_tenant

    migrate()
    with session_scope(cross_tenant="tests") as session:
        row = create_tenant(session, "acme").tenant
        row.live_pack_version = 1  # retrieval runs (answered by the passage below)
        return row.id


def _set_llm(tenant_id: str, llm: dict[str, Any] | None, own_key: str | None = None) -> None:
    """Straight into the row: as a policy saved before the rule existed, or a name that resolved elsewhere then."""
    from app.crypto import encrypt_json
    from app.db import session_scope
    from app.models import Tenant

    with session_scope(cross_tenant="tests") as session:
        row = session.get_one(Tenant, tenant_id)
        row.policies = {**(row.policies or {}), **({"llm": llm} if llm else {})}
        row.llm_api_key_encrypted = encrypt_json({"api_key": own_key}) if own_key else None


def _ask(tenant_id: str, text: str = "do gift cards expire?") -> tuple[str, str | None]:
    """One customer message through the orchestrator; its final status and the escalation's detail."""
    from app.assistant.orchestrator import Orchestrator
    from app.bus.consumer import Consumer
    from app.bus.memory import MemoryBus
    from app.contracts import INBOUND
    from app.conversations.service import accept_inbound
    from app.db import session_scope
    from app.models import Escalation, Message

    bus = MemoryBus()
    passage = FakePassage("c1", "faq.csv", "Gift cards", "Gift cards never expire.", 0.9)
    orchestrator = Orchestrator.of(container(), bus=bus, retrieve=lambda *a, **k: [passage])
    accepted = accept_inbound(bus, tenant_id=tenant_id, channel="webchat", contact_external_id="v_1",
                              provider_message_id=f"m-{text}", text=text)
    Consumer(bus, INBOUND, "orchestrator", "t1", orchestrator.handle, claim_idle_ms=0).process_available()
    with session_scope(cross_tenant="tests") as session:
        status = session.get_one(Message, accepted.message_id).status
        escalation = session.scalars(select(Escalation).where(Escalation.message_id == accepted.message_id)).first()
        return status, escalation.detail if escalation else None


def test_finding1_tenant_llm_url_never_receives_the_operators_key(tenant: str, servers, graph: Graph) -> None:
    operator, own = servers
    graph.configure(llm_base_url=operator.base_url, llm_api_key=operator.api_key,
                    outbound_allow_hosts="127.0.0.1")  # both fakes are on loopback; the rule under test is the key's
    _set_llm(tenant, {"base_url": own.base_url, "model": "m"})  # its own URL, no key of its own

    _ask(tenant)
    assert own.completion_requests, "the tenant's own endpoint is used"
    sent = {r.headers.get("authorization") for r in own.requests}
    assert f"Bearer {operator.api_key}" not in sent and sent == {"Bearer unused"}
    assert operator.requests == []

    # With its own key, that key goes to its own URL; without an own URL the operator's key goes to the
    # operator's URL only.
    _set_llm(tenant, {"base_url": own.base_url, "model": "m"}, own_key=own.api_key)
    assert _ask(tenant, "second question")[0] == "answered"
    assert own.requests[-1].headers["authorization"] == f"Bearer {own.api_key}"
    _set_llm(tenant, {"model": "m"})
    assert _ask(tenant, "third question")[0] == "answered"
    assert [r.headers["authorization"] for r in operator.requests] == [f"Bearer {operator.api_key}"]


def test_finding1_operator_llm_on_loopback_stays_allowed(tenant: str, servers, graph: Graph) -> None:
    operator, _ = servers
    graph.configure(llm_base_url=operator.base_url, llm_api_key=operator.api_key, outbound_allow_hosts=None)
    assert _ask(tenant)[0] == "answered"
    assert len(operator.completion_requests) == 1


def test_finding2_stored_internal_llm_url_is_refused_when_connecting(tenant: str, servers, graph: Graph) -> None:
    _, internal = servers  # stands for Redis, a metadata service, an admin port on the private network
    graph.configure(llm_base_url=None, outbound_allow_hosts=None)
    _set_llm(tenant, {"base_url": internal.base_url, "model": "m", "max_retries": 0}, own_key=internal.api_key)

    status, detail = _ask(tenant)
    assert internal.requests == [], "no byte may reach the internal address"
    assert status == "escalated"
    assert detail is not None and "loopback" in detail and "OUTBOUND_ALLOW_HOSTS" in detail

    # The operator can allow a host (a local model server); then it is reached.
    graph.configure(outbound_allow_hosts=f"127.0.0.1:{internal.port}")
    assert _ask(tenant, "again")[0] == "answered"
    assert len(internal.completion_requests) == 1


@pytest.mark.parametrize("url", HOSTILE_URLS)
def test_finding2_static_check_refuses_internal_urls(url: str, sb_home: Path) -> None:
    problem = check_url(url)
    assert problem is not None and url in problem


@pytest.mark.parametrize("url", ["https://api.openai.com/v1", "https://llm.example.com:8443/v1", "http://8.8.8.8/v1"])
def test_finding2_static_check_accepts_public_urls(url: str, sb_home: Path) -> None:
    assert check_url(url) is None


def test_finding2_names_are_checked_on_the_resolved_address(sb_home: Path, servers) -> None:
    """The transport knows no names: it resolves, and refuses what the name resolved to, for both HTTP libraries
    (httpx for providers, httpx2 for the openai SDK)."""
    _, target = servers
    for url in (f"http://localhost:{target.port}/v1/models", f"http://127.1:{target.port}/v1/models"):
        with httpx.Client(transport=guarded_transport()) as client, pytest.raises(httpx.ConnectError) as caught:
            client.get(url)
        assert "loopback" in (blocked_reason(caught.value) or "")
        with guarded_client2() as client2, pytest.raises(Exception) as caught2:
            client2.get(url)
        assert "loopback" in (blocked_reason(caught2.value) or "")
    assert target.requests == []


@pytest.fixture
def admin(sb_home: Path) -> Iterator[tuple[TestClient, dict[str, str], str]]:
    from app.bootstrap import container
    from app.db import migrate, session_scope
    from app.main import create_app
    from app.tenants.service import create_tenant
    from gateways.accounts import add_channel_account

    migrate()
    with session_scope(cross_tenant="tests") as session:
        new = create_tenant(session, "acme")
        account = add_channel_account(session, container().channels, new.tenant.id, "telegram", "5550001",
                                      credentials={"bot_token": "5550001:AAH", "secret_token": "s"})
        headers, account_id = {"Authorization": f"Bearer {new.admin_api_key}"}, account.id
    with TestClient(create_app(run_workers=False)) as client:
        yield client, headers, account_id


@pytest.mark.parametrize("url", HOSTILE_URLS)
def test_finding2_admin_api_refuses_internal_urls(admin, url: str) -> None:
    client, headers, account_id = admin
    before = client.get("/admin/v1/tenant", headers=headers).json()["policies"]
    r = client.patch("/admin/v1/tenant", headers=headers, json={"policies": {"llm": {"base_url": url}}})
    assert r.status_code == 422 and "base_url" in r.json()["detail"], r.text
    assert client.get("/admin/v1/tenant", headers=headers).json()["policies"] == before

    r = client.patch(f"/admin/v1/channels/{account_id}", headers=headers, json={"config": {"api_base_url": url}})
    assert r.status_code == 422 and "api_base_url" in r.json()["detail"], r.text
    assert "api_base_url" not in client.get("/admin/v1/channels", headers=headers).text


def test_finding2_admin_api_takes_a_public_channel_api_base(admin) -> None:
    client, headers, account_id = admin
    r = client.patch(f"/admin/v1/channels/{account_id}", headers=headers,
                     json={"config": {"api_base_url": "https://tg-bot-api.example.com"}})
    assert r.status_code == 200 and r.json()["config"]["api_base_url"] == "https://tg-bot-api.example.com"


def test_finding2_channel_send_to_internal_api_base_fails_and_reaches_nothing(admin, monkeypatch) -> None:
    """A channel account whose stored `api_base_url` points inside: the reply fails permanently with the rule's
    reason and the address gets no request carrying the bot token."""
    from app.db import session_scope
    from app.models import ChannelAccount, Message
    from gateways.outbound import ProviderSender
    from gateways.telegram.send import TelegramSender
    from tests.factories import get_or_create_contact, get_or_create_conversation
    from tests.gateways.test_outbound import deliver, reply

    _, _, account_id = admin
    fake = FakeTelegram()
    try:
        with session_scope(cross_tenant="tests") as session:
            account = session.get_one(ChannelAccount, account_id)
            account.config = {"api_base_url": fake.url}
            contact = get_or_create_contact(session, account.tenant_id, "telegram", "4242")
            conversation_id = get_or_create_conversation(session, account.tenant_id, contact, account_id).id
        sender = TelegramSender()
        assert isinstance(sender, ProviderSender) and sender.guarded(account)
        from tests.gateways.test_outbound import use

        use(monkeypatch, "telegram", sender)
        event = reply(conversation_id, "hello")
        deliver(event)  # a permanent failure: recorded on the message, not retried
        with session_scope(cross_tenant="tests") as session:
            message = session.get_one(Message, event.message_id)
            assert message.status == "failed", message.status
            assert "loopback" in (message.error or "") and "OUTBOUND_ALLOW_HOSTS" in (message.error or "")
        assert fake.requests == []
    finally:
        fake.close()
