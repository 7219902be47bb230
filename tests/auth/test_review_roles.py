"""The review API with people's logins: viewers read, agents and up decide, every decision names the person,
and nobody sees or decides another tenant's escalations."""

from __future__ import annotations

from fastapi.testclient import TestClient
from sqlalchemy import select

from app.db import session_scope
from app.models import Escalation, Message
from tests.admin.conftest import TenantKeys, seed_conversation
from tests.auth.conftest import add_person, audit, bearer, email, login


def _open_escalation(tenant: TenantKeys, contact: str = "v_alice") -> tuple[str, str]:
    conversation_id = seed_conversation(tenant.id, contact=contact, n_turns=1, escalate=True)
    with session_scope(cross_tenant="tests") as session:
        escalation_id = session.scalars(select(Escalation.id).where(Escalation.conversation_id == conversation_id)
                                        ).one()
    return escalation_id, conversation_id


def test_viewers_read_the_queue_but_cannot_act(client: TestClient, tenant_a: TenantKeys) -> None:
    escalation_id, conversation_id = _open_escalation(tenant_a)
    viewer = bearer(login(client, add_person(tenant_a, email("vi"), "viewer")))
    queue = client.get("/review/v1/escalations", headers=viewer)
    assert queue.status_code == 200 and [e["id"] for e in queue.json()] == [escalation_id]
    assert client.get(f"/review/v1/escalations/{escalation_id}", headers=viewer).status_code == 200
    acts = [
        (f"/review/v1/escalations/{escalation_id}/decision", {"decision": "edit", "text": "Hello"}),
        (f"/review/v1/escalations/{escalation_id}/decision", {"decision": "reject"}),
        (f"/review/v1/conversations/{conversation_id}/takeover", None),
        (f"/review/v1/conversations/{conversation_id}/release", None),
        (f"/review/v1/conversations/{conversation_id}/messages", {"text": "hi", "client_message_id": "m1"}),
    ]
    for path, body in acts:
        refused = client.post(path, headers=viewer, json=body)
        assert refused.status_code == 403 and "viewers can read but not act" in refused.json()["detail"], path
    with session_scope(cross_tenant="tests") as session:
        assert session.get_one(Escalation, escalation_id).status == "open"
        # This tenant's only: the session's Postgres database is shared with the other tests.
        assert session.scalars(select(Message).where(Message.tenant_id == tenant_a.id, Message.direction == "out",
                                                     Message.author.like("agent:%"))).all() == []


def test_a_decision_records_the_person_who_made_it(client: TestClient, tenant_a: TenantKeys) -> None:
    escalation_id, conversation_id = _open_escalation(tenant_a)
    dana = add_person(tenant_a, email("dana"), "agent")
    headers = bearer(login(client, dana))
    decided = client.post(f"/review/v1/escalations/{escalation_id}/decision", headers=headers,
                          json={"decision": "edit", "text": "It ships tomorrow.", "note": "checked"})
    assert decided.status_code == 200, decided.text
    assert decided.json()["reviewer"] == dana.email and decided.json()["status"] == "approved"

    with session_scope(cross_tenant="tests") as session:
        assert session.get_one(Escalation, escalation_id).reviewer == dana.email
        reply = session.scalars(select(Message).where(Message.conversation_id == conversation_id,
                                                      Message.text == "It ships tomorrow.")).one()
        assert reply.author == f"agent:{dana.email}"
    [event] = audit(client, tenant_a, action="escalation.edit")
    assert event["actor"] == f"user:{dana.user_id}" and event["actor_name"] == dana.email
    assert event["subject_id"] == escalation_id and event["data"]["note"] == "checked"

    # Taking a conversation over names the person too.
    took = client.post(f"/review/v1/conversations/{conversation_id}/takeover", headers=headers)
    assert took.status_code == 200 and took.json()["assigned_agent"] == dana.email
    [takeover] = audit(client, tenant_a, action="conversation.takeover")
    assert takeover["actor"] == f"user:{dana.user_id}"


def test_admins_and_owners_decide_too_and_api_keys_still_work(client: TestClient, tenant_a: TenantKeys) -> None:
    first, _ = _open_escalation(tenant_a, "v_one")
    second, _ = _open_escalation(tenant_a, "v_two")
    owner = add_person(tenant_a, email("owner"), "owner")
    assert client.post(f"/review/v1/escalations/{first}/decision", headers=bearer(login(client, owner)),
                       json={"decision": "reject"}).json()["reviewer"] == owner.email
    by_key = client.post(f"/review/v1/escalations/{second}/decision", headers=tenant_a.headers("agent"),
                         json={"decision": "reject"})
    assert by_key.status_code == 200 and by_key.json()["reviewer"] == "agent:agent"


def test_an_agent_of_one_tenant_never_sees_or_decides_another_tenants_queue(
    client: TestClient, tenant_a: TenantKeys, tenant_b: TenantKeys
) -> None:
    a_escalation, _ = _open_escalation(tenant_a)
    b_escalation, b_conversation = _open_escalation(tenant_b)
    a_agent = bearer(login(client, add_person(tenant_a, email("a-agent"), "agent")))
    assert [e["id"] for e in client.get("/review/v1/escalations", headers=a_agent).json()] == [a_escalation]
    attempts = [
        ("GET", f"/review/v1/escalations/{b_escalation}", None),
        ("POST", f"/review/v1/escalations/{b_escalation}/decision", {"decision": "edit", "text": "Hijacked"}),
        ("POST", f"/review/v1/conversations/{b_conversation}/takeover", None),
        ("POST", f"/review/v1/conversations/{b_conversation}/messages", {"text": "hi", "client_message_id": "x"}),
        ("GET", f"/admin/v1/conversations/{b_conversation}", None),
    ]
    for method, path, body in attempts:
        r = client.request(method, path, headers=a_agent, json=body)
        assert r.status_code == 404 and "in this tenant" in r.json()["detail"], (path, r.text)
    # A person in both tenants, logged into A, still reaches only A's queue.
    both = add_person(tenant_a, email("both"), "agent")
    add_person(tenant_b, both.email, "agent")
    into_a = bearer(login(client, both, tenant=tenant_a.slug))
    assert [e["id"] for e in client.get("/review/v1/escalations", headers=into_a).json()] == [a_escalation]
    assert client.get(f"/review/v1/escalations/{b_escalation}", headers=into_a).status_code == 404
    with session_scope(cross_tenant="tests") as session:
        assert session.get_one(Escalation, b_escalation).status == "open"
