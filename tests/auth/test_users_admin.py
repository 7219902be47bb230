"""/admin/v1/users: owners and admins invite and manage the tenant's people, the role rules hold, and nobody acts on
another tenant's people, not even by id."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import func, select

from app.db import session_scope
from app.models import User, utcnow
from tests.admin.conftest import TenantKeys
from tests.auth.conftest import PASSWORD, Person, add_person, audit, bearer, email, login


def _as(client: TestClient, person: Person, tenant: TenantKeys | None = None) -> dict[str, str]:
    return bearer(login(client, person, tenant=tenant.slug if tenant else None))


def _invite(client: TestClient, headers: dict[str, str], address: str, role: str,
            expect: int = 201) -> dict[str, Any]:
    response = client.post("/admin/v1/users", headers=headers, json={"email": address, "role": role})
    assert response.status_code == expect, response.text
    return response.json()  # type: ignore[no-any-return]


def _accept(client: TestClient, token: str, password: str = PASSWORD, expect: int = 200) -> dict[str, Any]:
    response = client.post("/auth/invitations/accept", json={"token": token, "password": password})
    assert response.status_code == expect, response.text
    return response.json()  # type: ignore[no-any-return]


def _add(client: TestClient, headers: dict[str, str], address: str, role: str) -> dict[str, Any]:
    """Invite and accept with a new account: the person's `/auth/me`, as a user row of the tenant."""
    tokens = _accept(client, _invite(client, headers, address, role)["token"])
    return client.get("/auth/me", headers=bearer(tokens)).json()  # type: ignore[no-any-return]


def test_an_admin_key_invites_lists_changes_and_removes_people(client: TestClient, tenant_a: TenantKeys) -> None:
    h = tenant_a.headers()
    address = email("dana")
    invited = _invite(client, h, address.upper(), "agent")
    assert set(invited) == {"invitation_id", "email", "role", "invited_by", "created_at", "expires_at", "token"}
    assert invited["email"] == address and invited["role"] == "agent"
    pending = client.get("/admin/v1/invitations", headers=h).json()["invitations"]
    assert [i["invitation_id"] for i in pending] == [invited["invitation_id"]] and "token" not in pending[0]
    assert client.get("/admin/v1/users", headers=h).json()["users"] == []  # not in the tenant before accepting

    tokens = _accept(client, invited["token"])  # a new account: the password becomes its own, and it is logged in
    me = client.get("/auth/me", headers=bearer(tokens)).json()
    assert me["email"] == address and me["tenant"] == tenant_a.slug and me["role"] == "agent"
    assert client.get("/admin/v1/invitations", headers=h).json()["invitations"] == []
    assert "password" not in client.get("/admin/v1/users", headers=h).text
    assert [u["user_id"] for u in client.get("/admin/v1/users", headers=h).json()["users"]] == [me["user_id"]]
    assert client.get(f"/admin/v1/users/{me['user_id']}", headers=h).json()["email"] == address
    assert "unknown, used" in _accept(client, invited["token"], expect=404)["detail"]  # one use

    dana = Person(me["user_id"], address, "agent")
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
    assert [a for a, _, _ in actions] == ["user.removed", "user.role_changed", "user.added", "user.invited"]
    invited_by = audit(client, tenant_a, action="user.invited")[0]["actor"]
    assert audit(client, tenant_a, action="user.added")[0]["actor"] == f"user:{dana.user_id}"
    assert audit(client, tenant_a, action="user.added")[0]["data"]["invited_by"] == invited_by
    assert {addr for _, _, addr in actions} == {address}


def test_bad_input_gets_a_clear_error(client: TestClient, tenant_a: TenantKeys) -> None:
    h = tenant_a.headers()
    assert "not an email" in _invite(client, h, "dana", "agent", expect=422)["detail"]
    assert _invite(client, h, email("x"), "boss", expect=422)["errors"][0]["loc"] == ["body", "role"]
    extra = client.post("/admin/v1/users", headers=h, json={"email": email("x"), "role": "agent", "password": "p"})
    assert extra.status_code == 422 and extra.json()["errors"][0]["loc"] == ["body", "password"]
    token = _invite(client, h, email("x"), "agent")["token"]
    assert "at least 12 characters" in _accept(client, token, password="short", expect=422)["detail"]
    assert "unknown, used" in _accept(client, "not-a-token", expect=404)["detail"]
    dana = _add(client, h, email("dana"), "agent")
    again = _invite(client, h, dana["email"], "admin", expect=409)
    assert "already in this tenant" in again["detail"]
    assert client.patch(f"/admin/v1/users/{dana['user_id']}", headers=h, json={"role": "root"}).status_code == 422
    assert client.get("/admin/v1/users", headers=h).json()["users"][0]["role"] == "agent"


