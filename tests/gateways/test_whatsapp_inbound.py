"""Every WhatsApp Cloud API payload in ../shared/data/webhooks/whatsapp goes through POST /webhooks/whatsapp."""

from __future__ import annotations

import json
import threading
from typing import Any

import pytest
from sqlalchemy import select

from app.bootstrap import container
from tests.gateways.conftest import WEBHOOKS, Gateway, meta_signature

SECRET = "wa-app-secret"
UPDATES = WEBHOOKS / "whatsapp" / "updates"

# (file, case) -> what the body must become. Anything not listed is acknowledged and skipped.
EXPECTED: dict[tuple[str, str], tuple[str, str]] = {
    ("message", "text"): ("text", "Body Text"),
    ("message", "image"): ("media", ""),
    ("message", "media_with_url"): ("media", ""),
    ("message", "video"): ("media", "caption"),
    ("message", "document"): ("media", "caption"),
    ("message", "audio"): ("media", ""),
    ("message", "voice"): ("media", ""),
    ("message", "static_sticker"): ("media", ""),
    ("message", "animated_sticker"): ("media", ""),
    ("message", "reaction"): ("reaction", "\U0001f62e"),
    ("message", "unreaction_empty"): ("reaction", ""),
    ("message", "unreaction_no_emoji"): ("reaction", ""),
    ("message", "current_location"): ("location", "12.25089,43.90539"),
    ("message", "chosen_location"): ("location", "Facebook HQ, 1 Hacker Way, Menlo Park, CA 94025"),
    ("message", "contacts"): ("contacts", "Chandler Bing, Monica, Rachel Green"),
    ("message", "order"): ("interactive", "Order: 3 x HAMBURGER, 2 x FRENCH_FRIES, 2 x SODA"),
    ("message", "reply"): ("text", "replied text"),
    ("message", "forwarded"): ("text", "forwarded text"),
    ("message", "forwarded_many_times"): ("text", "text forwarded many times"),
    ("message", "referral"): ("text", "*"),
    ("callback_button", "button"): ("interactive", "title"),
    ("callback_button", "quick_reply"): ("interactive", "title"),
    ("callback_button", "quick_reply_without_context"): ("interactive", "title"),
    ("callback_selection", "callback"): ("interactive", "title"),
    ("callback_selection", "description"): ("interactive", "title"),
    ("flow_completion", "completion"): ("interactive", "*"),
    ("flow_completion", "without_flow_token"): ("interactive", "*"),
    ("edited_message", "image"): ("edit", "*"),
}
STATUSES = {"sent": "sent", "delivered": "delivered", "read": "read", "played": "read", "failed": "failed",
            "with_tracker": "sent", "group": "read"}


def cases() -> list[tuple[str, str, dict[str, Any]]]:
    out = []
    for path in sorted(UPDATES.glob("*.json")):
        for case, body in json.loads(path.read_text()).items():
            out.append((path.stem, case, body))
    return out


def phone_ids(body: dict[str, Any]) -> set[str]:
    return {
        str(c["value"]["metadata"]["phone_number_id"])
        for e in body.get("entry", []) for c in e.get("changes", [])
        if isinstance(c.get("value"), dict) and (c["value"].get("metadata") or {}).get("phone_number_id")
    }


@pytest.fixture(scope="module")
def tenants(gw: Gateway) -> dict[str, str]:
    """A separate tenant per business phone number in the corpus, plus one unrelated tenant."""
    ids = set().union(*(phone_ids(body) for _, _, body in cases()))
    out = {}
    for pid in sorted(ids):
        tenant = gw.tenant()
        gw.account(tenant, "whatsapp", pid, {"app_secret": SECRET, "verify_token": "vt-" + pid,
                                             "access_token": "tok"})
        out[pid] = tenant
    out["other"] = gw.tenant()
    return out


@pytest.fixture(autouse=True)
def _clean(gw: Gateway) -> None:
    gw.wipe_messages()


def post(gw: Gateway, raw: bytes, signature: str | None = None, secret: str = SECRET) -> Any:
    headers = {"Content-Type": "application/json"}
    headers["X-Hub-Signature-256"] = signature if signature is not None else meta_signature(secret, raw)
    return gw.client.post("/webhooks/whatsapp", content=raw, headers=headers)


