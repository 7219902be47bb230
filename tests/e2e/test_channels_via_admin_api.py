"""Every channel type, end to end through the admin API alone: the account is created with the channel's own OpenAPI
example (`POST /admin/v1/channels`), updated (`PATCH`: pointed at a local fake provider, or given a key the test
can sign with), then a signed webhook from the fake provider is accepted, answered by the embedded stack from the
tenant's knowledge, and the reply reaches the fake provider (USSD: the synchronous screen; web chat: the
visitor's conversation)."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from twilio.request_validator import RequestValidator

from tests.e2e.conftest import Stack, Visitor, replies, wait
from tests.fakes.fake_discord import FakeDiscord
from tests.fakes.fake_meta import FakeGraph
from tests.fakes.fake_telegram import FakeTelegram
from tests.fakes.fake_twilio import FakeTwilio
from tests.fakes.provider_server import FakeProvider
from tests.gateways.conftest import meta_signature

QUESTION = "how long do I have to return something?"
PUBLIC_BASE = "http://127.0.0.1:8080"  # the default SWITCHBOARD_PUBLIC_BASE_URL, which Twilio signs
CHANNELS = ["webchat", "whatsapp", "instagram", "telegram", "twilio", "discord", "ussd"]


def example(stack: Stack, channel: str) -> dict[str, Any]:
    schemas = stack.client.get("/openapi.json").json()["components"]["schemas"]
    (found,) = [s["examples"][0] for name, s in schemas.items()
                if name.endswith("ChannelIn") and s["examples"][0]["channel"] == channel]
    return dict(found)


class Channel:
    """One channel's account and the conversation on it, as its provider sees them."""

    fake: FakeProvider | None = None

    def __init__(self, stack: Stack) -> None:
        self.stack, self.admin = stack, stack.headers(stack.northwind.admin)
        self.account: dict[str, Any] = {}

    def create(self, body: dict[str, Any]) -> dict[str, Any]:
        response = self.stack.client.post("/admin/v1/channels", headers=self.admin, json=body)
        assert response.status_code == 201, response.text
        self.account = response.json()
        return self.account

    def patch(self, **changes: Any) -> dict[str, Any]:
        response = self.stack.client.patch(f"/admin/v1/channels/{self.account['id']}", headers=self.admin,
                                           json=changes)
        assert response.status_code == 200, response.text
        got = response.json()
        assert got["name"] == changes.get("name", got["name"])
        assert got["config"].items() >= changes.get("config", {}).items(), got  # defaults filled in
        return got

    @property
    def path(self) -> str:
        url = str(self.account["webhook_url"])
        assert url.startswith(PUBLIC_BASE), url
        return url[len(PUBLIC_BASE):]

    def set_up(self) -> None:
        """Create from the example, then update through the admin API."""
        raise NotImplementedError

    def ask(self, text: str) -> str:
        """Send `text` as the provider would; returns the reply as the provider (or customer) received it."""
        raise NotImplementedError

    def close(self) -> None:
        # The module's stack outlives this fake provider: a reply still being sent when it closed would fail,
        # and the dispatcher's error would be logged into the next test.
        wait("every reply settled", lambda: not unsettled_replies())
        if self.account:  # the examples' provider ids are fixed: free them for the next test
            self.stack.client.delete(f"/admin/v1/channels/{self.account['id']}", headers=self.admin)
        if self.fake is not None:
            self.fake.close()


def unsettled_replies() -> list[tuple[str, str]]:
    """Outbound messages the dispatcher has yet to send, as (channel, text)."""
    from sqlalchemy import select

    from app.db import session_scope
    from app.models import Message

    with session_scope(cross_tenant="tests") as session:
        return [(c, t) for c, t in session.execute(select(Message.channel, Message.text).where(
            Message.direction == "out", Message.status == "pending"))]


class Webchat(Channel):
    def set_up(self) -> None:
        self.create(example(self.stack, "webchat"))
        self.patch(name="Shop widget")

    def ask(self, text: str) -> str:
        response = self.stack.client.post(f"/widget/v1/{self.account['external_id']}/sessions", json={})
        assert response.status_code == 201, response.text
        visitor = Visitor(self.stack.client, self.account["external_id"], response.json()["token"])
        visitor.send(text, "c1")
        return str(replies(visitor.wait_for(lambda ms: bool(replies(ms)), timeout=60))[0]["text"])


