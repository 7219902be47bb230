"""/admin/v1/users: owners and admins manage the tenant's people, the role rules hold, and nobody acts on
another tenant's people, not even by id."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import func, select

from app.db import session_scope
from app.models import User
from tests.admin.conftest import TenantKeys
from tests.auth.conftest import PASSWORD, Person, add_person, audit, bearer, email, login


def _as(client: TestClient, person: Person, tenant: TenantKeys | None = None) -> dict[str, str]:
    return bearer(login(client, person, tenant=tenant.slug if tenant else None))


def _add(client: TestClient, headers: dict[str, str], address: str, role: str, expect: int = 201,
         password: str | None = PASSWORD) -> dict[str, Any]:
    body: dict[str, Any] = {"email": address, "role": role}
    if password is not None:
        body["password"] = password
    response = client.post("/admin/v1/users", headers=headers, json=body)
    assert response.status_code == expect, response.text
    return response.json()  # type: ignore[no-any-return]


def test_an_admin_key_adds_lists_changes_and_removes_people(client: TestClient, tenant_a: TenantKeys) -> None:
    h = tenant_a.headers()
    address = email("dana")
    created = _add(client, h, address.upper(), "agent")
    assert set(created) == {"user_id", "email", "role", "added_at", "new_account"}
    assert created["email"] == address and created["role"] == "agent" and created["new_account"] is True
    assert "password" not in client.get("/admin/v1/users", headers=h).text
    assert [u["user_id"] for u in client.get("/admin/v1/users", headers=h).json()["users"]] == [created["user_id"]]
    assert client.get(f"/admin/v1/users/{created['user_id']}", headers=h).json()["email"] == address

    dana = Person(created["user_id"], address, "agent")
    tokens = login(client, dana)
    changed = client.patch(f"/admin/v1/users/{dana.user_id}", headers=h, json={"role": "viewer"})
    assert changed.status_code == 200 and changed.json()["role"] == "viewer"
    assert client.get("/auth/me", headers=bearer(tokens)).json()["role"] == "viewer"  # at once, same token

    assert client.delete(f"/admin/v1/users/{dana.user_id}", headers=h).status_code == 204
    assert client.get("/auth/me", headers=bearer(tokens)).status_code == 401  # the removal ends the login
    assert client.get("/admin/v1/users", headers=h).json()["users"] == []
    with session_scope(cross_tenant="tests") as session:  # in no tenant any more: the account (and its hash) is gone
        assert session.scalar(select(func.count()).select_from(User).where(User.id == dana.user_id)) == 0
    login(client, dana, expect=401)
    assert client.delete(f"/admin/v1/users/{dana.user_id}", headers=h).status_code == 404

    actions = [(e["action"], e["actor"], e["data"].get("email")) for e in audit(client, tenant_a)
               if e["action"].startswith("user.")]
    assert [a for a, _, _ in actions] == ["user.removed", "user.role_changed", "user.added"]
    assert {actor for _, actor, _ in actions} == {audit(client, tenant_a, action="user.added")[0]["actor"]}
    assert {addr for _, _, addr in actions} == {address}


def test_bad_input_gets_a_clear_error(client: TestClient, tenant_a: TenantKeys) -> None:
    h = tenant_a.headers()
    assert "not an email" in _add(client, h, "dana", "agent", expect=422)["detail"]
    assert _add(client, h, email("x"), "boss", expect=422)["errors"][0]["loc"] == ["body", "role"]
    assert "needs an initial password" in _add(client, h, email("x"), "agent", expect=422, password=None)["detail"]
    assert "at least 12 characters" in _add(client, h, email("x"), "agent", expect=422, password="short")["detail"]
    dana = _add(client, h, email("dana"), "agent")
    again = _add(client, h, dana["email"], "admin", expect=409)
    assert "already in this tenant" in again["detail"]
    assert client.patch(f"/admin/v1/users/{dana['user_id']}", headers=h, json={"role": "root"}).status_code == 422
    assert client.get("/admin/v1/users", headers=h).json()["users"][0]["role"] == "agent"


def test_someone_with_an_account_elsewhere_keeps_their_own_password(client: TestClient, tenant_a: TenantKeys,
                                                                    tenant_b: TenantKeys) -> None:
    sam = add_person(tenant_b, email("sam"), "agent")
    added = _add(client, tenant_a.headers(), sam.email, "admin", password="the admin of A picked this")
    assert added["new_account"] is False and added["user_id"] == sam.user_id
    login(client, sam, password="the admin of A picked this", tenant=tenant_a.slug, expect=401)
    tokens = login(client, sam, tenant=tenant_a.slug)
    assert client.get("/auth/me", headers=bearer(tokens)).json()["role"] == "admin"
    # Removed from A, Sam is still B's agent, with the same account.
    assert client.delete(f"/admin/v1/users/{sam.user_id}", headers=tenant_a.headers()).status_code == 204
    assert client.get("/auth/me", headers=bearer(tokens)).status_code == 401
    assert client.get("/auth/me", headers=bearer(login(client, sam))).json()["tenant"] == tenant_b.slug


def test_role_rules(client: TestClient, tenant_a: TenantKeys) -> None:
    owner = add_person(tenant_a, email("owner"), "owner")
    admin = add_person(tenant_a, email("admin"), "admin")
    agent = add_person(tenant_a, email("agent"), "agent")
    viewer = add_person(tenant_a, email("viewer"), "viewer")
    as_owner, as_admin = _as(client, owner), _as(client, admin)

    # Agents and viewers manage nobody; admin keys and admins manage everyone but owners.
    for headers in (_as(client, agent), _as(client, viewer), tenant_a.headers("agent")):
        assert client.get("/admin/v1/users", headers=headers).status_code == 403
        assert client.post("/admin/v1/users", headers=headers,
                           json={"email": email("x"), "role": "viewer", "password": PASSWORD}).status_code == 403
    for headers in (as_admin, tenant_a.headers()):
        assert "only an owner" in _add(client, headers, email("o"), "owner", expect=403)["detail"]
        assert client.patch(f"/admin/v1/users/{agent.user_id}", headers=headers,
                            json={"role": "owner"}).status_code == 403
        assert client.patch(f"/admin/v1/users/{owner.user_id}", headers=headers,
                            json={"role": "agent"}).status_code == 403
        assert client.delete(f"/admin/v1/users/{owner.user_id}", headers=headers).status_code == 403
    newcomer = _add(client, as_admin, email("new"), "admin")
    assert client.patch(f"/admin/v1/users/{agent.user_id}", headers=as_admin, json={"role": "admin"}).json()[
        "role"] == "admin"

    # The last owner can be neither demoted nor removed, even by themself; with a second owner, they can.
    last = client.patch(f"/admin/v1/users/{owner.user_id}", headers=as_owner, json={"role": "admin"})
    assert last.status_code == 409 and "last owner" in last.json()["detail"]
    assert client.delete(f"/admin/v1/users/{owner.user_id}", headers=as_owner).status_code == 409
    assert client.patch(f"/admin/v1/users/{newcomer['user_id']}", headers=as_owner,
                        json={"role": "owner"}).status_code == 200
    assert client.patch(f"/admin/v1/users/{owner.user_id}", headers=as_owner, json={"role": "admin"}).json()[
        "role"] == "admin"
    roles = {u["email"]: u["role"] for u in client.get("/admin/v1/users", headers=as_admin).json()["users"]}
    assert roles == {owner.email: "admin", admin.email: "admin", agent.email: "admin", viewer.email: "viewer",
                     newcomer["email"]: "owner"}


def test_an_owner_or_admin_login_works_on_the_admin_api_and_the_others_do_not(client: TestClient,
                                                                                tenant_a: TenantKeys) -> None:
    owner = add_person(tenant_a, email("owner"), "owner")
    admin = add_person(tenant_a, email("admin"), "admin")
    agent = add_person(tenant_a, email("agent"), "agent")
    viewer = add_person(tenant_a, email("viewer"), "viewer")
    for person in (owner, admin):
        headers = _as(client, person)
        assert client.get("/admin/v1/tenant", headers=headers).json()["id"] == tenant_a.id
        renamed = client.patch("/admin/v1/tenant", headers=headers, json={"name": f"by {person.role}"})
        assert renamed.status_code == 200
    for person in (agent, viewer):
        headers = _as(client, person)
        refused = client.get("/admin/v1/tenant", headers=headers)
        assert refused.status_code == 403 and "owner's or admin's login" in refused.json()["detail"]
        assert client.get("/admin/v1/conversations", headers=headers).status_code == 200  # reads are for all
    updates = audit(client, tenant_a, action="tenant.updated")
    assert [(e["actor"], e["actor_name"]) for e in updates] == [
        (f"user:{admin.user_id}", admin.email), (f"user:{owner.user_id}", owner.email)]


def test_nobody_acts_on_another_tenants_people(client: TestClient, tenant_a: TenantKeys,
                                               tenant_b: TenantKeys) -> None:
    a_owner = add_person(tenant_a, email("a-owner"), "owner")
    b_agent = add_person(tenant_b, email("b-agent"), "agent")
    b_owner = add_person(tenant_b, email("b-owner"), "owner")
    before = client.get("/admin/v1/users", headers=tenant_b.headers()).json()
    for headers in (_as(client, a_owner), tenant_a.headers()):
        for user_id in (b_agent.user_id, b_owner.user_id):
            attempts = [("GET", None), ("PATCH", {"role": "viewer"}), ("DELETE", None)]
            for method, body in attempts:
                r = client.request(method, f"/admin/v1/users/{user_id}", headers=headers, json=body)
                assert r.status_code == 404 and "in this tenant" in r.json()["detail"], (method, r.text)
        assert {u["user_id"] for u in client.get("/admin/v1/users", headers=headers).json()["users"]} <= {
            a_owner.user_id}
    assert client.get("/admin/v1/users", headers=tenant_b.headers()).json() == before
    # A's owner token cannot be pointed at B with the operator's tenant header either.
    headers = {**_as(client, a_owner), "X-Switchboard-Tenant": tenant_b.slug}
    assert client.get("/admin/v1/tenant", headers=headers).json()["id"] == tenant_a.id
    assert client.get("/admin/v1/users", headers=headers).json()["users"][0]["user_id"] == a_owner.user_id
    # B's agent still works in B.
    assert client.get("/auth/me", headers=_as(client, b_agent)).json()["tenant"] == tenant_b.slug


def test_two_owners_demoting_each_other_at_once_leave_one_owner(client: TestClient, tenant_a: TenantKeys) -> None:
    import threading

    from app.accounts import service
    from app.auth import Principal

    for _ in range(5):
        one, two = add_person(tenant_a, email("one"), "owner"), add_person(tenant_a, email("two"), "owner")
        with session_scope(cross_tenant="tests") as session:  # only these two are owners
            for member in service.list_members(session, tenant_a.id):
                if member.role == "owner" and member.user_id not in (one.user_id, two.user_id):
                    service.remove_member(session, service.tenant_operator(session, tenant_a.slug), member.user_id)
        barrier = threading.Barrier(2)
        outcomes: list[str] = []

        def demote(actor: Person, target: Person) -> None:
            who = Principal(tenant_a.id, tenant_a.slug, "admin", None, actor.email, user_id=actor.user_id,
                            role="owner")
            barrier.wait()
            try:
                with session_scope(cross_tenant="tests") as session:
                    service.change_role(session, who, target.user_id, "admin")
                outcomes.append("demoted")
            except service.Conflict:
                outcomes.append("refused")

        threads = [threading.Thread(target=demote, args=pair) for pair in ((one, two), (two, one))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert sorted(outcomes) == ["demoted", "refused"]
        with session_scope(cross_tenant="tests") as session:
            assert [m.role for m in service.list_members(session, tenant_a.id)].count("owner") == 1
