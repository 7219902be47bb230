"""Instagram, Telegram, Twilio, Discord and USSD webhooks through the real HTTP endpoints, and every signature
vector in ../shared/data/webhooks."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from twilio.request_validator import RequestValidator

from app.bootstrap import container
from tests.gateways.conftest import WEBHOOKS, Gateway, meta_signature

IG_SECRET = "ig-app-secret"
TG_SECRET = "SecretToken"
TW_TOKEN = "twilio-auth-token"


@pytest.fixture(autouse=True)
def _clean(gw: Gateway) -> None:
    gw.wipe_messages()


# ---------------------------------------------------------------------------------------------------------- Instagram

IG = json.loads((WEBHOOKS / "instagram" / "bottender_messenger_events_converted.json").read_text())
IG_EXPECTED = {
    "textMessage": "text", "imageMessage": "media", "locationMessage": "location", "audioMessage": "media",
    "videoMessage": "media", "fileMessage": "media", "fallbackMessage": "media", "likeStickerMessage": "media",
    "largeLikeStickerMessage": "media", "hugeLikeStickerMessage": "media", "quickReplyMessage": "interactive",
    "postback": "interactive", "textMessageFromCustomerChatPlugin": "text", "postbackReferral": "interactive",
    "reactionReact": "reaction", "reactionUnreact": "reaction",
}


@pytest.fixture(scope="module")
def ig_accounts(gw: Gateway) -> dict[str, str]:
    ids = {str(ev.get("recipient", {}).get("id")) for ev in IG["messaging_events"].values()}
    ids |= {str(e["id"]) for body in IG["request_bodies"].values() for e in body["entry"]}
    ids |= {str(ev["sender"]["id"]) for ev in IG["messaging_events"].values() if "sender" in ev}
    out = {}
    for account_id in sorted(ids):
        tenant = gw.tenant()
        gw.account(tenant, "instagram", account_id, {"app_secret": IG_SECRET, "verify_token": "igvt",
                                                     "access_token": "t"})
        out[account_id] = tenant
    return out


def post_ig(gw: Gateway, body: dict[str, Any], secret: str = IG_SECRET) -> Any:
    raw = json.dumps(body).encode()
    return gw.client.post("/webhooks/instagram", content=raw,
                          headers={"X-Hub-Signature-256": meta_signature(secret, raw)})


@pytest.mark.parametrize("name", sorted(IG["messaging_events"]))
def test_instagram_messaging_events(gw: Gateway, ig_accounts: dict[str, str], name: str) -> None:
    event = IG["messaging_events"][name]
    account_id = str(event["recipient"]["id"])
    body = {"object": "instagram", "entry": [{"id": account_id, "time": 1, "messaging": [event]}]}
    response = post_ig(gw, body)
    assert response.status_code == 200, response.text
    stored = gw.inbound()
    expected = IG_EXPECTED.get(name)
    if expected is None:
        assert stored == [] and response.json()["skipped"] == 1
        return
    assert len(stored) == 1
    assert stored[0].tenant_id == ig_accounts[account_id] and stored[0].meta["kind"] == expected
    assert stored[0].channel == "instagram"


@pytest.mark.parametrize("name", sorted(IG["request_bodies"]))
def test_instagram_full_bodies(gw: Gateway, ig_accounts: dict[str, str], name: str) -> None:
    body = IG["request_bodies"][name]
    response = post_ig(gw, body)
    assert response.status_code == 200, response.text
    texts = sorted(m.text for m in gw.inbound())
    expected = {"request": ["text"], "echoRequest": [], "standbyRequest": [],
                "batchRequest": ["test 1", "test 2"]}[name]
    assert texts == expected
    if name == "batchRequest":  # two entries, two accounts, two tenants
        tenants = {m.tenant_id for m in gw.inbound()}
        assert tenants == {ig_accounts[str(e["id"])] for e in body["entry"]}


def test_instagram_bad_signature(gw: Gateway, ig_accounts: dict[str, str]) -> None:
    assert post_ig(gw, IG["request_bodies"]["request"], secret="wrong").status_code == 401
    assert gw.inbound() == []


# ---------------------------------------------------------------------------------------------------------- Telegram

TG_DIR = WEBHOOKS / "telegram"
BOT_ID = "7000001"


@pytest.fixture(scope="module")
def tg_tenant(gw: Gateway) -> str:
    tenant = gw.tenant()
    gw.account(tenant, "telegram", BOT_ID, {"bot_token": f"{BOT_ID}:AAA", "secret_token": TG_SECRET})
    return tenant


def tg_updates() -> list[tuple[str, dict[str, Any]]]:
    """Raw Updates, the Updates inside getUpdates responses, and every raw object wrapped as the Update field
    it arrives in (`message__*` -> message, `callback_query__*` -> callback_query; others under their own name,
    which Telegram does not send as updates: they must be skipped, not crash)."""
    out: list[tuple[str, dict[str, Any]]] = []
    for path in sorted((TG_DIR / "updates_teloxide").glob("*.json")):
        data = json.loads(path.read_text())
        if "result" in data:
            out += [(f"{path.stem}[{i}]", u) for i, u in enumerate(data["result"])]
        else:
            out.append((path.stem, data))
    for n, path in enumerate(sorted((TG_DIR / "objects_teloxide").glob("*.json"))):
        field = path.stem.split("__", 1)[0]
        out.append((path.stem, {"update_id": 10_000 + n, field: json.loads(path.read_text())}))
    return out


def post_tg(gw: Gateway, update: dict[str, Any], token: str | None = TG_SECRET) -> Any:
    headers = {"X-Telegram-Bot-Api-Secret-Token": token} if token is not None else {}
    return gw.client.post(f"/webhooks/telegram/{BOT_ID}", json=update, headers=headers)


@pytest.mark.parametrize(("name", "update"), tg_updates(), ids=[n for n, _ in tg_updates()])
def test_telegram_payloads(gw: Gateway, tg_tenant: str, name: str, update: dict[str, Any]) -> None:
    if "update_id" not in update:
        update = {"update_id": 1, **update}
    response = post_tg(gw, update)
    assert response.status_code == 200, response.text
    stored = gw.inbound()
    outcome = response.json()
    assert outcome["accepted"] + outcome["skipped"] + outcome["dead"] == 1
    # The corpus's one message missing its chat and id cannot be read: acknowledged, dead-lettered.
    assert outcome["dead"] == (name == "request__update_err[3]")
    if outcome["accepted"]:
        (row,) = stored
        assert row.tenant_id == tg_tenant and row.channel == "telegram"
        assert row.meta["kind"] in {"text", "media", "location", "contacts", "interactive", "reaction", "edit",
                                    "command"}
        msg = update.get("message") or update.get("edited_message") or {}
        if isinstance(msg.get("text"), str):
            assert row.text == msg["text"]
        if msg.get("photo"):
            assert row.meta["kind"] == "media" and row.text == msg.get("caption", "")
    else:
        assert stored == []


def test_telegram_specific_normalisation(gw: Gateway, tg_tenant: str) -> None:
    text = json.loads((TG_DIR / "updates_teloxide" / "update__de_private_chat_text_message.json").read_text())
    assert post_tg(gw, text).json()["accepted"] == 1
    reaction = json.loads((TG_DIR / "updates_teloxide" / "update__message_reaction_updated.json").read_text())
    assert post_tg(gw, reaction).json()["accepted"] == 1
    image = json.loads((TG_DIR / "objects_teloxide" / "message__de_image.json").read_text())
    assert post_tg(gw, {"update_id": 5, "message": image}).json()["accepted"] == 1
    cb = json.loads((TG_DIR / "objects_teloxide" / "callback_query__deserialize.json").read_text())
    assert post_tg(gw, {"update_id": 6, "callback_query": cb}).json()["accepted"] == 1
    kinds = {m.provider_message_id: m.meta["kind"] for m in gw.inbound()}
    assert kinds[f"{text['message']['chat']['id']}:{text['message']['message_id']}"] == "text"
    assert sorted(kinds.values()) == ["interactive", "media", "reaction", "text"]
    assert [m.text for m in gw.inbound() if m.meta["kind"] == "text"] == ["4"]


@pytest.mark.parametrize("vector", [v for v in json.loads(
    (WEBHOOKS / "signature_vectors_meta_telegram.json").read_text()) if v["name"].startswith("telegram")],
    ids=lambda v: v["name"])
def test_telegram_secret_token_vectors(gw: Gateway, vector: dict[str, Any]) -> None:
    bot = f"vec{abs(hash(vector['name'])) % 10**6}"
    tenant = gw.tenant()
    gw.account(tenant, "telegram", bot, {"bot_token": f"{bot}:x", "secret_token": vector["configured_secret"]})
    headers = {"X-Telegram-Bot-Api-Secret-Token": vector["header"]} if vector["header"] is not None else {}
    update = {"update_id": 1, "message": {"message_id": 1, "chat": {"id": 5, "type": "private"}, "text": "hi"}}
    response = gw.client.post(f"/webhooks/telegram/{bot}", json=update, headers=headers)
    if vector["expected"] == "accepted":
        assert response.status_code == 200 and len(gw.inbound(tenant_id=tenant)) == 1
    else:
        assert response.status_code == 403 and gw.inbound(tenant_id=tenant) == []


def test_telegram_unknown_bot_and_bad_body(gw: Gateway, tg_tenant: str) -> None:
    assert gw.client.post("/webhooks/telegram/424242", json={"update_id": 1},
                          headers={"X-Telegram-Bot-Api-Secret-Token": TG_SECRET}).status_code == 404
    # Telegram redelivers anything not answered 2xx: an authentic body that is not an Update is acknowledged
    # and kept, with the reason, in the tenant's dead-letter stream.
    from app.bootstrap import container

    bad = gw.client.post(f"/webhooks/telegram/{BOT_ID}", content=b"nope",
                         headers={"X-Telegram-Bot-Api-Secret-Token": TG_SECRET})
    assert bad.status_code == 200 and bad.json()["dead"] == 1
    letter = container().bus.dead_letters("webhook", tg_tenant)[-1]
    assert letter.fields["payload"] == "nope" and "not JSON" in letter.reason


# ---------------------------------------------------------------------------------------------- Meta vectors

META_VECTORS = [v for v in json.loads((WEBHOOKS / "signature_vectors_meta_telegram.json").read_text())
                if not v["name"].startswith("telegram")]


@pytest.mark.parametrize("vector", [v for v in META_VECTORS if v.get("header")], ids=lambda v: v["name"])
def test_meta_signature_vectors(vector: dict[str, Any]) -> None:
    from gateways.meta.verify import signature_valid

    if "raw_body" in vector:
        raw = vector["raw_body"].encode()
    else:
        (wa,) = json.loads((WEBHOOKS / vector["raw_body_file"]).read_text())
        raw = wa["raw_body"].encode()
    assert signature_valid(vector["app_secret"], raw, vector["signature"]) is vector["expected_valid"]
    assert signature_valid(vector["app_secret"], raw + b" ", vector["signature"]) is False


def test_meta_real_whatsapp_vector_through_the_endpoint(gw: Gateway) -> None:
    (vector,) = json.loads((WEBHOOKS / "whatsapp" / "signature_vectors.json").read_text())
    body = json.loads(vector["raw_body"])
    pid = body["entry"][0]["changes"][0]["value"]["metadata"]["phone_number_id"]
    tenant = gw.tenant()
    gw.account(tenant, "whatsapp", pid, {"app_secret": vector["app_secret"], "verify_token": "1qaz2wsx",
                                         "access_token": "t"})
    response = gw.client.post("/webhooks/whatsapp", content=vector["raw_body"].encode(),
                              headers={"X-Hub-Signature-256": vector["x_hub_signature_256"]})
    assert response.status_code == 200 and response.json()["accepted"] == 1
    (row,) = gw.inbound(tenant_id=tenant)
    assert row.text == "Hey there! I am using PyWa."
    for hs in [v for v in META_VECTORS if v.get("type") == "GET hub.challenge"]:
        r = gw.client.get("/webhooks/whatsapp", params=hs["query"])
        assert r.status_code == hs["expected"]["status"]
        if r.status_code == 200:
            assert r.text == hs["expected"]["body"]


# ---------------------------------------------------------------------------------------------------------- Twilio

TW = json.loads((WEBHOOKS / "twilio" / "signature_vectors.json").read_text())


def _params(vector: dict[str, Any]) -> list[tuple[str, str]] | str:
    if "raw_body" in vector:
        return vector["raw_body"]
    if "params_list" in vector:
        return [(str(k), str(v)) for k, v in vector["params_list"]]
    return [(k, v) for k, vs in vector["params"].items() for v in (vs if isinstance(vs, list) else [vs])]


@pytest.mark.parametrize("vector", TW["vectors"], ids=lambda v: v["name"])
def test_twilio_signature_vectors(vector: dict[str, Any]) -> None:
    from gateways.twilio.verify import signature_valid

    params = _params(vector)
    assert signature_valid(vector["auth_token"], vector["url"], params, vector["signature"]) is \
        vector["expected_valid"]
    # Any change to what was signed is refused.
    assert signature_valid(vector["auth_token"], vector["url"] + "x", params, vector["signature"]) is False
    assert signature_valid("another-token", vector["url"], params, vector["signature"]) is False


TWILIO_NUMBER = "+14155238886"


@pytest.fixture(scope="module")
def tw_tenant(gw: Gateway) -> str:
    tenant = gw.tenant()
    gw.account(tenant, "twilio", TWILIO_NUMBER, {"account_sid": "AC123", "auth_token": TW_TOKEN})
    return tenant


def post_tw(gw: Gateway, form: dict[str, str], url: str = "https://sb.example.com/webhooks/twilio",
            token: str = TW_TOKEN) -> Any:
    signature = RequestValidator(token).compute_signature(url, form)
    # The app sees http://testserver/...: the signature only matches via SWITCHBOARD_PUBLIC_BASE_URL.
    return gw.client.post("/webhooks/twilio", data=form, headers={"X-Twilio-Signature": signature})


def test_twilio_inbound_kinds_and_proxy_url(gw: Gateway, tw_tenant: str) -> None:
    base = {"AccountSid": "AC123", "To": f"whatsapp:{TWILIO_NUMBER}", "From": "whatsapp:+15005550006",
            "SmsStatus": "received", "ApiVersion": "2010-04-01", "ProfileName": "Ana"}
    forms = [
        {**base, "MessageSid": "SM1", "Body": "Hello", "NumMedia": "0"},
        {**base, "MessageSid": "SM2", "Body": "look", "NumMedia": "1", "MediaUrl0": "https://api.twilio.com/m/1",
         "MediaContentType0": "image/jpeg"},
        {**base, "MessageSid": "SM3", "Body": "", "Latitude": "37.7", "Longitude": "-122.4", "Address": "SF"},
        {**base, "MessageSid": "SM4", "Body": "Yes", "ButtonText": "Yes", "ButtonPayload": "confirm"},
        {**base, "To": TWILIO_NUMBER, "From": "+15005550007", "MessageSid": "SM5", "Body": "sms here"},
    ]
    for form in forms:
        response = post_tw(gw, form)
        assert response.status_code == 200, response.text
        assert response.headers["content-type"].startswith("text/xml")
    rows = {m.provider_message_id: m for m in gw.inbound()}
    assert {k: v.meta["kind"] for k, v in rows.items()} == {
        "SM1": "text", "SM2": "media", "SM3": "location", "SM4": "interactive", "SM5": "text"}
    assert all(r.tenant_id == tw_tenant for r in rows.values())
    assert rows["SM2"].text == "look" and rows["SM5"].meta["twilio_channel"] == "sms"
    # Redelivery: stored once.
    assert post_tw(gw, forms[0]).status_code == 200
    assert len(gw.inbound(provider_message_id="SM1")) == 1


def test_twilio_rejects_bad_signatures(gw: Gateway, tw_tenant: str) -> None:
    form = {"To": TWILIO_NUMBER, "From": "+15005550007", "MessageSid": "SMbad", "Body": "x"}
    assert post_tw(gw, form, token="wrong").status_code == 403
    assert post_tw(gw, form, url="http://testserver/webhooks/twilio").status_code == 403  # proxy URL ignored
    assert gw.client.post("/webhooks/twilio", data=form).status_code == 401
    assert gw.inbound() == []
    assert post_tw(gw, {**form, "To": "+19999999999"}).status_code == 404


def test_twilio_behind_a_tls_terminating_proxy(gw: Gateway, tw_tenant: str,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Twilio signs https://public.example/...; the proxy forwards it to http://127.0.0.1:8080/... . Only the
    configured public base URL counts, never the Host, scheme or X-Forwarded-* headers the process sees."""
    from app.config import get_settings

    monkeypatch.setattr(get_settings(), "public_base_url", "https://public.example")
    try:
        form = {"AccountSid": "AC123", "To": TWILIO_NUMBER, "From": "+15005550008", "MessageSid": "SMproxy",
                "Body": "via the proxy", "NumMedia": "0"}
        path = "/webhooks/twilio?source=sms"  # Twilio signs the query string too

        def arrive(signed_for: str, forwarded_host: str = "public.example") -> Any:
            signature = RequestValidator(TW_TOKEN).compute_signature(signed_for + path, form)
            return gw.client.post(f"http://127.0.0.1:8080{path}", data=form, headers={
                "X-Twilio-Signature": signature, "X-Forwarded-Proto": "https", "X-Forwarded-Host": forwarded_host})

        assert arrive("https://evil.example", forwarded_host="evil.example").status_code == 403  # wrong host
        assert arrive("http://public.example").status_code == 403  # the scheme behind the proxy
        assert arrive("http://127.0.0.1:8080").status_code == 403  # the URL this process sees
        assert gw.inbound() == []
        accepted = arrive("https://public.example")
        assert accepted.status_code == 200, accepted.text
        (row,) = gw.inbound()
        assert row.provider_message_id == "SMproxy" and row.text == "via the proxy" and row.tenant_id == tw_tenant
    finally:
        monkeypatch.undo()


