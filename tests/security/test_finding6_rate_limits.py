"""Finding 6 of the red-team run: no rate limits anywhere (300 sessions in 1.8 s, 200 sends from one visitor,
300 wrong admin keys, 300 wrong webhook secrets, all served).

Each limit is flooded through the ASGI app with small limits (memory storage, then Redis storage for the
failed-auth and widget limits). Over a limit the answer is 429 with `Retry-After` and a `detail` naming the
limit; what is not over its own limit (another visitor, another IP, a valid key, a correctly signed webhook)
is served. Inbound provider messages are never refused by a limit, and a tenant over its LLM limit gets its
message escalated, not dropped."""

from __future__ import annotations

import hashlib
import hmac
import json
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from app.bootstrap import container
from tests.assistant.helpers import FakePassage
from tests.conftest import REDIS_TEST_URL, SHARED_DATA, Graph
from tests.fakes.openai_server import FakeOpenAIServer

WA_SECRET = "wa-app-secret"
WA_PHONE_ID = "1122334455667"
TG_BOT, TG_SECRET = "7000042", "tg-secret-token"
OTHER_IP = ("203.0.113.9", 40000)


@dataclass
class Tenant:
    id: str
    admin_key: str
    widget: str


@dataclass
class Stack:
    app: Any
    client: TestClient  # from the default test client address
    tenant: Tenant

    def client_from(self, address: tuple[str, int]) -> TestClient:
        return TestClient(self.app, client=address)


def _limits(**limits: str) -> dict[str, str]:
    """Generous limits everywhere but the ones under test (RATE_<NAME>), as settings values."""
    defaults = {"WIDGET_SESSIONS_PER_IP": "1000/minute", "WIDGET_SENDS_PER_IP": "1000/minute",
                "WIDGET_SENDS_PER_VISITOR": "1000/minute", "AUTH_FAILURES_PER_IP": "1000/minute",
                "AUTH_FAILURES_PER_KEY": "1000/minute", "WEBHOOK_FAILURES_PER_ACCOUNT": "1000/minute",
                "LLM_CALLS_PER_TENANT": "1000/minute"}
    return {f"rate_{name.lower()}": value for name, value in {**defaults, **limits}.items()}


def _start(**limits: str) -> Callable[..., Stack]:
    """A fixture body: an embedded app (no worker threads) with these limits and one tenant."""

    def start(graph: Graph, redis: str | None = None) -> Stack:
        from app.db import migrate, session_scope
        from app.main import create_app
        from app.tenants.service import create_tenant

        # Scale-out with `redis`: limit storage (and bus) under the test's own key namespace.
        scale_out = {"redis_url": REDIS_TEST_URL, "bus_namespace": redis} if redis is not None else {}
        graph.configure(**_limits(**limits), **scale_out)
        migrate()
        with session_scope(cross_tenant="tests") as session:
            new = create_tenant(session, f"t-{uuid.uuid4().hex[:8]}")
            tenant = Tenant(new.tenant.id, new.admin_api_key, new.widget_id)
        app = create_app(run_workers=False)
        return Stack(app, TestClient(app), tenant)

    return start


def _assert_429(response: Any, names: str) -> None:
    assert response.status_code == 429, response.text
    retry_after = int(response.headers["Retry-After"])
    assert 1 <= retry_after <= 60
    detail = response.json()["detail"]
    assert names in detail and f"retry in {retry_after} s" in detail, detail


def _session(client: TestClient, widget: str) -> Any:
    return client.post(f"/widget/v1/{widget}/sessions", json={})


def _send(client: TestClient, widget: str, token: str, text: str = "hello") -> Any:
    return client.post(f"/widget/v1/{widget}/messages", headers={"Authorization": f"Bearer {token}"},
                       json={"text": text, "client_message_id": uuid.uuid4().hex})


def _stored_inbound(tenant_id: str) -> int:
    from app.db import session_scope
    from app.models import Message

    with session_scope(cross_tenant="tests") as session:
        return int(session.scalar(select(func.count()).select_from(Message).where(
            Message.tenant_id == tenant_id, Message.direction == "in")) or 0)


# ------------------------------------------------------------------------------------------------------- widget