def test_someone_with_an_account_elsewhere_joins_with_their_own_password(client: TestClient, tenant_a: TenantKeys,
                                                                        tenant_b: TenantKeys) -> None:
    sam = add_person(tenant_b, email("sam"), "agent")
    token = _invite(client, tenant_a.headers(), sam.email, "admin")["token"]
    # The token alone does not join someone's account: a wrong password is refused (and counted), and the
    # invitation still stands.
    assert _accept(client, token, password="the admin of A picked this", expect=401)["detail"] == (
        "wrong email or password")
    tokens = _accept(client, token)  # Sam's own password
    assert client.get("/auth/me", headers=bearer(tokens)).json() == {
        "user_id": sam.user_id, "email": sam.email, "tenant": tenant_a.slug, "role": "admin"}
    assert client.get("/auth/me", headers=bearer(login(client, sam, tenant=tenant_a.slug))).json()["role"] == "admin"
    # Removed from A, Sam is still B's agent, with the same account.
    assert client.delete(f"/admin/v1/users/{sam.user_id}", headers=tenant_a.headers()).status_code == 204
    assert client.get("/auth/me", headers=bearer(tokens)).status_code == 401
    assert client.get("/auth/me", headers=bearer(login(client, sam))).json()["tenant"] == tenant_b.slug


def test_inviting_answers_the_same_whether_or_not_the_email_has_an_account(client: TestClient, tenant_a: TenantKeys,
                                                                          tenant_b: TenantKeys) -> None:
    sam = add_person(tenant_b, email("sam"), "agent")
    known = client.post("/admin/v1/users", headers=tenant_a.headers(), json={"email": sam.email, "role": "agent"})
    unknown = client.post("/admin/v1/users", headers=tenant_a.headers(), json={"email": email("n"), "role": "agent"})
    assert known.status_code == unknown.status_code == 201
    assert set(known.json()) == set(unknown.json()) and sam.user_id not in known.text
    assert known.json()["role"] == unknown.json()["role"] and len(known.json()["token"]) == len(
        unknown.json()["token"])


def test_invitations_are_replaced_withdrawn_and_expire(client: TestClient, tenant_a: TenantKeys,
                                                       tenant_b: TenantKeys) -> None:
    h = tenant_a.headers()
    address = email("kim")
    first = _invite(client, h, address, "agent")
    second = _invite(client, h, address, "viewer")  # inviting again replaces the earlier token
    _accept(client, first["token"], expect=404)
    assert [i["role"] for i in client.get("/admin/v1/invitations", headers=h).json()["invitations"]] == ["viewer"]
    # Another tenant can neither see nor withdraw it.
    assert client.get("/admin/v1/invitations", headers=tenant_b.headers()).json()["invitations"] == []
    other = client.delete(f"/admin/v1/invitations/{second['invitation_id']}", headers=tenant_b.headers())
    assert other.status_code == 404
    assert client.delete(f"/admin/v1/invitations/{second['invitation_id']}", headers=h).status_code == 204
    assert client.delete(f"/admin/v1/invitations/{second['invitation_id']}", headers=h).status_code == 404
    _accept(client, second["token"], expect=404)
    assert audit(client, tenant_a, action="user.invitation_revoked")[0]["data"]["email"] == address

    third = _invite(client, h, address, "agent")
    with session_scope(cross_tenant="tests") as session:  # a week later
        from app.models import Invitation

        session.get_one(Invitation, third["invitation_id"]).expires_at = utcnow() - timedelta(seconds=1)
    _accept(client, third["token"], expect=404)
    assert client.get("/admin/v1/invitations", headers=h).json()["invitations"] == []
    assert client.get("/admin/v1/users", headers=h).json()["users"] == []


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
                           json={"email": email("x"), "role": "viewer"}).status_code == 403
    for headers in (as_admin, tenant_a.headers()):
        assert "only an owner" in _invite(client, headers, email("o"), "owner", expect=403)["detail"]
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
