"""Finding 3 (widget session takeover) and the widget half of finding 8 (tokens that never expire, visitors whose
ids collide): the server issues each visitor's contact id, a token names that contact, the widget and the
tenant, expires, and only its holder can renew it. Knowing a visitor's id gives nothing."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
from datetime import UTC, datetime, timedelta

import httpx
import jwt
import pytest
from fastapi.testclient import TestClient

from tests.admin import conftest as admin_fixtures
from tests.admin.conftest import TenantKeys

# The admin API fixtures (an embedded app, tenants with their keys and widget), shared with tests/admin.
client, tenant_a, tenant_b = admin_fixtures.client, admin_fixtures.tenant_a, admin_fixtures.tenant_b


@pytest.fixture
def backend() -> str:
    return "sqlite"  # the tokens never touch the database; the scoping tests run on Postgres too


def _open(client: TestClient, widget: str, bearer: str | None = None, **body: str) -> httpx.Response:
    """POST .../sessions with `bearer` as the Authorization header and `body` as the JSON body."""
    headers = {"Authorization": f"Bearer {bearer}"} if bearer else {}
    return client.post(f"/widget/v1/{widget}/sessions", headers=headers, json=body)


def _send(client: TestClient, widget: str, token: str, text: str, message_id: str) -> httpx.Response:
    return client.post(f"/widget/v1/{widget}/messages", headers={"Authorization": f"Bearer {token}"},
                       json={"text": text, "client_message_id": message_id})


def _read(client: TestClient, widget: str, token: str) -> httpx.Response:
    return client.get(f"/widget/v1/{widget}/messages", headers={"Authorization": f"Bearer {token}"})


def _texts(response: httpx.Response) -> list[str]:
    assert response.status_code == 200, response.text
    return [m["text"] for m in response.json()["messages"]]


def _minted(keys: TenantKeys, contact_id: str, issued_ago: timedelta) -> str:
    """A genuine token for `contact_id`, as the server would have issued it `issued_ago`."""
    from gateways.webchat import sessions

    return sessions.issue(keys.widget_id, keys.id, contact_id, now=datetime.now(UTC) - issued_ago).token


def test_finding3_each_new_session_gets_a_new_server_generated_contact(client: TestClient,
                                                                       tenant_a: TenantKeys) -> None:
    responses = [
        _open(client, tenant_a.widget_id),
        client.post(f"/widget/v1/{tenant_a.widget_id}/sessions"),  # no body at all
        _open(client, tenant_a.widget_id, note="unknown fields are ignored"),
    ]
    assert [r.status_code for r in responses] == [201, 201, 201], [r.text for r in responses]
    sessions = [r.json() for r in responses]
    ids = [s["contact_id"] for s in sessions]
    assert len(set(ids)) == 3
    # URL-safe and without ':', so `<contact>:<client message id>` provider ids cannot collide (finding 8).
    assert all(re.fullmatch(r"v_[A-Za-z0-9_-]{20,}", i) for i in ids), ids
    assert all(s["renewed"] is False and s["expires_in"] == 86_400 for s in sessions)
    expires = datetime.fromisoformat(sessions[0]["expires_at"])
    assert timedelta(hours=23) < expires - datetime.now(UTC) <= timedelta(hours=24)


def test_finding3_cannot_get_token_for_existing_contact(client: TestClient, tenant_a: TenantKeys) -> None:
    from app.keys import current as current_keys

    widget = tenant_a.widget_id
    victim = _open(client, widget).json()
    assert _send(client, widget, victim["token"], "my order is 4417, address 12 Elm St", "m1").status_code == 202

    # Asking for the victim's contact id, without a token or with the attacker's own, is refused.
    alone = _open(client, widget, contact_id=victim["contact_id"])
    assert alone.status_code == 403 and "token" in alone.json()["detail"]
    attacker = _open(client, widget).json()
    for response in (_open(client, widget, attacker["token"], contact_id=victim["contact_id"]),
                     _open(client, widget, token=attacker["token"], contact_id=victim["contact_id"])):
        assert response.status_code == 403, response.text
        assert "another contact" in response.json()["detail"]
    # Tokens forged for the victim's id: the old `<contact>.<hmac>` scheme, an unsigned JWT, a JWT under
    # another key. None reads, sends or renews.
    old_scheme = hmac.new(current_keys().signing[0].secret.encode(), f"{widget}:{victim['contact_id']}".encode(),
                          hashlib.sha256).hexdigest()
    claims = {"sub": victim["contact_id"], "aud": f"widget:{widget}", "tid": tenant_a.id,
              "iss": "switchboard/webchat", "iat": datetime.now(UTC), "exp": datetime.now(UTC) + timedelta(hours=1)}
    header = base64.urlsafe_b64encode(json.dumps({"alg": "none", "typ": "JWT"}).encode()).rstrip(b"=").decode()
    payload = base64.urlsafe_b64encode(json.dumps({**claims, "iat": 0, "exp": 2**40}).encode()).rstrip(b"=")
    forged = [
        f"{victim['contact_id']}.{old_scheme}",
        f"{header}.{payload.decode()}.",
        jwt.encode(claims, "not-the-server-key-but-just-as-long-as-one", algorithm="HS256"),
        jwt.encode(claims, current_keys().signing[0].secret, algorithm="HS256"),  # the raw secret is not the key
    ]
    for token in forged:
        assert _read(client, widget, token).status_code == 401, token
        assert _send(client, widget, token, "hi", "m2").status_code == 401, token
        assert _open(client, widget, token).status_code == 401, token
    # The attacker's own session holds nothing of the victim's; the victim still reads their own.
    assert _texts(_read(client, widget, attacker["token"])) == []
    assert _texts(_read(client, widget, victim["token"])) == ["my order is 4417, address 12 Elm St"]


def test_finding3_token_is_bound_to_its_widget_and_tenant(client: TestClient, tenant_a: TenantKeys,
                                                          tenant_b: TenantKeys) -> None:
    visitor = _open(client, tenant_a.widget_id).json()
    assert _send(client, tenant_a.widget_id, visitor["token"], "hello A", "m1").status_code == 202
    assert _read(client, tenant_b.widget_id, visitor["token"]).status_code == 401
    assert _send(client, tenant_b.widget_id, visitor["token"], "hello B", "m1").status_code == 401
    assert _open(client, tenant_b.widget_id, visitor["token"]).status_code == 401
    # A token naming A's widget but B's tenant (as if the widget id had moved) is not renewed either.
    from gateways.webchat import sessions

    crossed = sessions.issue(tenant_a.widget_id, tenant_b.id, visitor["contact_id"]).token
    assert _open(client, tenant_a.widget_id, crossed).status_code == 401


def test_finding8_widget_tokens_expire_with_a_message_naming_the_fix(client: TestClient,
                                                                     tenant_a: TenantKeys) -> None:
    widget = tenant_a.widget_id
    contact = _open(client, widget).json()["contact_id"]
    expired = _minted(tenant_a, contact, timedelta(hours=24, minutes=1))
    for response in (_read(client, widget, expired), _send(client, widget, expired, "hi", "m1")):
        assert response.status_code == 401
        detail = response.json()["detail"]
        assert "expired" in detail and f"/widget/v1/{widget}/sessions" in detail, detail
    fresh = _minted(tenant_a, contact, timedelta(hours=23, minutes=59))
    assert _read(client, widget, fresh).status_code == 200


def test_finding8_expired_token_is_renewed_within_grace_for_the_same_contact(client: TestClient,
                                                                              tenant_a: TenantKeys) -> None:
    widget = tenant_a.widget_id
    first = _open(client, widget).json()
    assert _send(client, widget, first["token"], "where is my parcel?", "m1").status_code == 202
    expired = _minted(tenant_a, first["contact_id"], timedelta(days=3))  # expired two days ago

    by_header = _open(client, widget, expired)
    by_body = _open(client, widget, token=expired, contact_id=first["contact_id"])
    for response in (by_header, by_body):
        assert response.status_code == 201, response.text
        renewed = response.json()
        assert renewed["renewed"] is True and renewed["contact_id"] == first["contact_id"]
        assert renewed["token"] != expired
        assert _texts(_read(client, widget, renewed["token"])) == ["where is my parcel?"]
    # A valid token renews too (the page does so before expiry), keeping the contact.
    again = _open(client, widget, first["token"]).json()
    assert again["contact_id"] == first["contact_id"] and again["renewed"] is True


def test_finding8_token_past_its_grace_period_cannot_be_renewed(client: TestClient, tenant_a: TenantKeys) -> None:
    widget = tenant_a.widget_id
    old = _open(client, widget).json()
    stale = _minted(tenant_a, old["contact_id"], timedelta(days=8, minutes=1))  # 24 h + 7 days of grace, passed
    refused = _open(client, widget, stale)
    assert refused.status_code == 401
    assert "can no longer be renewed" in refused.json()["detail"] and "without a token" in refused.json()["detail"]
    fresh = _open(client, widget).json()
    assert fresh["contact_id"] != old["contact_id"] and fresh["renewed"] is False


def test_finding3_conflicting_tokens_are_refused(client: TestClient, tenant_a: TenantKeys) -> None:
    one, two = _open(client, tenant_a.widget_id).json(), _open(client, tenant_a.widget_id).json()
    response = _open(client, tenant_a.widget_id, one["token"], token=two["token"])
    assert response.status_code == 422 and "two different tokens" in response.json()["detail"]