def test_finding6_widget_session_flood_gets_429(graph: Graph) -> None:
    stack = _start(WIDGET_SESSIONS_PER_IP="5/minute")(graph)
    widget = stack.tenant.widget
    assert [_session(stack.client, widget).status_code for _ in range(5)] == [201] * 5
    flood = [_session(stack.client, widget) for _ in range(20)]
    for response in flood:
        _assert_429(response, "new widget sessions per IP address")
    # Another address is not affected.
    assert _session(stack.client_from(OTHER_IP), widget).status_code == 201


def test_finding6_widget_send_flood_gets_429(graph: Graph) -> None:
    stack = _start(WIDGET_SENDS_PER_VISITOR="3/minute")(graph)
    widget = stack.tenant.widget
    flooder, other = (_session(stack.client, widget).json()["token"] for _ in range(2))
    assert [_send(stack.client, widget, flooder).status_code for _ in range(3)] == [202] * 3
    for _ in range(10):
        _assert_429(_send(stack.client, widget, flooder), "messages per visitor")
    # The refused sends were not stored (the visitor may retry them with the same client_message_id); another
    # visitor on the same address still writes.
    assert _stored_inbound(stack.tenant.id) == 3
    assert _send(stack.client, widget, other).status_code == 202
    assert _stored_inbound(stack.tenant.id) == 4


def test_finding6_widget_sends_per_ip_cover_many_visitors(graph: Graph) -> None:
    stack = _start(WIDGET_SENDS_PER_IP="4/minute")(graph)
    widget = stack.tenant.widget
    tokens = [_session(stack.client, widget).json()["token"] for _ in range(6)]
    codes = [_send(stack.client, widget, token).status_code for token in tokens]
    assert codes == [202] * 4 + [429] * 2  # fresh visitors do not reset the address's budget
    _assert_429(_send(stack.client, widget, tokens[0]), "widget messages per IP address")
    elsewhere = stack.client_from(OTHER_IP)
    assert _send(elsewhere, widget, _session(elsewhere, widget).json()["token"]).status_code == 202


# ------------------------------------------------------------------------------------------------- failed auth


def _tenant_get(client: TestClient, key: str) -> Any:
    return client.get("/admin/v1/tenant", headers={"Authorization": f"Bearer {key}"})


def _wrong_key() -> str:
    return f"sb_{uuid.uuid4().hex[:8]}_{uuid.uuid4().hex}"


def _check_failed_auth(stack: Stack) -> None:
    attacker = stack.client
    for _ in range(5):
        assert _tenant_get(attacker, _wrong_key()).status_code == 401
    for _ in range(20):
        _assert_429(_tenant_get(attacker, _wrong_key()), "failed API key attempts per IP address")
    # The address is blocked before any key is checked, so a lucky guess would not be revealed either.
    _assert_429(_tenant_get(attacker, stack.tenant.admin_key), "failed API key attempts per IP address")
    # The owner of the valid key, elsewhere, is not throttled by the attacker's guesses; successes spend nothing.
    owner = stack.client_from(OTHER_IP)
    assert [_tenant_get(owner, stack.tenant.admin_key).status_code for _ in range(30)] == [200] * 30


def test_finding6_wrong_admin_key_flood_gets_429(graph: Graph) -> None:
    _check_failed_auth(_start(AUTH_FAILURES_PER_IP="5/minute")(graph))


def test_finding6_one_wrong_key_from_many_addresses_gets_429(graph: Graph) -> None:
    stack = _start(AUTH_FAILURES_PER_KEY="3/minute")(graph)
    stale = _wrong_key()  # a revoked key a misconfigured fleet keeps sending
    codes = [_tenant_get(stack.client_from((f"198.51.100.{i}", 1000)), stale).status_code for i in range(1, 8)]
    assert codes == [401] * 3 + [429] * 4
    _assert_429(_tenant_get(stack.client, stale), "failed attempts with this API key")
    assert _tenant_get(stack.client, stack.tenant.admin_key).status_code == 200  # other keys are unaffected


def test_finding6_review_api_wrong_agent_keys_get_429(graph: Graph) -> None:
    stack = _start(AUTH_FAILURES_PER_IP="3/minute")(graph)
    codes = [stack.client.get("/review/v1/escalations", headers={"Authorization": f"Bearer {_wrong_key()}"})
             .status_code for _ in range(5)]
    assert codes == [401] * 3 + [429] * 2