def test_twilio_status_callback(gw: Gateway, tw_tenant: str) -> None:
    form = {"MessageSid": "SMout", "MessageStatus": "delivered", "From": TWILIO_NUMBER, "To": "+15005550007"}
    response = post_tw(gw, form)
    assert response.status_code == 200 and "statuses=1" in response.headers["X-Switchboard-Outcome"]


# ---------------------------------------------------------------------------------------------------------- Discord

APP_ID = "110000000000000001"


@pytest.fixture(scope="module")
def discord(gw: Gateway) -> tuple[str, Ed25519PrivateKey]:
    key = Ed25519PrivateKey.generate()
    public = key.public_key().public_bytes_raw().hex()
    tenant = gw.tenant()
    gw.account(tenant, "discord", APP_ID, {"bot_token": "b"}, config={"public_key": public})
    return tenant, key


def post_discord(gw: Gateway, key: Ed25519PrivateKey, body: dict[str, Any], tamper: bool = False) -> Any:
    raw = json.dumps(body).encode()
    ts = str(int(time.time()))
    sig = key.sign(ts.encode() + raw).hex()
    return gw.client.post(f"/webhooks/discord/{APP_ID}", content=raw + (b" " if tamper else b""),
                          headers={"X-Signature-Ed25519": sig, "X-Signature-Timestamp": ts})


