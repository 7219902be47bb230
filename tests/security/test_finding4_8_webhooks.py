"""Issue 9, findings 4 and 8, on the provider webhooks: nothing a client sends makes a gateway answer 5xx, a
signed delivery that cannot be read is acknowledged and kept as a dead letter with its reason (providers retry
anything else forever), text with NUL or lone surrogates is stored and answered, Discord timestamps must be
fresh, and two widget visitors cannot share one dedupe key.

Every test runs twice: embedded (SQLite, in-process bus) and scale-out (Postgres, Redis Streams), where NUL
in a query fails and dead letters live in Redis.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import redis
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from twilio.request_validator import RequestValidator

from tests.conftest import REDIS_TEST_URL, Graph
from tests.gateways.conftest import WEBHOOKS, Gateway, meta_signature

WA_PHONE, WA_SECRET = "990000000001", "finding4-wa-secret"
IG_ACCOUNT, IG_SECRET = "990000000002", "finding4-ig-secret"
TG_BOT, TG_TOKEN = "990000003", "finding4-tg-token"
DC_APP = "990000000000000004"
TW_NUMBER, TW_TOKEN = "+15550000005", "finding4-tw-token"
USSD_CODE, USSD_TOKEN = "*990#", "finding4-ussd-token"
PUBLIC = "https://sb.example.com"


@dataclass
class Setup:
    gw: Gateway
    tenants: dict[str, str]  # channel -> tenant id
    discord_key: Ed25519PrivateKey

    def dead(self, channel: str) -> list[Any]:
        from app.bootstrap import container
        from gateways.common import WEBHOOK_TOPIC

        return container().bus.dead_letters(WEBHOOK_TOPIC, self.tenants[channel], count=10_000)

    # -- signed deliveries, as each provider sends them ----------------------------------------------------
    def meta(self, channel: str, raw: bytes, signature: str | bytes | None = None) -> Any:
        secret = WA_SECRET if channel == "whatsapp" else IG_SECRET
        sig = meta_signature(secret, raw) if signature is None else signature
        return self.gw.client.post(f"/webhooks/{channel}", content=raw, headers={
            "Content-Type": "application/json", "X-Hub-Signature-256": sig})

    def telegram(self, raw: bytes, token: str | bytes = TG_TOKEN) -> Any:
        return self.gw.client.post(f"/webhooks/telegram/{TG_BOT}", content=raw, headers={
            "Content-Type": "application/json", "X-Telegram-Bot-Api-Secret-Token": token})

    def discord(self, raw: bytes, timestamp: str | None = None, signature: bytes | None = None) -> Any:
        ts = timestamp if timestamp is not None else str(int(time.time()))
        sig = signature or self.discord_key.sign(ts.encode() + raw).hex().encode()
        return self.gw.client.post(f"/webhooks/discord/{DC_APP}", content=raw, headers={
            "X-Signature-Ed25519": sig, "X-Signature-Timestamp": ts})

    def twilio(self, form: dict[str, str], signature: bytes | None = None) -> Any:
        sig = signature or RequestValidator(TW_TOKEN).compute_signature(f"{PUBLIC}/webhooks/twilio", form).encode()
        return self.gw.client.post("/webhooks/twilio", data=form, headers={"X-Twilio-Signature": sig})


@pytest.fixture(scope="module", params=["embedded", "postgres+redis"])
def setup(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    graph = Graph(tmp_path_factory.mktemp("sbhome"))
    namespace = f"sbtest{uuid.uuid4().hex[:8]}"
    scale_out = {"database_url": request.getfixturevalue("pg_url"), "redis_url": REDIS_TEST_URL,
                 "bus_namespace": namespace} if request.param == "postgres+redis" else {}
    # These tests send hundreds of forged webhooks on purpose; the limits on them are tested elsewhere.
    graph.configure(public_base_url=PUBLIC, rate_webhook_failures_per_account="100000/minute", **scale_out)
    from fastapi.testclient import TestClient

    from app.db import migrate
    from app.main import create_app

    migrate()
    try:
        with TestClient(create_app(run_workers=False)) as client:
            gw = Gateway(client, graph.home)
            key = Ed25519PrivateKey.generate()
            tenants = {channel: gw.tenant() for channel in ("whatsapp", "instagram", "telegram", "discord",
                                                            "twilio", "ussd")}
            gw.account(tenants["whatsapp"], "whatsapp", WA_PHONE,
                       {"app_secret": WA_SECRET, "verify_token": "v", "access_token": "t"})
            gw.account(tenants["instagram"], "instagram", IG_ACCOUNT,
                       {"app_secret": IG_SECRET, "verify_token": "v", "access_token": "t"})
            gw.account(tenants["telegram"], "telegram", TG_BOT, {"bot_token": f"{TG_BOT}:x", "secret_token": TG_TOKEN})
            gw.account(tenants["discord"], "discord", DC_APP, {"bot_token": "b"},
                       config={"public_key": key.public_key().public_bytes_raw().hex()})
            gw.account(tenants["twilio"], "twilio", TW_NUMBER, {"account_sid": "AC1", "auth_token": TW_TOKEN})
            gw.account(tenants["ussd"], "ussd", USSD_CODE, {"webhook_token": USSD_TOKEN})
            yield Setup(gw, tenants, key)
    finally:
        graph.close()
        client_r = redis.Redis.from_url(REDIS_TEST_URL)
        keys = list(client_r.scan_iter(f"{namespace}:*"))
        if keys:
            client_r.delete(*keys)
        client_r.close()


# ------------------------------------------------------------------------------------------ real payloads

def wa_body(edit: Callable[[dict[str, Any]], Any] | None = None) -> bytes:
    """The corpus's WhatsApp text message, for our test number, changed by `edit` (which gets the message)."""
    body = json.loads((WEBHOOKS / "whatsapp" / "updates" / "message.json").read_text())["text"]
    value = body["entry"][0]["changes"][0]["value"]
    value["metadata"]["phone_number_id"] = WA_PHONE
    value["messages"][0]["id"] = f"wamid.{uuid.uuid4().hex}"
    if edit is not None:
        edit(value["messages"][0])
    return json.dumps(body).encode()