# ------------------------------------------------------------------------------------------------------- Redis


@pytest.mark.redis
def test_finding6_redis_failed_auth_flood_gets_429_across_replicas(
    graph: Graph, redis_namespace: str
) -> None:
    import redis

    start = _start(AUTH_FAILURES_PER_IP="5/minute")
    _check_failed_auth(start(graph, redis=redis_namespace))
    # A second replica (a new process: a new limiter, a new app) sees the same counts in Redis.
    from app.bootstrap import container
    from app.main import create_app

    graph.configure()
    replica = TestClient(create_app(run_workers=False))
    _assert_429(_tenant_get(replica, _wrong_key()), "failed API key attempts per IP address")
    container().rate_limiter.close()
    # Keys live under the deployment's namespace, and identities are hashed: no address or key in Redis.
    client = redis.Redis.from_url(REDIS_TEST_URL)
    keys = [k.decode() for k in client.scan_iter(f"{redis_namespace}:_rl:*")]
    client.close()
    assert keys and all("testclient" not in k and "sb_" not in k for k in keys)


@pytest.mark.redis
def test_finding6_redis_widget_send_flood_gets_429(
    graph: Graph, redis_namespace: str
) -> None:
    stack = _start(WIDGET_SENDS_PER_VISITOR="3/minute")(graph, redis=redis_namespace)
    widget = stack.tenant.widget
    token = _session(stack.client, widget).json()["token"]
    assert [_send(stack.client, widget, token).status_code for _ in range(3)] == [202] * 3
    _assert_429(_send(stack.client, widget, token), "messages per visitor")
    from app.bootstrap import container

    container().bus.close()


# ---------------------------------------------------------------------------------------------------- webhooks


def _wa_body(n: int) -> bytes:
    body = json.loads((SHARED_DATA / "webhooks" / "whatsapp" / "updates" / "message.json").read_text())["text"]
    message = body["entry"][0]["changes"][0]["value"]["messages"][0]
    message["id"], message["text"]["body"] = f"wamid.flood{n}", f"question number {n}"
    return json.dumps(body).encode()


def _wa_post(client: TestClient, raw: bytes, secret: str = WA_SECRET) -> Any:
    signature = "sha256=" + hmac.new(secret.encode(), raw, hashlib.sha256).hexdigest()
    return client.post("/webhooks/whatsapp", content=raw,
                       headers={"Content-Type": "application/json", "X-Hub-Signature-256": signature})


@pytest.fixture
def webhooks(graph: Graph) -> Iterator[Stack]:
    from app.bootstrap import container
    from app.db import session_scope
    from gateways.accounts import add_channel_account

    stack = _start(WEBHOOK_FAILURES_PER_ACCOUNT="3/minute")(graph)
    with session_scope(cross_tenant="tests") as session:
        add_channel_account(session, container().channels, stack.tenant.id, "whatsapp", WA_PHONE_ID,
                            credentials={"app_secret": WA_SECRET, "access_token": "tok", "verify_token": "vt"})
        add_channel_account(session, container().channels, stack.tenant.id, "telegram", TG_BOT,
                            credentials={"bot_token": f"{TG_BOT}:AAA", "secret_token": TG_SECRET})
    yield stack


def test_finding6_webhook_wrong_signature_flood_gets_429(webhooks: Stack) -> None:
    client = webhooks.client
    forged = [_wa_post(client, _wa_body(n), secret="guess") for n in range(10)]
    assert [r.status_code for r in forged[:3]] == [401] * 3
    for response in forged[3:]:
        _assert_429(response, "at most 3 webhooks")  # forged: signed by none of the accounts
    # Correctly signed deliveries for the same account are served (and stored) while the forgeries are refused.
    assert _wa_post(client, _wa_body(100)).status_code == 200
    assert _stored_inbound(webhooks.tenant.id) == 1