@pytest.mark.parametrize(("file", "case", "body"), cases(), ids=[f"{f}-{c}" for f, c, _ in cases()])
def test_every_payload(gw: Gateway, tenants: dict[str, str], file: str, case: str, body: dict[str, Any]) -> None:
    raw = json.dumps(body).encode()
    response = post(gw, raw)
    assert response.status_code == 200, response.text
    stored = gw.inbound()
    expected = EXPECTED.get((file, case))
    if expected is None:
        assert stored == [], f"{file}/{case} should be acknowledged and skipped"
        if file == "message_status":
            assert response.json()["statuses"] == 1
        else:
            assert response.json()["accepted"] == 0
        return
    kind, text = expected
    assert len(stored) == 1 and response.json()["accepted"] == 1
    row = stored[0]
    (pid,) = phone_ids(body)
    assert row.tenant_id == tenants[pid]  # routed by phone_number_id
    assert row.meta["kind"] == kind
    if text != "*":
        assert row.text == text
    else:
        assert row.text
    events = [e for e in gw.bus_entries(row.tenant_id) if e["message_id"] == row.id]
    assert len(events) == 1 and events[0]["kind"] == kind and events[0]["channel"] == "whatsapp"
    if kind == "media":
        assert events[0]["attachments"][0]["media_id"]
    if kind == "location":
        assert events[0]["attachments"][0]["kind"] == "location"


def test_statuses_update_our_outbound_message(gw: Gateway, tenants: dict[str, str]) -> None:
    from app.conversations.replies import add_outbound
    from app.db import session_scope
    from app.models import Conversation, Message
    from tests.factories import get_or_create_contact

    body = json.loads((UPDATES / "message_status.json").read_text())
    (pid,) = phone_ids(body["sent"])
    tenant = tenants[pid]
    with session_scope(cross_tenant="tests") as session:
        contact = get_or_create_contact(session, tenant, "whatsapp", "972987654321")
        conv = Conversation(tenant_id=tenant, contact_id=contact.id, channel="whatsapp")
        session.add(conv)
        session.flush()
        msg, _ = add_outbound(session, conv, key="reply:x", text="hi", author="bot",
                              meta={"provider_id": "wamid.xyzxyz"})
        msg.status = "sent"
        msg.provider_ref = "wamid.xyzxyz"  # as the sender records it
        msg_id = msg.id
    for case in ("delivered", "read", "sent"):  # a late "sent" must not move it back
        assert post(gw, json.dumps(body[case]).encode()).status_code == 200
    with session_scope(cross_tenant="tests") as session:
        assert session.get_one(Message, msg_id).status == "read"
        # The same provider id under another tenant is untouched by this account's receipts.
        other = session.scalars(select(Message).where(Message.tenant_id == tenants["other"])).all()
        assert other == []


def test_signature_is_required_and_checked(gw: Gateway, tenants: dict[str, str]) -> None:
    raw = json.dumps(json.loads((UPDATES / "message.json").read_text())["text"]).encode()
    assert post(gw, raw, signature="").status_code == 401
    assert post(gw, raw, secret="not-the-secret").status_code == 401
    assert post(gw, raw, signature="sha256=" + "0" * 64).status_code == 401
    tampered = raw.replace(b"Body Text", b"Body Texx")
    assert post(gw, tampered, signature=meta_signature(SECRET, raw)).status_code == 401
    assert gw.inbound() == []
    # Same JSON, different bytes (re-serialised): the signature is over the bytes as received.
    respaced = json.dumps(json.loads(raw), indent=2).encode()
    assert post(gw, respaced, signature=meta_signature(SECRET, raw)).status_code == 401
    assert post(gw, raw).status_code == 200 and len(gw.inbound()) == 1