def test_discord_ping_command_and_signatures(gw: Gateway, discord: tuple[str, Ed25519PrivateKey]) -> None:
    tenant, key = discord
    assert post_discord(gw, key, {"type": 1, "id": "1"}).json() == {"type": 1}
    assert post_discord(gw, key, {"type": 1, "id": "1"}, tamper=True).status_code == 401
    assert post_discord(gw, Ed25519PrivateKey.generate(), {"type": 1, "id": "1"}).status_code == 401
    command = {"type": 2, "id": "9001", "token": "itok", "channel_id": "c1",
               "member": {"user": {"id": "u1", "username": "ana"}},
               "data": {"name": "ask", "options": [{"name": "question", "type": 3, "value": "Do you ship?"}]}}
    assert post_discord(gw, key, command).json() == {"type": 5}
    (row,) = gw.inbound(tenant_id=tenant)
    assert row.text == "Do you ship?" and row.meta["kind"] == "command"
    assert row.meta["interaction_token"] == "itok"


# ---------------------------------------------------------------------------------------------------------- USSD


def test_ussd_question_goes_through_the_intake_and_the_screen_says_what_will_happen(gw: Gateway) -> None:
    """No orchestrator runs here: the question is stored and enqueued like any channel's (the answer is the
    orchestrator's, tests/e2e/test_channels_via_admin_api.py), and when none comes in time the screen says what
    will happen: nothing promised without an SMS account, an SMS with one."""
    from gateways.common import forget_accounts

    tenant = gw.tenant()
    gw.account(tenant, "ussd", "*384*123#", {"webhook_token": "ussd-tok"},
               config={"answer_wait_s": 0.1, "fallback": "Please call us."})
    form = {"sessionId": "ATU1", "serviceCode": "*384*123#", "phoneNumber": "+254711000000", "text": ""}
    first = gw.client.post("/webhooks/ussd?token=ussd-tok", data=form)
    assert first.status_code == 200 and first.text.startswith("CON ")
    ask = {**form, "text": "1*How long do returns take?"}
    waited = gw.client.post("/webhooks/ussd?token=ussd-tok", data=ask)
    assert waited.status_code == 200 and waited.text == "END Please call us."
    [question] = gw.inbound(tenant_id=tenant, channel="ussd")
    assert (question.provider_message_id, question.text, question.status) == ("ATU1:2", "How long do returns "
                                                                               "take?", "received")
    assert [e["message_id"] for e in gw.bus_entries(tenant)] == [question.id]  # enqueued for the orchestrator

    gw.account(tenant, "twilio", "+15005550001", {"account_sid": "AC1", "auth_token": "tw"})
    forget_accounts(container())
    by_sms = gw.client.post("/webhooks/ussd?token=ussd-tok", data={**ask, "sessionId": "ATU2"})
    assert by_sms.text == "END Thanks. We will send the answer by SMS."
    # The aggregator retries a step: stored once.
    gw.client.post("/webhooks/ussd?token=ussd-tok", data={**ask, "sessionId": "ATU2"})
    assert [m.provider_message_id for m in gw.inbound(tenant_id=tenant, channel="ussd")] == ["ATU1:2", "ATU2:2"]

    assert gw.client.post("/webhooks/ussd?token=nope", data=ask).status_code == 403
    assert gw.client.post("/webhooks/ussd?token=ussd-tok", data={**ask, "serviceCode": "*1#"}).status_code == 404
