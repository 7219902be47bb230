"""Refresh rotation, reuse detection (a spent refresh token revokes its whole login), logout, expiry, forged
tokens, the signing key, and changing one's password."""

from __future__ import annotations

from datetime import timedelta

import jwt
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, update

from app.db import session_scope
from app.models import LoginSession, RefreshToken, utcnow
from tests.admin.conftest import TenantKeys
from tests.auth.conftest import PASSWORD, Person, add_person, audit, bearer, email, login


@pytest.fixture
def dana(client: TestClient, tenant_a: TenantKeys) -> Person:
    return add_person(tenant_a, email("dana"), "agent")


def _refresh(client: TestClient, token: str, expect: int = 200) -> dict[str, str]:
    response = client.post("/auth/refresh", json={"refresh_token": token})
    assert response.status_code == expect, response.text
    return response.json()  # type: ignore[no-any-return]


def _me(client: TestClient, tokens: dict[str, str]) -> int:
    return client.get("/auth/me", headers=bearer(tokens)).status_code


def test_refresh_rotates_and_each_refresh_token_works_once(client: TestClient, dana: Person) -> None:
    first = login(client, dana)
    second = _refresh(client, first["refresh_token"])
    assert set(second) == {"access_token", "refresh_token", "token_type", "expires_in"}
    assert second["refresh_token"] != first["refresh_token"] and second["access_token"] != first["access_token"]
    assert _me(client, second) == 200
    third = _refresh(client, second["refresh_token"])
    assert _me(client, third) == 200
    # The stored form is a hash: no refresh token is kept as it was issued.
    with session_scope(cross_tenant="tests") as session:
        stored = set(session.scalars(select(RefreshToken.token_hash)))
    assert not stored & {first["refresh_token"], second["refresh_token"], third["refresh_token"]}


def test_a_reused_refresh_token_revokes_the_whole_login(client: TestClient, tenant_a: TenantKeys,
                                                        dana: Person) -> None:
    stolen = login(client, dana)
    other_login = login(client, dana)  # another device: a login of its own
    rotated = _refresh(client, stolen["refresh_token"])  # the rightful client refreshes

    reused = client.post("/auth/refresh", json={"refresh_token": stolen["refresh_token"]})  # the thief replays
    assert reused.status_code == 401 and "already used" in reused.json()["detail"]
    # Every token of that login is dead now: the rotated refresh token and the access tokens...
    assert "this login has ended" in _refresh(client, rotated["refresh_token"], expect=401)["detail"]
    assert _me(client, rotated) == 401 and _me(client, stolen) == 401
    # ...and the other login goes on.
    assert _me(client, other_login) == 200
    assert _refresh(client, other_login["refresh_token"])["access_token"]

    revoked = audit(client, tenant_a, action="auth.revoked")
    assert len(revoked) == 1 and revoked[0]["actor"] == "system"
    assert revoked[0]["data"]["reason"] == "refresh_reused" and revoked[0]["subject_id"] == dana.user_id


def test_logout_with_the_access_token_ends_the_login(client: TestClient, tenant_a: TenantKeys, dana: Person) -> None:
    tokens = login(client, dana)
    other = login(client, dana)
    assert client.post("/auth/logout", headers=bearer(tokens)).status_code == 204
    assert _me(client, tokens) == 401
    assert "this login has ended" in _refresh(client, tokens["refresh_token"], expect=401)["detail"]
    assert _me(client, other) == 200
    events = audit(client, tenant_a, action="auth.logout")
    assert [e["actor"] for e in events] == [f"user:{dana.user_id}"]


def test_logout_with_the_refresh_token_alone(client: TestClient, dana: Person) -> None:
    tokens = login(client, dana)
    assert client.post("/auth/logout", json={"refresh_token": tokens["refresh_token"]}).status_code == 204
    assert _me(client, tokens) == 401
    # Idempotent, and an unknown token changes nothing and tells nothing.
    assert client.post("/auth/logout", json={"refresh_token": tokens["refresh_token"]}).status_code == 204
    assert client.post("/auth/logout", json={"refresh_token": "made-up"}).status_code == 204
    assert client.post("/auth/logout").status_code == 401