class Meta(Channel):
    channel = ""

    def set_up(self) -> None:
        body = example(self.stack, self.channel)
        self.secret = body["credentials"]["app_secret"]
        self.create(body)
        self.fake = FakeGraph()
        self.patch(config={**body["config"], "api_base_url": self.fake.url}, name=f"Shop {self.channel}")

    def post(self, body: dict[str, Any]) -> None:
        raw = json.dumps(body).encode()
        response = self.stack.client.post(self.path, content=raw,
                                          headers={"X-Hub-Signature-256": meta_signature(self.secret, raw)})
        assert response.status_code == 200 and response.json()["accepted"] == 1, response.text


class WhatsApp(Meta):
    channel = "whatsapp"

    def ask(self, text: str) -> str:
        pid = self.account["external_id"]
        self.post({"object": "whatsapp_business_account", "entry": [{"id": "WABA1", "changes": [{
            "field": "messages", "value": {
                "messaging_product": "whatsapp", "metadata": {"display_phone_number": "15550001111",
                                                              "phone_number_id": pid},
                "contacts": [{"profile": {"name": "Ana"}, "wa_id": "15551234567"}],
                "messages": [{"from": "15551234567", "id": f"wamid.{uuid.uuid4().hex}", "type": "text",
                              "timestamp": str(int(time.time())), "text": {"body": text}}]}}]}]})
        fake = self.fake
        assert fake is not None
        sent = wait("WhatsApp send", lambda: [r.json() for r in fake.sends() if r.json().get("type") == "text"])
        assert sent[0]["to"] == "15551234567"
        return str(sent[0]["text"]["body"])


class Instagram(Meta):
    channel = "instagram"

    def ask(self, text: str) -> str:
        account = self.account["external_id"]
        self.post({"object": "instagram", "entry": [{"id": account, "time": int(time.time()), "messaging": [{
            "sender": {"id": "9911"}, "recipient": {"id": account}, "timestamp": int(time.time() * 1000),
            "message": {"mid": f"mid.{uuid.uuid4().hex}", "text": text}}]}]})
        fake = self.fake
        assert fake is not None
        sent = wait("Instagram send", lambda: [r.json() for r in fake.sends()])
        assert sent[0]["recipient"]["id"] == "9911"
        return str(sent[0]["message"]["text"])


class Telegram(Channel):
    def set_up(self) -> None:
        body = example(self.stack, "telegram")
        self.secret = self.create(body)["setup"]["secret_token"]
        self.fake = FakeTelegram()
        self.patch(config={"api_base_url": self.fake.url}, name="Shop bot")

    def ask(self, text: str) -> str:
        update = {"update_id": 1, "message": {"message_id": 7, "date": int(time.time()), "text": text,
                                              "chat": {"id": 4242, "type": "private"},
                                              "from": {"id": 4242, "is_bot": False, "first_name": "Ana"}}}
        response = self.stack.client.post(self.path, json=update,
                                          headers={"X-Telegram-Bot-Api-Secret-Token": self.secret})
        assert response.status_code == 200 and response.json()["accepted"] == 1, response.text
        fake = self.fake
        assert isinstance(fake, FakeTelegram)
        (chat, reply), *_ = wait("Telegram sendMessage", fake.texts)
        assert chat == "4242"
        return reply


