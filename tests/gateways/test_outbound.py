"""Outbound senders against local fake providers speaking the real HTTP APIs, driven through the dispatcher."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from app.bus.base import PermanentFailure  # noqa: F401 - documents what the dispatcher may raise
from app.channels import SendError
from gateways.outbound import Limit, RateLimiter, split_text
from gateways.ussd.routes import sms_account
from tests.fakes.fake_discord import FakeDiscord, rate_limited
from tests.fakes.fake_meta import FakeGraph
from tests.fakes.fake_telegram import FakeTelegram, flood
from tests.fakes.fake_twilio import FakeTwilio
from tests.fakes.provider_server import Scripted
from tests.gateways.conftest import Gateway


class FakeClock:
    """Time that only moves when someone sleeps: spacing is checked without timing anything."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(round(seconds, 3))
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def graph() -> Iterator[FakeGraph]:
    fake = FakeGraph()
    yield fake
    fake.close()


def conversation(gw: Gateway, channel: str, external_id: str, credentials: dict[str, Any], contact: str,
                 config: dict[str, Any] | None = None, last_inbound_ago: timedelta | None = timedelta(minutes=5)
                 ) -> tuple[str, str, str]:
    from app.db import session_scope
    from app.models import utcnow
    from tests.factories import get_or_create_contact, get_or_create_conversation

    tenant = gw.tenant()
    account_id = gw.account(tenant, channel, external_id, credentials, config)
    with session_scope(cross_tenant="tests") as session:
        c = get_or_create_contact(session, tenant, channel, contact)
        c.last_inbound_at = utcnow() - last_inbound_ago if last_inbound_ago is not None else None
        conv = get_or_create_conversation(session, tenant, c, account_id)
        return tenant, conv.id, account_id


def reply(conv_id: str, text: str, author: str = "bot", key: str = "reply:1", in_reply_to: str | None = None) -> Any:
    from app.conversations.replies import add_outbound, outbound_event
    from app.db import session_scope
    from app.models import Conversation

    with session_scope(cross_tenant="tests") as session:
        conv = session.get_one(Conversation, conv_id)
        msg, _ = add_outbound(session, conv, key=key, text=text, author=author, in_reply_to_id=in_reply_to)
        return outbound_event(msg, conv)


def stored(message_id: str) -> Any:
    from app.db import session_scope
    from app.models import Message

    with session_scope(cross_tenant="tests") as session:
        msg = session.get_one(Message, message_id)
        session.expunge(msg)
        return msg


def deliver(event: Any) -> None:
    from app.bootstrap import container
    from app.conversations.dispatcher import Dispatcher

    Dispatcher(container().senders, container().push).deliver(event)


def redeliver(event: Any, attempts: int = 6) -> list[Exception]:
    """Deliver as the bus does: a delivery that fails transiently stays pending and is redelivered once the claim
    time (30 s of a fake clock) has passed, until it goes through. Returns the failures on the way."""
    from app.bootstrap import container
    from app.conversations.dispatcher import DeliveryBusy, Dispatcher
    from app.models import utcnow

    now = [utcnow()]
    failures: list[Exception] = []
    for _ in range(attempts):
        try:
            Dispatcher(container().senders, container().push, clock=lambda: now[0]).deliver(event)
            return failures
        except (SendError, DeliveryBusy) as exc:
            failures.append(exc)
            now[0] += timedelta(seconds=30)
    raise AssertionError(f"still not delivered after {attempts} deliveries: {failures}")


def use(monkeypatch: pytest.MonkeyPatch, channel: str, sender: Any) -> None:
    from app.bootstrap import container

    monkeypatch.setitem(container().senders, channel, sender)


def use_fake(monkeypatch: pytest.MonkeyPatch, channel: str, fake: Any, clock: FakeClock) -> None:
    """Send `channel` through its real sender, pointed at `fake`, with time from `clock`."""
    from app.bootstrap import container
    from gateways.outbound import ProviderSender

    real = container().senders[channel]
    assert isinstance(real, ProviderSender)
    use(monkeypatch, channel, type(real)(base_url=fake.url, limiter=RateLimiter(clock, clock.sleep)))