def test_unknown_and_expired_refresh_tokens_are_refused(client: TestClient, dana: Person) -> None:
    assert "invalid refresh token" in _refresh(client, "made-up-token", expect=401)["detail"]
    tokens = login(client, dana)
    with session_scope(cross_tenant="tests") as session:
        session.execute(update(RefreshToken).values(expires_at=utcnow() - timedelta(seconds=1)))
    assert "expired" in _refresh(client, tokens["refresh_token"], expect=401)["detail"]


def test_expired_and_forged_access_tokens_are_refused(client: TestClient, tenant_a: TenantKeys, dana: Person) -> None:
    from app.accounts.tokens import AUDIENCE, ISSUER, AccessClaims, issue_access

    tokens = login(client, dana)
    claims = jwt.decode(tokens["access_token"], options={"verify_signature": False})
    old, _ = issue_access(AccessClaims(dana.user_id, tenant_a.id, claims["sid"]), utcnow() - timedelta(hours=1))
    expired = client.get("/auth/me", headers={"Authorization": f"Bearer {old}"})
    assert expired.status_code == 401 and "POST /auth/refresh" in expired.json()["detail"]

    body = {**claims, "exp": claims["exp"] + 3600}
    forged = [
        jwt.encode(body, "a guess at the key, thirty-two bytes!", algorithm="HS256"),
        jwt.encode(body, None, algorithm="none"),  # type: ignore[arg-type]
        jwt.encode({**body, "aud": "widget:x"}, "x" * 32, algorithm="HS256"),
    ]
    for token in forged:
        response = client.get("/auth/me", headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == 401 and response.json()["detail"] == "invalid access token"
    assert {"iss": ISSUER, "aud": AUDIENCE}.items() <= claims.items()
    assert "role" not in claims  # read from the database on every request


def test_the_signing_key_is_its_own(monkeypatch: pytest.MonkeyPatch, client: TestClient, dana: Person) -> None:
    from app.accounts.tokens import HKDF_INFO, _key
    from app.config import get_settings
    from app.keys import current as current_keys

    derived, _ = _key()
    secret = current_keys().signing[0].secret.encode()
    assert derived != secret and len(derived) == 32
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    assert derived == HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=HKDF_INFO).derive(secret)
    tokens = login(client, dana)
    jwt.decode(tokens["access_token"], derived, algorithms=["HS256"], audience="switchboard/api")

    monkeypatch.setattr(get_settings(), "token_key", "k" * 40)  # the operator sets TOKEN_KEY
    assert _me(client, tokens) == 401  # signed with the old key
    fresh = login(client, dana)
    jwt.decode(fresh["access_token"], b"k" * 40, algorithms=["HS256"], audience="switchboard/api")
    assert _me(client, fresh) == 200


def test_changing_the_password_ends_the_other_logins(client: TestClient, dana: Person) -> None:
    here, elsewhere = login(client, dana), login(client, dana)
    new = "a much better passphrase"
    wrong = client.post("/auth/password", headers=bearer(here),
                        json={"current_password": "not it at all", "new_password": new})
    assert wrong.status_code == 403
    short = client.post("/auth/password", headers=bearer(here),
                        json={"current_password": PASSWORD, "new_password": "short"})
    assert short.status_code == 422 and "at least 12" in short.json()["detail"]
    assert client.post("/auth/password", headers=bearer(here),
                       json={"current_password": PASSWORD, "new_password": new}).status_code == 204
    assert _me(client, here) == 200 and _me(client, elsewhere) == 401
    login(client, dana, expect=401)
    assert login(client, dana, password=new)["access_token"]
    with session_scope(cross_tenant="tests") as session:
        reasons = set(session.scalars(select(LoginSession.revoked_reason).where(LoginSession.user_id == dana.user_id)))
    assert reasons == {None, "password_changed"}