class Twilio(Channel):
    def set_up(self) -> None:
        body = example(self.stack, "twilio")
        self.token = body["credentials"]["auth_token"]
        self.create(body)
        self.fake = FakeTwilio(body["credentials"]["account_sid"], self.token)
        self.patch(config={"api_base_url": self.fake.url, "messages_per_second": 5}, name="Shop SMS")

    def ask(self, text: str) -> str:
        form = {"AccountSid": "AC0123456789abcdef0123456789abcdef", "MessageSid": f"SM{uuid.uuid4().hex}",
                "From": "+15005550009", "To": self.account["external_id"], "Body": text, "NumMedia": "0"}
        signature = RequestValidator(self.token).compute_signature(self.account["webhook_url"], form)
        response = self.stack.client.post(self.path, data=form, headers={"X-Twilio-Signature": signature})
        assert response.status_code == 200, response.text
        fake = self.fake
        assert fake is not None
        sent = wait("Twilio message", lambda: [r.form() for r in fake.sends()])
        assert (sent[0]["To"], sent[0]["From"]) == ("+15005550009", self.account["external_id"])
        return sent[0]["Body"]


class Discord(Channel):
    def set_up(self) -> None:
        self.create(example(self.stack, "discord"))
        self.key = Ed25519PrivateKey.generate()
        self.fake = FakeDiscord()
        self.patch(config={"public_key": self.key.public_key().public_bytes_raw().hex(),
                           "api_base_url": self.fake.url})

    def ask(self, text: str) -> str:
        fake = self.fake
        assert isinstance(fake, FakeDiscord)
        interaction = fake.open_interaction(self.account["external_id"], "itok-1")
        raw = json.dumps({"type": 2, "id": "9001", "token": "itok-1", "channel_id": "c1",
                          "member": {"user": {"id": "u1", "username": "ana"}},
                          "data": {"name": "ask", "options": [{"name": "question", "type": 3, "value": text}]}
                          }).encode()
        ts = str(int(time.time()))
        response = self.stack.client.post(self.path, content=raw, headers={
            "X-Signature-Ed25519": self.key.sign(ts.encode() + raw).hex(), "X-Signature-Timestamp": ts})
        assert response.status_code == 200 and response.json() == {"type": 5}, response.text
        return str(wait("Discord reply", lambda: interaction.original))


class Ussd(Channel):
    def set_up(self) -> None:
        self.token = self.create(example(self.stack, "ussd"))["setup"]["webhook_token"]
        # A generous wait: the screen shows the orchestrator's answer even on a loaded test machine.
        self.patch(config={"prompt": "Northwind: ask us anything", "fallback": "Please call us.",
                           "answer_wait_s": 10})

    def ask(self, text: str, session: str = "ATU1", phone: str = "+254711000000") -> str:
        form = {"sessionId": session, "serviceCode": self.account["external_id"], "phoneNumber": phone}
        opened = self.stack.client.post(self.path, data={**form, "text": ""})
        assert opened.status_code == 200 and opened.text == "CON Northwind: ask us anything", opened.text
        answered = self.stack.client.post(self.path, data={**form, "text": text})
        assert answered.status_code == 200 and answered.text.startswith("END "), answered.text
        return answered.text[len("END "):]


KINDS: dict[str, type[Channel]] = {"webchat": Webchat, "whatsapp": WhatsApp, "instagram": Instagram,
                                   "telegram": Telegram, "twilio": Twilio, "discord": Discord, "ussd": Ussd}


@pytest.fixture
def channel(stack: Stack, request: pytest.FixtureRequest) -> Iterator[Channel]:
    ch = KINDS[request.param](stack)
    yield ch
    ch.close()


@pytest.mark.parametrize("channel", CHANNELS, indirect=True)
def test_channel_created_updated_and_answered_through_the_admin_api(stack: Stack, channel: Channel) -> None:
    channel.set_up()
    listed = stack.client.get("/admin/v1/channels", headers=stack.headers(stack.northwind.admin)).json()
    assert channel.account["id"] in {a["id"] for a in listed["channels"]}
    # Another tenant's admin can neither see nor change it.
    other = stack.headers(stack.other.admin)
    assert stack.client.get(f"/admin/v1/channels/{channel.account['id']}", headers=other).status_code == 404
    assert stack.client.patch(f"/admin/v1/channels/{channel.account['id']}", headers=other,
                              json={"name": "mine"}).status_code == 404

    reply = channel.ask(QUESTION)
    assert "30" in reply, reply  # the pack's return window, from the tenant's knowledge