@pytest.fixture
def telegram_api() -> Iterator[FakeTelegram]:
    fake = FakeTelegram()
    yield fake
    fake.close()


LONG = " ".join(f"Sentence number {i} explains one more detail of the return policy." for i in range(200))


# ------------------------------------------------------------------------------------------------------ splitting

def test_split_text_respects_limits_and_boundaries() -> None:
    for limit in (1000, 1600, 4096):
        parts = split_text(LONG, limit)
        assert all(len(p) <= limit for p in parts) and len(parts) > 1
        assert " ".join(parts) == LONG  # nothing lost or reordered
        assert all(p.endswith(".") for p in parts)  # cut at sentence ends
    assert split_text("x" * 25, 10) == ["x" * 10, "x" * 10, "x" * 5]
    assert split_text("short", 10) == ["short"]


# ------------------------------------------------------------------------------------------------------ WhatsApp

def wa(gw: Gateway, graph: FakeGraph, clock: FakeClock, monkeypatch: pytest.MonkeyPatch, **kw: Any) -> tuple[str, str]:
    from gateways.whatsapp.send import WhatsAppSender

    tenant, conv, _ = conversation(gw, "whatsapp", f"pn{id(kw) % 10**8}{len(clock.sleeps)}{kw.get('tag', '')}",
                                   {"app_secret": "s", "verify_token": "v", "access_token": "EAAG"},
                                   "15550001111", config=kw.get("config"),
                                   last_inbound_ago=kw.get("ago", timedelta(minutes=5)))
    use(monkeypatch, "whatsapp", WhatsAppSender(base_url=graph.url, limiter=RateLimiter(clock, clock.sleep),
                                                timeout=kw.get("timeout", 5.0)))
    return tenant, conv