def ig_body(edit: Callable[[dict[str, Any]], Any] | None = None) -> bytes:
    """The corpus's Instagram text message event, to our test account, changed by `edit` (which gets the event)."""
    events = json.loads((WEBHOOKS / "instagram" / "bottender_messenger_events_converted.json").read_text())
    event = events["messaging_events"]["textMessage"]
    event["recipient"]["id"] = IG_ACCOUNT
    event["message"]["mid"] = f"mid.{uuid.uuid4().hex}"
    if edit is not None:
        edit(event)
    return json.dumps({"object": "instagram", "entry": [{"id": IG_ACCOUNT, "time": 1, "messaging": [event]}]}).encode()


def tg_update(edit: Callable[[dict[str, Any]], Any] | None = None) -> dict[str, Any]:
    """The corpus's Telegram text message Update, changed by `edit` (which gets the message)."""
    update = json.loads((WEBHOOKS / "telegram" / "updates_teloxide" /
                         "update__de_private_chat_text_message.json").read_text())
    update["message"]["message_id"] = int(uuid.uuid4().int % 10**9)
    if edit is not None:
        edit(update["message"])
    return update  # type: ignore[no-any-return]


def tg_body(edit: Callable[[dict[str, Any]], Any] | None = None) -> bytes:
    return json.dumps(tg_update(edit)).encode()


def tg_update_err() -> bytes:
    """Teloxide's own malformed-update fixture: a message with none of its fields."""
    batch = json.loads((WEBHOOKS / "telegram" / "updates_teloxide" / "request__update_err.json").read_text())
    return json.dumps(batch["result"][3]).encode()