def test_ussd_question_for_a_person_is_escalated_by_the_orchestrator_and_the_screen_promises_nothing(
        stack: Stack) -> None:
    """The USSD answer is the orchestrator's decision, guardrails included: a request for a person opens a real
    escalation; without an SMS account the screen promises no reply."""
    ussd = Ussd(stack)
    try:
        ussd.set_up()
        screen = ussd.ask("I want to talk to a real person please", session="ATU-human", phone="+254711000002")
        assert screen == "Thanks. Our team has your question.", screen
        queue = stack.client.get("/review/v1/escalations", headers=stack.headers(stack.northwind.agent)).json()
        mine = [e for e in queue if e["customer_text"] == "I want to talk to a real person please"]
        assert len(mine) == 1 and mine[0]["reason"] == "human_requested", mine
        # The aggregator retries the step: no second message, no second escalation.
        assert ussd.ask("I want to talk to a real person please", session="ATU-human", phone="+254711000002") == screen
        queue = stack.client.get("/review/v1/escalations", headers=stack.headers(stack.northwind.agent)).json()
        assert len([e for e in queue if e["customer_text"] == "I want to talk to a real person please"]) == 1
    finally:
        ussd.close()


def test_ussd_retried_step_shows_the_same_answer_once_stored(stack: Stack) -> None:
    ussd = Ussd(stack)
    try:
        ussd.set_up()
        first = ussd.ask(QUESTION, session="ATU-retry", phone="+254711000003")
        assert "30" in first and ussd.ask(QUESTION, session="ATU-retry", phone="+254711000003") == first
        from sqlalchemy import select

        from app.db import session_scope
        from app.models import Message

        with session_scope(cross_tenant="tests") as session:
            rows = session.execute(select(Message.direction, Message.status, Message.meta).where(
                Message.channel == "ussd", Message.provider_message_id.like("ATU-retry%"))).all()
        assert [(d, st) for d, st, _ in rows] == [("in", "answered")]
        with session_scope(cross_tenant="tests") as session:
            (reply,) = session.scalars(select(Message).where(
                Message.channel == "ussd", Message.direction == "out", Message.status == "sent",
                Message.meta["shown_on"].as_string() == "ussd_screen", Message.text.like("%30%"))).all()[-1:]
            assert first.rstrip("…") in reply.text or reply.text.startswith(first[:40])
    finally:
        ussd.close()


def test_ussd_menu_ask_option_is_answered_by_the_orchestrator_and_menus_stay_with_their_tenant(
        stack: Stack) -> None:
    """Numbered menus set through the admin API: the "ask" option's question gets the orchestrator's answer from
    the tenant's knowledge; another tenant's menu is never shown on this tenant's service code."""
    menu = {"text": "Northwind", "options": [
        {"key": "1", "label": "Opening hours", "answer": "Mon-Sat 9:00-18:00."},
        {"key": "2", "label": "Ask a question", "ask": True, "prompt": "Your question?"}]}
    other_menu = {"text": "Other Brand secrets", "options": [{"key": "1", "label": "Other", "answer": "Theirs."}]}
    mine, other = stack.headers(stack.northwind.admin), stack.headers(stack.other.admin)
    ussd = Ussd(stack)
    try:
        for headers, body in ((other, other_menu), (mine, menu)):
            saved = stack.client.patch("/admin/v1/tenant", headers=headers, json={"policies": {"ussd_menu": body}})
            assert saved.status_code == 200 and saved.json()["policies"]["ussd_menu"] == body, saved.text
        ussd.set_up()

        def step(text: str) -> str:
            response = stack.client.post(ussd.path, data={"sessionId": "ATU-menu", "phoneNumber": "+254711000004",
                                                          "serviceCode": ussd.account["external_id"], "text": text})
            assert response.status_code == 200, response.text
            return response.text

        assert step("") == "CON Northwind\n1. Opening hours\n2. Ask a question"
        assert step("2") == "CON Your question?"
        screen = step(f"2*{QUESTION}")
        assert screen.startswith("END ") and "30" in screen, screen  # the pack's return window
    finally:
        for headers in (mine, other):
            stack.client.patch("/admin/v1/tenant", headers=headers, json={"policies": {"ussd_menu": None}})
        ussd.close()