def test_whatsapp_splits_and_records_every_part(gw: Gateway, graph: FakeGraph, clock: FakeClock,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    _, conv = wa(gw, graph, clock, monkeypatch)
    event = reply(conv, LONG)
    deliver(event)
    sends = graph.sends()
    assert len(sends) == len(split_text(LONG, 4096)) == 4
    assert [r.json()["text"]["body"] for r in sends] == split_text(LONG, 4096)
    assert sends[0].headers["Authorization"] == "Bearer EAAG" and sends[0].json()["to"] == "15550001111"
    msg = stored(event.message_id)
    assert msg.status == "sent" and msg.meta["provider_ids"] == [f"wamid.fake{i}" for i in range(1, 5)]
    assert msg.provider_ref == "wamid.fake1"  # receipts name the first part's id
    deliver(event)  # redelivered event: nothing more is sent
    assert len(graph.sends()) == 4


def test_whatsapp_retries_429_and_5xx_then_sends_once(gw: Gateway, graph: FakeGraph, clock: FakeClock,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    _, conv = wa(gw, graph, clock, monkeypatch, tag="r")
    graph.fail_next(Scripted(429, {"error": {"code": 130429}}, {"Retry-After": "2"}), Scripted(503, {}))
    event = reply(conv, "Hello!")
    failures = redeliver(event)  # retried by redelivery, never slept in place
    assert len(graph.sends()) == 3  # 429, 503, success
    assert [f.retry_after for f in failures if isinstance(f, SendError)] == [2.0, None]  # Retry-After read
    assert all(s < 0.1 for s in clock.sleeps)  # only the 80/s spacing: no retry waits in place
    msg = stored(event.message_id)
    assert msg.status == "sent" and msg.meta["provider_ids"] == ["wamid.fake1"]


def test_whatsapp_timeout_is_transient_and_retried(gw: Gateway, graph: FakeGraph, clock: FakeClock,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    _, conv = wa(gw, graph, clock, monkeypatch, tag="t", timeout=0.3)
    graph.fail_next(Scripted(200, {"messages": [{"id": "wamid.late"}]}, delay=1.0))
    event = reply(conv, "Hi")
    assert len(redeliver(event)) == 1  # the timeout, then the redelivery
    assert stored(event.message_id).meta["provider_ids"] == ["wamid.fake1"]


def test_no_double_send_when_a_later_part_fails(gw: Gateway, graph: FakeGraph, clock: FakeClock,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    _, conv = wa(gw, graph, clock, monkeypatch, tag="d")
    event = reply(conv, LONG)
    # Part 1 succeeds, part 2 fails on every in-place attempt: the dispatcher leaves the event for redelivery.
    graph.fail_next()
    original = graph.respond
    calls = {"n": 0}

    def flaky(rec: Any) -> Any:
        calls["n"] += 1
        if 2 <= calls["n"] <= 4:
            return 500, {"error": {"message": "boom"}}, {}
        return original(rec)

    monkeypatch.setattr(graph, "respond", flaky)
    with pytest.raises(SendError) as info:
        deliver(event)
    assert not info.value.permanent
    msg = stored(event.message_id)
    assert msg.status == "pending" and len(msg.meta["provider_ids"]) == 1
    redeliver(event)  # the bus redelivers
    bodies = [r.json()["text"]["body"] for r in graph.sends()]
    parts = split_text(LONG, 4096)
    delivered = [b for b, r in zip(bodies, range(len(bodies)), strict=True) if not 2 <= r + 1 <= 4]
    assert delivered == parts  # each part accepted exactly once, in order
    assert stored(event.message_id).status == "sent"


def test_whatsapp_24h_window(gw: Gateway, graph: FakeGraph, clock: FakeClock,
                             monkeypatch: pytest.MonkeyPatch) -> None:
    _, conv = wa(gw, graph, clock, monkeypatch, tag="w", ago=timedelta(hours=25))
    event = reply(conv, "Free-form text")
    deliver(event)
    msg = stored(event.message_id)
    assert msg.status == "failed" and "outside_24h_window" in msg.error
    assert graph.sends() == []
    _, conv2 = wa(gw, graph, clock, monkeypatch, tag="w2", ago=timedelta(days=3),
                  config={"template": {"name": "follow_up", "language": "en_US"}})
    event2 = reply(conv2, "Free-form text")
    deliver(event2)
    (sent,) = graph.sends()
    assert sent.json()["type"] == "template" and sent.json()["template"]["name"] == "follow_up"
    assert "text" not in sent.json()


def test_whatsapp_rate_limit_spacing(gw: Gateway, graph: FakeGraph, clock: FakeClock,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    _, conv = wa(gw, graph, clock, monkeypatch, tag="s", config={"messages_per_second": 2})
    deliver(reply(conv, LONG))
    assert clock.sleeps == [0.5, 0.5, 0.5]  # four parts, 2 per second on this number


def test_permanent_error_is_recorded(gw: Gateway, graph: FakeGraph, clock: FakeClock,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    _, conv = wa(gw, graph, clock, monkeypatch, tag="p")
    graph.fail_next(Scripted(400, {"error": {"message": "(#131030) Recipient not in allowed list"}}))
    event = reply(conv, "Hi")
    deliver(event)
    msg = stored(event.message_id)
    assert msg.status == "failed" and "131030" in msg.error and len(graph.sends()) == 1


# ------------------------------------------------------------------------------------------------------ Instagram

def test_instagram_human_agent_tag(gw: Gateway, graph: FakeGraph, clock: FakeClock,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from gateways.instagram.send import InstagramSender

    _, conv, _ = conversation(gw, "instagram", "17840000001", {"app_secret": "s", "verify_token": "v",
                                                              "access_token": "IGQ"}, "igsid-1")
    use(monkeypatch, "instagram", InstagramSender(base_url=graph.url, limiter=RateLimiter(clock, clock.sleep)))
    deliver(reply(conv, "From the bot", key="k1"))
    deliver(reply(conv, "x " * 700, author="agent:dana", key="k2"))
    bot, *agent = [r.json() for r in graph.sends()]
    assert bot["messaging_type"] == "RESPONSE" and "tag" not in bot
    assert len(agent) == 2 and all(a["tag"] == "HUMAN_AGENT" and a["messaging_type"] == "MESSAGE_TAG" for a in agent)
    assert all(len(a["message"]["text"]) <= 1000 for a in agent)
    assert graph.path_of(graph.sends()[0]) == "/17840000001/messages"


# ------------------------------------------------------------------------------------------------------ Telegram

def test_telegram_sends_with_ptb_rate_limited_per_chat(gw: Gateway, telegram_api: FakeTelegram, clock: FakeClock,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    fake = telegram_api
    _, conv, _ = conversation(gw, "telegram", "5550001", {"bot_token": "5550001:AAH", "secret_token": "s"}, "4242")
    use_fake(monkeypatch, "telegram", fake, clock)
    fake.fail_next(flood(3))
    text = "word " * 1700  # 8500 characters -> 3 parts
    event = reply(conv, text)
    failures = redeliver(event)
    texts = fake.texts()
    assert [c for c, _ in texts] == ["4242"] * 4  # the flood-controlled attempt, then three parts
    assert [t for _, t in texts[1:]] == split_text(text, 4096)
    assert all(r.path.startswith("/bot5550001:AAH/") for r in fake.requests)
    assert [f.retry_after for f in failures if isinstance(f, SendError)] == [3.0]  # retry_after read, not slept
    assert clock.sleeps.count(1.0) >= 2  # one message per second to the same chat
    assert stored(event.message_id).meta["provider_ids"][0].startswith("4242:")


def test_telegram_answers_the_callback_query_before_replying(
        gw: Gateway, telegram_api: FakeTelegram, clock: FakeClock, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.gateways.conftest import WEBHOOKS

    fake = telegram_api
    bot_id = str(5_600_000 + uuid.uuid4().int % 100_000)
    gw.account(gw.tenant(), "telegram", bot_id, {"bot_token": f"{bot_id}:AAH", "secret_token": "s3"})
    use_fake(monkeypatch, "telegram", fake, clock)
    # A real callback_query object (a pressed inline button), through the real webhook endpoint.
    cb = json.loads((WEBHOOKS / "telegram" / "objects_teloxide" / "callback_query__deserialize.json").read_text())
    query_id = f"cbq-{uuid.uuid4().hex[:8]}"
    update = {"update_id": 77, "callback_query": {**cb, "id": query_id}}
    assert gw.client.post(f"/webhooks/telegram/{bot_id}", json=update,
                          headers={"X-Telegram-Bot-Api-Secret-Token": "s3"}).json()["accepted"] == 1
    (pressed,) = gw.inbound(provider_message_id=f"callback:{query_id}")
    event = reply(pressed.conversation_id, "You chose some_data.", in_reply_to=pressed.id)
    deliver(event)
    methods = [fake.path_of(r).rsplit("/", 1)[-1] for r in fake.requests]
    assert methods == ["answerCallbackQuery", "sendMessage"]  # the spinner stops, then the answer
    assert fake.answered == [query_id]
    assert fake.texts() == [(str(cb["from"]["id"]), "You chose some_data.")]
    deliver(event)  # redelivered: neither answered nor sent again
    assert len(fake.requests) == 2

    # A second reply to the same press: Telegram refuses a second answer; the reply still goes out.
    event2 = reply(pressed.conversation_id, "Anything else?", key="reply:2", in_reply_to=pressed.id)
    deliver(event2)
    assert stored(event2.message_id).status == "sent" and fake.texts()[-1][1] == "Anything else?"
    assert fake.answered == [query_id]


def test_telegram_plain_message_reply_answers_no_callback(gw: Gateway, telegram_api: FakeTelegram,
                                                          clock: FakeClock, monkeypatch: pytest.MonkeyPatch) -> None:
    _, conv, _ = conversation(gw, "telegram", "5550002", {"bot_token": "5550002:AAH", "secret_token": "s"}, "4343")
    use_fake(monkeypatch, "telegram", telegram_api, clock)
    deliver(reply(conv, "Hello"))
    assert [telegram_api.path_of(r).rsplit("/", 1)[-1] for r in telegram_api.requests] == ["sendMessage"]
    assert telegram_api.answered == []


def test_rate_limiter_per_chat_and_per_bot(clock: FakeClock) -> None:
    limiter = RateLimiter(clock, clock.sleep)
    bot = Limit("telegram:bot:1", 1 / 30)
    waits = [limiter.acquire([Limit(f"telegram:chat:1:{i}", 1.0), bot]) for i in range(60)]
    assert clock.now - 1000.0 == pytest.approx(59 / 30)  # 60 chats: bot-wide 30/s is the binding limit
    assert all(w == pytest.approx(1 / 30) for w in waits[1:])
    same_chat = [limiter.acquire([Limit("telegram:chat:1:x", 1.0), bot]) for _ in range(3)]
    assert same_chat[1:] == [pytest.approx(1.0)] * 2


def test_redis_rate_limiter_shares_the_budget(redis_namespace: str) -> None:
    from gateways.outbound import RedisRateLimiter
    from tests.conftest import REDIS_TEST_URL

    a = RedisRateLimiter(REDIS_TEST_URL, prefix=redis_namespace, sleep=lambda s: None)
    b = RedisRateLimiter(REDIS_TEST_URL, prefix=redis_namespace, sleep=lambda s: None)
    lim = [Limit("twilio:+1555", 10.0)]
    first, second, third = a.reserve(lim), b.reserve(lim), a.reserve(lim)
    assert first == 0 and second == pytest.approx(10.0, abs=0.5) and third == pytest.approx(20.0, abs=0.5)


# ------------------------------------------------------------------------------------------------------ Twilio

def test_twilio_sdk_send_retry_after_and_auth_failure(gw: Gateway, clock: FakeClock,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeTwilio("AC0001", "tok")
    try:
        _, conv, _ = conversation(gw, "twilio", "+14155550100", {"account_sid": "AC0001", "auth_token": "tok"},
                                  "whatsapp:+15005550006")
        use_fake(monkeypatch, "twilio", fake, clock)
        fake.fail_next(Scripted(429, {"code": 20429, "message": "Too Many Requests", "status": 429},
                                {"Retry-After": "4"}))
        event = reply(conv, "y " * 1000)  # 2000 chars -> 2 SMS-limit parts
        failures = redeliver(event)
        forms = [r.form() for r in fake.sends()]
        assert len(forms) == 3 and [f.retry_after for f in failures if isinstance(f, SendError)] == [4.0]
        assert {f["From"] for f in forms} == {"whatsapp:+14155550100"} and forms[1]["To"] == "whatsapp:+15005550006"
        assert all(len(f["Body"]) <= 1600 for f in forms)
        assert stored(event.message_id).status == "sent"

        _, conv2, _ = conversation(gw, "twilio", "+14155550101", {"account_sid": "AC0001", "auth_token": "bad"},
                                   "+15005550009")
        event2 = reply(conv2, "hi")
        deliver(event2)
        assert stored(event2.message_id).status == "failed"
    finally:
        fake.close()


# ------------------------------------------------------------------------------------------------------ Discord


@pytest.fixture
def discord_api() -> Iterator[FakeDiscord]:
    fake = FakeDiscord()
    yield fake
    fake.close()


class DiscordApp:
    """A tenant's Discord application: interactions arrive signed through the real endpoint, and the fake
    Discord holds each one's deferred response."""

    def __init__(self, gw: Gateway, fake: FakeDiscord, bot_token: str | None = None) -> None:
        self.gw, self.fake = gw, fake
        self.key = Ed25519PrivateKey.generate()
        self.app_id = str(130000000000000000 + uuid.uuid4().int % 10**15)
        self.tenant = gw.tenant()
        gw.account(self.tenant, "discord", self.app_id, {"bot_token": bot_token} if bot_token else {},
                   config={"public_key": self.key.public_key().public_bytes_raw().hex()})

    def interaction(self, text: str = "Do you ship?", user: str = "u1", opened: bool = True) -> Any:
        """A slash command from `user`; returns its stored inbound message."""
        interaction_id, token = str(uuid.uuid4().int % 10**18), f"itok-{uuid.uuid4().hex}"
        body = {"type": 2, "id": interaction_id, "application_id": self.app_id, "token": token,
                "channel_id": "1000", "member": {"user": {"id": user, "username": "ana"}},
                "data": {"name": "ask", "options": [{"name": "question", "type": 3, "value": text}]}}
        raw = json.dumps(body).encode()
        ts = str(int(time.time()))
        response = self.gw.client.post(f"/webhooks/discord/{self.app_id}", content=raw, headers={
            "X-Signature-Ed25519": self.key.sign(ts.encode() + raw).hex(), "X-Signature-Timestamp": ts})
        assert response.json() == {"type": 5}  # deferred: the sender completes it
        if opened:
            self.fake.open_interaction(self.app_id, token)
        (row,) = self.gw.inbound(provider_message_id=interaction_id, tenant_id=self.tenant)
        return row


def test_discord_edits_the_original_then_follows_up(gw: Gateway, discord_api: FakeDiscord, clock: FakeClock,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    app = DiscordApp(gw, discord_api)
    use_fake(monkeypatch, "discord", discord_api, clock)
    inbound = app.interaction()
    token = inbound.meta["interaction_token"]
    text = LONG[:5000] + " @everyone"
    event = reply(inbound.conversation_id, text, in_reply_to=inbound.id)
    deliver(event)
    parts = split_text(text, 2000)
    assert len(parts) == 3
    hook = f"/webhooks/{app.app_id}/{token}"
    assert discord_api.calls() == [("PATCH", f"{hook}/messages/@original"), ("POST", hook), ("POST", hook)]
    held = discord_api.interactions[token]
    assert held.original == parts[0] and held.followups == parts[1:]
    bodies = [r.json() for r in discord_api.requests]
    assert all(b["allowed_mentions"] == {"parse": []} for b in bodies)  # "@everyone" pings nobody
    assert all("Authorization" not in r.headers for r in discord_api.requests)  # the token is the credential
    msg = stored(event.message_id)
    assert msg.status == "sent" and msg.meta["provider_ids"][0] == held.original_id
    assert len(msg.meta["provider_ids"]) == 3
    deliver(event)  # redelivered event: nothing more is sent
    assert len(discord_api.requests) == 3


def test_discord_second_reply_is_a_followup_and_latest_interaction_is_used(
        gw: Gateway, discord_api: FakeDiscord, clock: FakeClock, monkeypatch: pytest.MonkeyPatch) -> None:
    app = DiscordApp(gw, discord_api)
    use_fake(monkeypatch, "discord", discord_api, clock)
    first = app.interaction("first question")
    deliver(reply(first.conversation_id, "Looking into it.", key="r1", in_reply_to=first.id))
    deliver(reply(first.conversation_id, "Here is the answer.", author="agent:dana", key="r2", in_reply_to=first.id))
    held = app.fake.interactions[first.meta["interaction_token"]]
    assert held.original == "Looking into it." and held.followups == ["Here is the answer."]  # not overwritten
    second = app.interaction("second question")
    assert second.conversation_id == first.conversation_id
    deliver(reply(second.conversation_id, "Answer to the latest.", key="r3"))  # replies to no message
    assert app.fake.interactions[second.meta["interaction_token"]].original == "Answer to the latest."


def test_discord_429_retry_after_and_5xx_are_retried(gw: Gateway, discord_api: FakeDiscord, clock: FakeClock,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    app = DiscordApp(gw, discord_api)
    use_fake(monkeypatch, "discord", discord_api, clock)
    inbound = app.interaction()
    discord_api.fail_next(rate_limited(1.5), Scripted(502, {"message": "502: Bad Gateway", "code": 0}))
    event = reply(inbound.conversation_id, "Yes, we ship worldwide.", in_reply_to=inbound.id)
    failures = redeliver(event)
    assert [m for m, _ in discord_api.calls()] == ["PATCH"] * 3
    # The body's precise retry_after, not the header's rounded one.
    assert [f.retry_after for f in failures if isinstance(f, SendError)] == [1.5, None]
    assert discord_api.interactions[inbound.meta["interaction_token"]].original == "Yes, we ship worldwide."
    assert stored(event.message_id).status == "sent"


def test_discord_no_double_send_when_a_followup_fails(gw: Gateway, discord_api: FakeDiscord, clock: FakeClock,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    app = DiscordApp(gw, discord_api)
    use_fake(monkeypatch, "discord", discord_api, clock)
    inbound = app.interaction()
    original, calls = discord_api.respond, {"n": 0}

    def flaky(rec: Any) -> Any:
        calls["n"] += 1
        if 2 <= calls["n"] <= 4:  # the first follow-up fails on every in-place attempt
            return 503, {"message": "Service Unavailable", "code": 0}, {}
        return original(rec)

    monkeypatch.setattr(discord_api, "respond", flaky)
    text = LONG[:3500]
    event = reply(inbound.conversation_id, text, in_reply_to=inbound.id)
    with pytest.raises(SendError) as info:
        deliver(event)
    assert not info.value.permanent and stored(event.message_id).status == "pending"
    redeliver(event)  # the bus redelivers
    held = discord_api.interactions[inbound.meta["interaction_token"]]
    assert [held.original, *held.followups] == split_text(text, 2000)  # each part once, in order
    assert [m for m, _ in discord_api.calls()] == ["PATCH", "POST", "POST", "POST", "POST"]
    assert stored(event.message_id).status == "sent"


def test_discord_reply_after_the_token_window_goes_to_the_channel_with_the_bot_token(
        gw: Gateway, discord_api: FakeDiscord, clock: FakeClock, monkeypatch: pytest.MonkeyPatch) -> None:
    """An agent answers an escalated question 40 minutes later: a bot message in the customer's channel that
    mentions the customer (and pings nobody else), split to 2000 characters, sent once."""
    from app.db import session_scope
    from app.models import Message, utcnow

    discord_api.bot_tokens.add("bot-secret")
    discord_api.channels["1000"] = []
    app = DiscordApp(gw, discord_api, bot_token="bot-secret")
    use_fake(monkeypatch, "discord", discord_api, clock)
    old = app.interaction(user="u77")
    with session_scope(cross_tenant="tests") as session:
        session.get_one(Message, old.id).created_at = utcnow() - timedelta(minutes=40)
    text = LONG[:3000] + " @everyone"
    event = reply(old.conversation_id, text, author="agent:dana", in_reply_to=old.id)
    deliver(event)
    assert discord_api.calls() == [("POST", "/channels/1000/messages")] * 2
    assert all(r.headers["Authorization"] == "Bot bot-secret" for r in discord_api.requests)
    posted = discord_api.channels["1000"]
    assert posted[0]["content"].startswith("<@u77> ") and all(len(m["content"]) <= 2000 for m in posted)
    assert "".join(m["content"] for m in posted).replace("<@u77> ", "", 1).replace(" ", "") == text.replace(" ", "")
    assert all(m["allowed_mentions"] == {"parse": [], "users": ["u77"]} for m in posted)
    msg = stored(event.message_id)
    assert msg.status == "sent" and msg.meta["provider_ids"] == [m["id"] for m in posted]
    deliver(event)  # redelivered: nothing more is sent
    assert len(discord_api.requests) == 2

    # A revoked bot token is refused once and the reply recorded failed, not retried forever.
    discord_api.bot_tokens.clear()
    event2 = reply(old.conversation_id, "One more thing", key="r2", in_reply_to=old.id)
    deliver(event2)
    assert stored(event2.message_id).status == "failed" and "Unauthorized" in (stored(event2.message_id).error or "")
    assert len(discord_api.requests) == 3


def test_discord_expired_or_revoked_token_fails_permanently(gw: Gateway, discord_api: FakeDiscord,
                                                            clock: FakeClock, monkeypatch: pytest.MonkeyPatch) -> None:
    from app.db import session_scope
    from app.models import Message, utcnow

    app = DiscordApp(gw, discord_api)
    use_fake(monkeypatch, "discord", discord_api, clock)
    old = app.interaction()
    with session_scope(cross_tenant="tests") as session:
        session.get_one(Message, old.id).created_at = utcnow() - timedelta(minutes=16)
    event = reply(old.conversation_id, "Too late", in_reply_to=old.id)
    deliver(event)
    msg = stored(event.message_id)
    assert msg.status == "failed" and "discord_interaction_expired" in msg.error and "15 minutes" in msg.error
    assert "--bot-token" in msg.error  # the fix, named
    assert discord_api.requests == []  # no request made

    unknown = app.interaction(user="u2", opened=False)  # Discord no longer knows the token
    event2 = reply(unknown.conversation_id, "Hello", key="r2", in_reply_to=unknown.id)
    deliver(event2)
    msg2 = stored(event2.message_id)
    assert msg2.status == "failed" and "Invalid Webhook Token" in msg2.error
    assert len(discord_api.requests) == 1  # refused once, never retried


def test_ussd_reply_waits_for_the_screen_then_goes_by_sms_or_fails_without_an_sms_account(
        gw: Gateway, monkeypatch: pytest.MonkeyPatch) -> None:
    """A USSD reply the session's screen did not show (the orchestrator was late, or an agent answered an
    escalation) goes by SMS through the tenant's twilio account, once the screen's wait is over."""
    from app.bootstrap import container
    from app.conversations.dispatcher import Dispatcher
    from app.db import session_scope
    from app.models import Message, utcnow
    from gateways.common import forget_accounts
    from gateways.twilio.send import TwilioSender
    from gateways.ussd.send import UssdSender

    fake = FakeTwilio("AC1", "tw-token")
    now = [utcnow()]
    sms = TwilioSender(base_url=fake.url)
    use(monkeypatch, "ussd", UssdSender(sms, lambda tenant: sms_account(container(), tenant), clock=lambda: now[0]))

    def deliver(event: Any) -> None:  # the dispatcher on the same clock: it honours the sender's retry_after
        Dispatcher(container().senders, container().push, clock=lambda: now[0]).deliver(event)
    try:
        tenant, conv, _ = conversation(gw, "ussd", f"*{uuid.uuid4().hex[:6]}#", {"webhook_token": "t"},
                                       contact="+254700000001", config={"answer_wait_s": 4})
        with session_scope(cross_tenant="tests") as session:
            asked = Message(tenant_id=tenant, conversation_id=conv, channel="ussd", direction="in",
                            provider_message_id="ATU1:1", text="refunds?", status="answered", created_at=now[0])
            session.add(asked)
            session.flush()
            asked_id = asked.id
        event = reply(conv, "Refunds take a week.", key=f"reply:{asked_id}", in_reply_to=asked_id)
        with pytest.raises(SendError) as held:
            deliver(event)  # the screen may still show it
        assert not held.value.permanent and held.value.retry_after and fake.sends() == []

        now[0] += timedelta(seconds=10)
        deliver(event)  # no SMS account: nothing to send it with
        assert stored(event.message_id).status == "failed" and "no SMS" in (stored(event.message_id).error or "")

        gw.account(tenant, "twilio", f"+1500555{uuid.uuid4().int % 10**4:04d}",
                   {"account_sid": "AC1", "auth_token": "tw-token"})
        forget_accounts(container())
        again = reply(conv, "Our team: refunds take a week.", key="review:1", author="agent:ana")
        deliver(again)
        assert stored(again.message_id).status == "sent"
        [sms] = [r.form() for r in fake.sends()]
        assert (sms["To"], sms["Body"]) == ("+254700000001", "Our team: refunds take a week.")
    finally:
        fake.close()