def test_finding6_webhook_wrong_secret_token_flood_gets_429(webhooks: Stack) -> None:
    def update(n: int, secret: str) -> Any:
        return webhooks.client.post(
            f"/webhooks/telegram/{TG_BOT}", headers={"X-Telegram-Bot-Api-Secret-Token": secret},
            json={"update_id": n, "message": {"message_id": n, "date": 1700000000, "text": f"hi {n}",
                                              "chat": {"id": 42, "type": "private"},
                                              "from": {"id": 42, "is_bot": False, "first_name": "A"}}},
        )

    codes = [update(n, "wrong").status_code for n in range(6)]
    assert codes == [403] * 3 + [429] * 3
    assert update(99, TG_SECRET).status_code == 200
    assert _stored_inbound(webhooks.tenant.id) == 1


def test_finding6_webhook_flood_of_valid_messages_is_all_stored(webhooks: Stack) -> None:
    """Limits count failures only: a burst of genuine provider messages, far beyond every limit configured in
    this test, is acknowledged and stored in full, even while forgeries for the account are being refused."""
    client = webhooks.client
    for n in range(10):
        _wa_post(client, _wa_body(10_000 + n), secret="guess")  # the account's failure budget is spent
    codes = [_wa_post(client, _wa_body(n)).status_code for n in range(150)]
    assert codes == [200] * 150
    assert _stored_inbound(webhooks.tenant.id) == 150


# --------------------------------------------------------------------------------------------------------- LLM


def test_finding6_tenant_llm_limit_escalates_instead_of_dropping(graph: Graph) -> None:
    from app.assistant.orchestrator import Orchestrator
    from app.bus.consumer import Consumer
    from app.bus.memory import MemoryBus
    from app.config import get_settings
    from app.contracts import INBOUND
    from app.conversations.service import accept_inbound
    from app.db import migrate, session_scope
    from app.models import Escalation, Message
    from app.tenants.service import create_tenant

    with FakeOpenAIServer(api_key="sk-operator") as llm:
        llm.reply("Gift cards never expire [1].")
        # The operator's own endpoint.
        graph.configure(**_limits(LLM_CALLS_PER_TENANT="2/minute"), llm_base_url=llm.base_url, llm_api_key=llm.api_key)
        assert get_settings().llm_base_url == llm.base_url
        migrate()
        with session_scope(cross_tenant="tests") as session:
            tenants = []
            for slug in ("busy", "quiet"):
                row = create_tenant(session, slug).tenant
                row.live_pack_version = 1
                tenants.append(row.id)
        busy, quiet = tenants
        bus = MemoryBus()
        passage = FakePassage("c1", "faq.csv", "Gift cards", "Gift cards never expire.", 0.9)
        orchestrator = Orchestrator.of(container(), bus=bus, retrieve=lambda *a, **k: [passage])
        ids = [accept_inbound(bus, tenant_id=tenant, channel="webchat", contact_external_id=f"v_{n}",
                              provider_message_id=f"m{n}", text="do gift cards expire?").message_id
               for n, tenant in enumerate([busy, busy, busy, busy, quiet])]
        Consumer(bus, INBOUND, "orchestrator", "t1", orchestrator.handle, claim_idle_ms=0).process_available()

        with session_scope(cross_tenant="tests") as session:
            statuses = [session.get_one(Message, i).status for i in ids]
            escalations = {e.message_id: e for e in session.scalars(select(Escalation))}
        assert statuses == ["answered", "answered", "escalated", "escalated", "answered"]
        assert len(llm.completion_requests) == 3  # two for the busy tenant, one for the quiet one
        for message_id in ids[2:4]:
            escalation = escalations[message_id]
            assert escalation.reason == "llm_rate_limited"
            assert "LLM calls per tenant" in (escalation.detail or "")
            assert escalation.draft  # the offline draft, for the agent to send or edit
        assert bus.dead_letters(INBOUND, busy) == []


def test_finding6_a_malformed_limit_setting_names_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    from pydantic import ValidationError

    from app.config import Settings

    monkeypatch.setenv("SWITCHBOARD_RATE_WIDGET_SENDS_PER_IP", "lots")
    with pytest.raises(ValidationError, match="write it like '20/minute'"):
        Settings()
    monkeypatch.setenv("SWITCHBOARD_RATE_WIDGET_SENDS_PER_IP", "")
    assert Settings().rate_widget_sends_per_ip == ""  # empty turns the limit off
