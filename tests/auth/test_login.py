"""POST /auth/login and GET /auth/me: the OAuth2 password flow, one generic failure, tenants, rate limits and
the rehash of passwords hashed with older parameters."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from app.bootstrap import container
from app.db import session_scope
from app.models import User
from tests.admin.conftest import TenantKeys
from tests.auth.conftest import PASSWORD, add_person, audit, bearer, email, login
from tests.conftest import Graph


def test_login_returns_the_token_pair_and_me_describes_the_person(client: TestClient, tenant_a: TenantKeys) -> None:
    address = email("dana")
    dana = add_person(tenant_a, address.replace("dana", "Dana"), "agent")
    response = client.post("/auth/login", data={"username": address, "password": PASSWORD,
                                                "grant_type": "password"})
    assert response.status_code == 200, response.text
    tokens = response.json()
    assert set(tokens) == {"access_token", "refresh_token", "token_type", "expires_in"}
    assert tokens["token_type"] == "bearer" and tokens["expires_in"] == 900
    assert response.headers["cache-control"] == "no-store"

    me = client.get("/auth/me", headers=bearer(tokens))
    assert me.status_code == 200
    assert me.json() == {"user_id": dana.user_id, "email": address, "tenant": tenant_a.slug,
                         "role": "agent"}
    # The email is matched whatever its case; the login is audited in the tenant, as the person.
    assert login(client, address.upper())["access_token"]
    logins = audit(client, tenant_a, action="auth.login")
    assert len(logins) == 2 and {e["actor"] for e in logins} == {f"user:{dana.user_id}"}
    assert {e["actor_name"] for e in logins} == {address}


def test_wrong_password_and_unknown_account_get_the_same_answer(client: TestClient, tenant_a: TenantKeys) -> None:
    dana = add_person(tenant_a, email("dana"), "agent")
    wrong = client.post("/auth/login", data={"username": dana.email, "password": "not the password!"})
    unknown = client.post("/auth/login", data={"username": email("nobody"), "password": "not the password!"})
    malformed = client.post("/auth/login", data={"username": "not an email", "password": "not the password!"})
    for response in (wrong, unknown, malformed):
        assert response.status_code == 401
        assert response.json() == {"detail": "wrong email or password"}
        assert response.headers["www-authenticate"] == "Bearer"
    assert client.post("/auth/login", data={"username": dana.email}).status_code == 422


def test_api_keys_are_not_people(client: TestClient, tenant_a: TenantKeys) -> None:
    response = client.get("/auth/me", headers=tenant_a.headers("agent"))
    assert response.status_code == 403 and "log in at POST /auth/login" in response.json()["detail"]
    assert client.get("/auth/me").status_code == 401


def test_a_person_in_several_tenants_names_one(client: TestClient, tenant_a: TenantKeys,
                                                tenant_b: TenantKeys) -> None:
    sam = add_person(tenant_a, email("sam"), "agent")
    add_person(tenant_b, sam.email, "admin")
    ambiguous = client.post("/auth/login", data={"username": sam.email, "password": PASSWORD})
    assert ambiguous.status_code == 409
    detail = ambiguous.json()["detail"]
    assert "send `tenant`" in detail and tenant_a.slug not in detail and tenant_b.slug not in detail

    into_b = login(client, sam, tenant=tenant_b.slug)
    assert client.get("/auth/me", headers=bearer(into_b)).json()["role"] == "admin"
    into_a = login(client, sam, tenant=tenant_a.slug)
    assert client.get("/auth/me", headers=bearer(into_a)).json() == {
        "user_id": sam.user_id, "email": sam.email, "tenant": tenant_a.slug, "role": "agent"}


def test_a_tenant_the_person_is_not_in_answers_like_one_that_does_not_exist(
    client: TestClient, tenant_a: TenantKeys, tenant_b: TenantKeys
) -> None:
    dana = add_person(tenant_a, email("dana"), "agent")
    theirs = client.post("/auth/login", data={"username": dana.email, "password": PASSWORD,
                                              "tenant": tenant_b.slug})
    missing = client.post("/auth/login", data={"username": dana.email, "password": PASSWORD,
                                               "tenant": "no-such-tenant"})
    assert theirs.status_code == missing.status_code == 403
    assert theirs.json()["detail"].replace(tenant_b.slug, "X") == missing.json()["detail"].replace(
        "no-such-tenant", "X")
    # A wrong password with a tenant named is the generic 401: the tenant is only looked at after the password.
    assert client.post("/auth/login", data={"username": dana.email, "password": "wrong password!!",
                                            "tenant": tenant_b.slug}).status_code == 401


@pytest.fixture
def strict_account_limit(graph: Graph) -> None:
    graph.configure(rate_login_failures_per_account="3/minute")


def test_failed_logins_per_account_are_limited_with_retry_after(strict_account_limit: None, client: TestClient,
                                                                tenant_a: TenantKeys) -> None:
    dana = add_person(tenant_a, email("dana"), "agent")
    for _ in range(3):
        login(client, dana.email, "wrong password!!", expect=401)
    limited = client.post("/auth/login", data={"username": dana.email, "password": PASSWORD})
    assert limited.status_code == 429  # even the right password, while the window is full
    assert int(limited.headers["retry-after"]) >= 1 and "failed logins for this account" in limited.json()["detail"]
    # An unknown account is limited the same way (no telling accounts apart by their limits).
    ghost = email("ghost")
    for _ in range(3):
        login(client, ghost, "wrong password!!", expect=401)
    assert client.post("/auth/login", data={"username": ghost, "password": "x"}).status_code == 429
    # Others are not held by Dana's window.
    lee = add_person(tenant_a, email("lee"), "agent")
    assert login(client, lee)["access_token"]


def test_failed_logins_per_address_are_limited(monkeypatch: pytest.MonkeyPatch, client: TestClient,
                                               tenant_a: TenantKeys) -> None:
    from app.config import get_settings
    from app.ratelimit import RateLimiter

    monkeypatch.setattr(get_settings(), "rate_login_failures_per_ip", "4/minute")
    container().use("rate_limiter", RateLimiter.from_settings(get_settings()))
    dana = add_person(tenant_a, email("dana"), "agent")
    for n in range(4):  # four different accounts from one address
        login(client, email(f"guess{n}"), "wrong password!!", expect=401)
    limited = client.post("/auth/login", data={"username": dana.email, "password": PASSWORD})
    assert limited.status_code == 429 and limited.headers["retry-after"]
    assert "per IP address" in limited.json()["detail"]


def test_a_password_hashed_with_older_parameters_is_rehashed_at_login(monkeypatch: pytest.MonkeyPatch,
                                                                       client: TestClient,
                                                                       tenant_a: TenantKeys) -> None:
    from app.config import get_settings

    dana = add_person(tenant_a, email("dana"), "agent")

    def stored() -> str:
        with session_scope(cross_tenant="tests") as session:
            return session.scalars(select(User.password_hash).where(User.id == dana.user_id)).one()

    old = stored()
    assert "m=1024,t=1" in old
    monkeypatch.setattr(get_settings(), "password_hash_memory_kib", 2048)
    monkeypatch.setattr(get_settings(), "password_hash_time_cost", 2)
    login(client, dana, "wrong password!!", expect=401)
    assert stored() == old  # a failed login changes nothing
    login(client, dana)
    new = stored()
    assert new != old and "m=2048,t=2" in new
    login(client, dana)  # and the new hash verifies