def dc_command(**changes: Any) -> bytes:
    body = {"type": 2, "id": str(uuid.uuid4().int % 10**18), "token": "itok", "channel_id": "c1",
            "member": {"user": {"id": "u1", "username": "ana"}},
            "data": {"name": "ask", "options": [{"name": "question", "type": 3, "value": "Do you ship?"}]}}
    body.update(changes)
    return json.dumps(body).encode()


def tw_form(**changes: str) -> dict[str, str]:
    form = {"AccountSid": "AC1", "To": f"whatsapp:{TW_NUMBER}", "From": "whatsapp:+15005550006",
            "MessageSid": f"SM{uuid.uuid4().hex}", "Body": "Hello", "NumMedia": "0", "ProfileName": "Ana"}
    form.update(changes)
    return {k: v for k, v in form.items() if v != "<drop>"}


def _set(key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    return lambda d: d.__setitem__(key, value)


def _drop(key: str) -> Callable[[dict[str, Any]], None]:
    return lambda d: d.pop(key)


# ----------------------------------------------------------------- finding 4: signed, malformed payloads

@dataclass(frozen=True)
class Malformed:
    name: str
    channel: str  # whose tenant's dead-letter stream holds it
    send: Callable[[Setup], Any]
    reason: str  # what the dead letter's reason says
    status: int = 200


MALFORMED = [
    # WhatsApp: the body itself, then one message inside a well-formed body.
    Malformed("wa_not_json", "whatsapp", lambda s: s.meta("whatsapp", b"{not json"), "not JSON"),
    Malformed("wa_not_utf8", "whatsapp", lambda s: s.meta("whatsapp", b"\xff\xfe\x00{"), "not JSON"),
    Malformed("wa_json_list", "whatsapp", lambda s: s.meta("whatsapp", b"[]"), "a JSON list"),
    Malformed("wa_no_entry", "whatsapp",
              lambda s: s.meta("whatsapp", b'{"object": "whatsapp_business_account"}'), "'entry' list"),
    Malformed("wa_wrong_object", "whatsapp",
              lambda s: s.meta("whatsapp", b'{"object": "page", "entry": []}'), "unexpected object 'page'"),
    Malformed("wa_entry_is_a_string", "whatsapp",
              lambda s: s.meta("whatsapp", b'{"object": "whatsapp_business_account", "entry": ["x"]}'),
              "'changes' list"),
    Malformed("wa_text_is_a_string", "whatsapp",
              lambda s: s.meta("whatsapp", wa_body(_set("text", "Body Text"))), "unexpected shape"),
    Malformed("wa_message_without_id", "whatsapp",
              lambda s: s.meta("whatsapp", wa_body(_drop("id"))), "without 'from' or 'id'"),
    Malformed("wa_sender_is_an_object", "whatsapp",
              lambda s: s.meta("whatsapp", wa_body(_set("from", {"wa_id": 1}))), "without 'from' or 'id'"),
    Malformed("wa_message_id_too_long", "whatsapp",
              lambda s: s.meta("whatsapp", wa_body(_set("id", "wamid." + "x" * 300))), "1 to 200 characters"),
    # Instagram
    Malformed("ig_sender_is_a_string", "instagram",
              lambda s: s.meta("instagram", ig_body(_set("sender", "1423587017700273"))), "unexpected shape"),
    Malformed("ig_message_without_mid", "instagram",
              lambda s: s.meta("instagram", ig_body(lambda e: e["message"].pop("mid"))), "without 'mid'"),
    Malformed("ig_messaging_is_an_object", "instagram", lambda s: s.meta("instagram", json.dumps(
        {"object": "instagram", "entry": [{"id": IG_ACCOUNT, "messaging": {"a": 1}}]}).encode()), "not a list"),
    # Telegram
    Malformed("tg_not_json", "telegram", lambda s: s.telegram(b"nope"), "not JSON"),
    Malformed("tg_json_list", "telegram", lambda s: s.telegram(b"[1, 2]"), "a JSON list"),
    Malformed("tg_no_update_id", "telegram", lambda s: s.telegram(b'{"message": {}}'), "update_id"),
    Malformed("tg_teloxide_update_err", "telegram", lambda s: s.telegram(tg_update_err()),
              "without chat.id or message_id"),
    Malformed("tg_chat_is_a_string", "telegram", lambda s: s.telegram(tg_body(_set("chat", "x"))),
              "unexpected shape"),
    Malformed("tg_photo_sizes_are_strings", "telegram",
              lambda s: s.telegram(tg_body(lambda m: (m.pop("text"), m.__setitem__("photo", ["a", "b"])))),
              "unexpected shape"),
    Malformed("tg_too_deep", "telegram", lambda s: s.telegram(b'{"update_id": 1, "message": ' + b"[" * 100_000),
              "the update"),
    # Discord: interactions are never redelivered; one that cannot be read gets a 400 naming why.
    Malformed("dc_not_json", "discord", lambda s: s.discord(b"{"), "not JSON", 400),
    Malformed("dc_json_string", "discord", lambda s: s.discord(b'"ping"'), "a JSON str", 400),
    Malformed("dc_unknown_type", "discord", lambda s: s.discord(dc_command(type=99)), "unknown interaction type",
              400),
    Malformed("dc_without_user", "discord", lambda s: s.discord(dc_command(member=None)), "without id or user id",
              400),
    Malformed("dc_options_is_a_string", "discord",
              lambda s: s.discord(dc_command(data={"name": "ask", "options": "x"})), "unexpected shape", 400),
    # Twilio
    Malformed("tw_without_message_sid", "twilio", lambda s: s.twilio(tw_form(MessageSid="<drop>")),
              "without MessageSid"),
    Malformed("tw_message_sid_too_long", "twilio", lambda s: s.twilio(tw_form(MessageSid="SM" + "9" * 300)),
              "1 to 200 characters"),
]


@pytest.mark.parametrize("case", MALFORMED, ids=lambda c: c.name)
def test_finding4_signed_malformed_payload_is_acknowledged_and_dead_lettered_not_500(
    setup: Setup, case: Malformed
) -> None:
    before = len(setup.dead(case.channel))
    stored_before = len(setup.gw.inbound(tenant_id=setup.tenants[case.channel]))
    response = case.send(setup)
    assert response.status_code == case.status, response.text
    letters = setup.dead(case.channel)[before:]
    assert len(letters) == 1, f"expected one dead letter, got {[d.reason for d in letters]}"
    (letter,) = letters
    assert case.reason in letter.reason
    assert letter.fields["channel"] == case.channel and letter.fields["payload"]
    assert letter.original_id == "" and letter.deliveries == 0  # recorded dead at once, never published
    if case.status == 200 and case.channel != "twilio":
        assert response.json()["dead"] == 1
    elif case.status == 400:
        assert case.reason in response.json()["detail"]
    assert len(setup.gw.inbound(tenant_id=setup.tenants[case.channel])) == stored_before
    # The provider's retry changes nothing: acknowledged again, nothing stored.
    assert case.send(setup).status_code == case.status


def test_finding4_one_unreadable_message_costs_only_itself(setup: Setup) -> None:
    """A signed WhatsApp body with a good message and a broken one: the good one is stored, the broken one is
    dead, and the reason is in the tenant's stream."""
    good_id = f"wamid.good.{uuid.uuid4().hex}"
    body = json.loads(wa_body(_set("id", good_id)))
    messages = body["entry"][0]["changes"][0]["value"]["messages"]
    messages.append({**messages[0], "id": "wamid.broken", "text": ["not", "an", "object"]})
    before = len(setup.dead("whatsapp"))
    response = setup.meta("whatsapp", json.dumps(body).encode())
    assert response.status_code == 200 and response.json()["accepted"] == 1 and response.json()["dead"] == 1
    (row,) = setup.gw.inbound(provider_message_id=good_id)
    assert row.text == "Body Text" and row.tenant_id == setup.tenants["whatsapp"]
    (letter,) = setup.dead("whatsapp")[before:]
    assert "wamid.broken" in letter.fields["payload"] and "a message has an unexpected shape" in letter.reason


def test_finding4_shared_app_secret_body_naming_no_account_goes_to_the_operator_stream(setup: Setup) -> None:
    """When two tenants' accounts share the signing app secret and the body names neither, no tenant can be
    told apart: the dead letter goes to the operator's `unattributed` stream, never into a tenant's."""
    from app.bootstrap import container
    from app.db import session_scope
    from app.models import ChannelAccount
    from gateways.common import UNATTRIBUTED, WEBHOOK_TOPIC, forget_accounts

    other = setup.gw.tenant()
    phone = f"99{uuid.uuid4().int % 10**10}"
    setup.gw.account(other, "whatsapp", phone, {"app_secret": WA_SECRET, "verify_token": "v", "access_token": "t"})
    forget_accounts(container())  # routing sees a new account within ACCOUNT_CACHE_TTL_S; the test does not wait for it
    bus = container().bus
    before = len(bus.dead_letters(WEBHOOK_TOPIC, UNATTRIBUTED, count=10_000))
    mine, theirs = len(setup.dead("whatsapp")), len(bus.dead_letters(WEBHOOK_TOPIC, other))
    response = setup.meta("whatsapp", b'{"object": "whatsapp_business_account", "entry": [1]}')
    assert response.status_code == 200 and response.json()["dead"] == 1
    (letter,) = bus.dead_letters(WEBHOOK_TOPIC, UNATTRIBUTED, count=10_000)[before:]
    assert "'changes' list" in letter.reason
    assert len(setup.dead("whatsapp")) == mine and len(bus.dead_letters(WEBHOOK_TOPIC, other)) == theirs
    with session_scope(cross_tenant="tests") as session:  # the module's other tests expect one WhatsApp signer
        session.query(ChannelAccount).filter(ChannelAccount.external_id == phone).delete()
    forget_accounts(container())


# ----------------------------------------------------------------- finding 4: unsigned bodies, never read

UNSIGNED_BODIES = [
    b"", b"{not json", b"[]", b'"x"', b"null", b"\xff\xfe", b"[" * 100_000,
    b'{"object": "whatsapp_business_account"}',
    b'{"object": "whatsapp_business_account", "entry": ["x"]}',
    b'{"object": "instagram", "entry": [{"id": {"a": 1}, "messaging": "x"}]}',
    wa_body(_set("text", "Body Text")),
]
BAD_SIGNATURES = [None, b"", b"sha256=" + b"0" * 64, b"sha256=\xc3\xa9\xc3\xa9", "\u00e9".encode(), b"sha256"]


@pytest.mark.parametrize("channel", ["whatsapp", "instagram"])
def test_finding4_meta_unsigned_malformed_body_is_401_not_500(setup: Setup, channel: str) -> None:
    """Verify before parse: whatever an unsigned or forged body holds, it is refused with 401 and never read
    (a body that was read would have left a dead letter or a message)."""
    before, stored = len(setup.dead(channel)), len(setup.gw.inbound(tenant_id=setup.tenants[channel]))
    for raw in UNSIGNED_BODIES:
        for signature in BAD_SIGNATURES:
            headers = {"Content-Type": "application/json"}
            if signature is not None:
                headers["X-Hub-Signature-256"] = signature  # type: ignore[assignment]
            response = setup.gw.client.post(f"/webhooks/{channel}", content=raw, headers=headers)
            assert response.status_code == 401, (raw[:40], signature, response.text)
            assert "X-Hub-Signature-256" in response.json()["detail"]
        # Signed with another app's secret: forged too.
        forged = setup.meta(channel, raw, signature=meta_signature("not-the-app-secret", raw))
        assert forged.status_code == 401
    assert len(setup.dead(channel)) == before
    assert len(setup.gw.inbound(tenant_id=setup.tenants[channel])) == stored


NON_ASCII = "\u00e9\u00e8\u20ac".encode()  # arrives as non-ASCII text (HTTP headers are read as latin-1)


@pytest.mark.parametrize("channel", ["whatsapp", "telegram", "discord", "twilio", "ussd", "admin"])
def test_finding4_non_ascii_secret_or_signature_is_refused_not_500(setup: Setup, channel: str) -> None:
    """`hmac.compare_digest` raises TypeError on non-ASCII str: every secret comparison is over bytes."""
    expected = {"whatsapp": 401, "telegram": 403, "discord": 401, "twilio": 403, "ussd": 403, "admin": 401}
    if channel == "whatsapp":
        response = setup.meta("whatsapp", wa_body(), signature=b"sha256=" + NON_ASCII)
    elif channel == "telegram":
        response = setup.telegram(tg_body(), token=NON_ASCII)
    elif channel == "discord":
        response = setup.discord(dc_command(), signature=NON_ASCII)
    elif channel == "twilio":
        response = setup.twilio(tw_form(), signature=NON_ASCII)
    elif channel == "ussd":
        response = setup.gw.client.post(f"/webhooks/ussd?token={NON_ASCII.decode()}", data={
            "sessionId": "s1", "serviceCode": USSD_CODE, "phoneNumber": "+254700000001", "text": "hi"})
    else:
        state = setup.gw.client.app.state  # type: ignore[attr-defined]
        state.operator_token = "the-operator-token"  # as embedded `serve` sets it (app/cli.py)
        try:
            response = setup.gw.client.get("/admin/v1/tenant", headers={
                "Authorization": b"Bearer " + NON_ASCII, "X-Switchboard-Tenant": b"t"})
        finally:
            state.operator_token = None
    assert response.status_code == expected[channel], response.text
    assert response.json()["detail"]


# ---------------------------------------------------- finding 4: NUL and lone surrogates in a signed message

@pytest.mark.parametrize("channel", ["telegram", "twilio", "whatsapp"])
def test_finding4_nul_and_lone_surrogates_are_stripped_so_the_message_is_stored_and_answered(
    setup: Setup, channel: str
) -> None:
    """A signed message with NUL (which Postgres refuses) and an unpaired surrogate (which UTF-8 cannot encode)
    is stored without them, published, and handled by the orchestrator (escalated: no knowledge is live), where
    before it failed on every redelivery."""
    from app.assistant.orchestrator import Orchestrator
    from app.bootstrap import container
    from app.bus.consumer import Consumer
    from app.contracts import INBOUND

    if channel == "telegram":
        update = tg_update(_set("text", "hel\u0000lo \ud800there"))
        update["message"]["from"]["first_name"] = "Ana\u0000"
        raw = json.dumps(update).encode()  # json escapes: "\u0000", "\ud800", as Telegram would send them
        assert b"\\u0000" in raw and b"\\ud800" in raw
        response = setup.telegram(raw)
        provider_id = f"{update['message']['chat']['id']}:{update['message']['message_id']}"
    elif channel == "twilio":
        form = tw_form(Body="hel\u0000lo there", ProfileName="Ana\u0000")
        response = setup.twilio(form)
        provider_id = form["MessageSid"]
    else:
        provider_id = f"wamid.nul.{uuid.uuid4().hex}"
        response = setup.meta("whatsapp", wa_body(lambda m: m.update(
            id=provider_id, text={"body": "hel\u0000lo \udfffthere"}, context={"id": "x\u0000"})))
    assert response.status_code == 200, response.text
    outcome = response.headers["X-Switchboard-Outcome"] if channel == "twilio" else response.json()
    assert "accepted=1" in outcome if channel == "twilio" else outcome["accepted"] == 1
    (row,) = setup.gw.inbound(provider_message_id=provider_id)
    assert row.text == "hello there"
    assert "\\u0000" not in json.dumps(row.meta) and "\x00" not in json.dumps(row.meta, ensure_ascii=False)
    # The orchestrator handles it like any message: it ends escalated (or answered), not dead.
    consumer = Consumer(container().bus, INBOUND, f"probe-{uuid.uuid4().hex[:6]}", "c1", Orchestrator.of(container(),
                                                                                                         bus=container().bus).handle)
    consumer.process_available()
    (row,) = setup.gw.inbound(provider_message_id=provider_id)
    assert row.status in ("escalated", "answered"), (row.status, row.error)


def test_finding4_odd_but_readable_values_are_stored_not_500(setup: Setup) -> None:
    """Python's JSON parser accepts NaN, which Postgres refuses in a JSON column, and a username may come as a
    number: the message is still stored (the NaN as null, no display name) rather than retried forever."""
    def odd(message: dict[str, Any]) -> None:
        message.pop("text")
        message["location"] = {"latitude": float("nan"), "longitude": 13.4}
        message["reply_to_message"] = {"message_id": float("inf")}  # lands in the stored meta
        message["from"] = {"id": 408258968, "is_bot": False, "username": 12345}

    update = tg_update(odd)
    raw = json.dumps(update).encode()
    assert b"NaN" in raw and b"Infinity" in raw
    response = setup.telegram(raw)
    assert response.status_code == 200 and response.json()["accepted"] == 1, response.text
    (row,) = setup.gw.inbound(provider_message_id=f"{update['message']['chat']['id']}:"
                                                   f"{update['message']['message_id']}")
    assert row.meta["kind"] == "location" and row.text == "nan,13.4" and row.meta["reply_to"] is None


# ------------------------------------------------------------------ finding 8: Discord timestamp freshness

def test_finding8_discord_interaction_with_a_stale_or_future_timestamp_is_401(setup: Setup) -> None:
    ping = b'{"type": 1, "id": "1"}'
    now = int(time.time())
    # A minute past the 300 s window each way: one second past flaked when the request ran a second after `now`.
    for stale in (str(now - 360), str(now + 360), "0", "abc", "1e9", str(now) + "0" * 20):
        response = setup.discord(ping, timestamp=stale)  # correctly signed, over this timestamp
        assert response.status_code == 401, (stale, response.text)
        assert "X-Signature-Timestamp" in response.json()["detail"]
    for fresh in (str(now - 240), str(now + 60), str(now)):
        assert setup.discord(ping, timestamp=fresh).json() == {"type": 1}


def test_finding8_discord_autocomplete_gets_an_autocomplete_answer(setup: Setup) -> None:
    response = setup.discord(dc_command(type=4))
    assert response.status_code == 200 and response.json() == {"type": 8, "data": {"choices": []}}


# ------------------------------------------------------------ finding 8: one dedupe key per widget visitor

def test_finding8_two_widget_visitors_cannot_collide_on_one_provider_id(setup: Setup) -> None:
    """`v_a:b` sending `c` and `v_a` sending `b:c` used to share the key `v_a:b:c`: the second message was
    taken for a duplicate of the first, lost, and its sender told the first one's ids."""
    from gateways.payloads import scoped_key
    from gateways.webchat import sessions

    assert scoped_key("v_a:b", "c") != scoped_key("v_a", "b:c")
    assert scoped_key("v_abc", "m-1") == "v_abc:m-1"  # ids we issue keep the key they always had
    assert ":" not in scoped_key("v_a:b", "c") and len(scoped_key("v_" + ":" * 62, "x" * 100)) <= 200

    from app.db import session_scope
    from app.tenants.service import widget_account

    tenant = setup.gw.tenant()
    with session_scope(cross_tenant="tests") as session:
        widget = widget_account(session, tenant).external_id
    sent = []
    for contact, client_message_id, text in (("v_a:b", "c", "first visitor"), ("v_a", "b:c", "second visitor")):
        token = sessions.issue(widget, tenant, contact).token
        response = setup.gw.client.post(f"/widget/v1/{widget}/messages", headers={
            "Authorization": f"Bearer {token}"}, json={"text": text, "client_message_id": client_message_id})
        assert response.status_code == 202, response.text
        sent.append(response.json())
    assert [s["duplicate"] for s in sent] == [False, False]
    assert sent[0]["conversation_id"] != sent[1]["conversation_id"]
    rows = setup.gw.inbound(tenant_id=tenant)
    assert sorted(r.text for r in rows) == ["first visitor", "second visitor"]