def test_unknown_account_is_404_and_signed_malformed_is_acknowledged_and_dead_lettered(
    gw: Gateway, tenants: dict[str, str]
) -> None:
    """Meta retries anything but a 200 for days: a signed body that cannot be read is answered 200 and kept as
    a dead letter with its reason. Every tenant here shares one app secret, so a body naming no account is
    nobody's: it goes to the operator's `unattributed` stream."""
    from app.bootstrap import container
    from gateways.common import UNATTRIBUTED, WEBHOOK_TOPIC

    body = json.loads((UPDATES / "message.json").read_text())["text"]
    body["entry"][0]["changes"][0]["value"]["metadata"]["phone_number_id"] = "999"
    response = post(gw, json.dumps(body).encode())
    assert response.status_code == 404 and "999" in response.json()["detail"]
    before = len(container().bus.dead_letters(WEBHOOK_TOPIC, UNATTRIBUTED))
    bad = post(gw, b"{not json")
    assert bad.status_code == 200 and bad.json()["dead"] == 1
    no_entry = post(gw, b'{"object": "whatsapp_business_account"}')
    assert no_entry.status_code == 200 and no_entry.json()["dead"] == 1
    letters = container().bus.dead_letters(WEBHOOK_TOPIC, UNATTRIBUTED)[before:]
    assert [(d.fields["payload"], d.fields["channel"]) for d in letters] == [
        ("{not json", "whatsapp"), ('{"object": "whatsapp_business_account"}', "whatsapp")]
    assert "not JSON" in letters[0].reason and "'entry' list" in letters[1].reason
    assert gw.inbound() == []


def test_handshake(gw: Gateway, tenants: dict[str, str]) -> None:
    pid = next(p for p in tenants if p != "other")
    ok = gw.client.get("/webhooks/whatsapp", params={"hub.mode": "subscribe", "hub.verify_token": "vt-" + pid,
                                                     "hub.challenge": "1158201444"})
    assert ok.status_code == 200 and ok.text == "1158201444"
    bad = gw.client.get("/webhooks/whatsapp", params={"hub.mode": "subscribe", "hub.verify_token": "nope",
                                                      "hub.challenge": "x"})
    assert bad.status_code == 403


def test_concurrent_duplicates_store_and_publish_once(gw: Gateway, tenants: dict[str, str]) -> None:
    body = json.loads((UPDATES / "message.json").read_text())["text"]
    body["entry"][0]["changes"][0]["value"]["messages"][0]["id"] = "wamid.concurrent"
    raw = json.dumps(body).encode()
    (pid,) = phone_ids(body)
    before = len(gw.bus_entries(tenants[pid]))
    barrier = threading.Barrier(8)
    codes: list[int] = []

    def hit() -> None:
        barrier.wait()
        codes.append(post(gw, raw).status_code)

    threads = [threading.Thread(target=hit) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert codes == [200] * 8
    assert len(gw.inbound(provider_message_id="wamid.concurrent")) == 1
    events = gw.bus_entries(tenants[pid])[before:]
    assert [e["provider_message_id"] for e in events] == ["wamid.concurrent"]


def test_an_account_with_unreadable_credentials_does_not_refuse_other_tenants_webhooks(
    gw: Gateway, tenants: dict[str, str]
) -> None:
    """Credentials saved under another secret key (a restored backup, a rotated key) make that one account
    unusable, not every tenant's WhatsApp webhooks: Meta checks each signature against all accounts."""
    from cryptography.fernet import Fernet

    from app.db import session_scope
    from app.models import ChannelAccount
    from gateways.common import ACCOUNT_CACHE_TTL_S, accounts_of

    broken_tenant = gw.tenant()
    broken_id = gw.account(broken_tenant, "whatsapp", "55500099", {"app_secret": "x", "verify_token": "v",
                                                                  "access_token": "t"})
    with session_scope(cross_tenant="tests") as session:
        session.get_one(ChannelAccount, broken_id).credentials_encrypted = (
            Fernet(Fernet.generate_key()).encrypt(b'{"app_secret": "x"}').decode())
    try:
        body = json.loads((UPDATES / "message.json").read_text())["text"]
        accounts_of(container(), "whatsapp", max_age_s=0)  # refresh the routing cache past the broken row
        response = post(gw, json.dumps(body).encode())
        assert response.status_code == 200, response.text
        assert response.json()["accepted"] == 1
        assert broken_id not in {a.id for a in accounts_of(container(), "whatsapp", max_age_s=ACCOUNT_CACHE_TTL_S)}
    finally:
        with session_scope(cross_tenant="tests") as session:
            session.delete(session.get_one(ChannelAccount, broken_id))
        accounts_of(container(), "whatsapp", max_age_s=0)
