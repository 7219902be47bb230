"""Tenant B's keys (admin and agent) try every route against tenant A's rows: each is a 404 (or an empty list),
and A's data is unchanged afterwards. Runs on SQLite and on Postgres (the `backend` fixture)."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient

from tests.admin.conftest import Seeded, TenantKeys, seed_conversation


def _snapshot(client: TestClient, a: TenantKeys, seeded: Seeded) -> dict[str, Any]:
    h = a.headers()
    return {
        "tenant": client.get("/admin/v1/tenant", headers=h).json(),
        # last_used_at moves whenever A itself calls; everything else about A's keys must not.
        "keys": [{k: v for k, v in key.items() if k != "last_used_at"}
                 for key in client.get("/admin/v1/api-keys", headers=h).json()["api_keys"]],
        "channels": client.get("/admin/v1/channels", headers=h).json(),
        "documents": client.get("/admin/v1/knowledge/documents", headers=h).json(),
        "jobs": client.get("/admin/v1/knowledge/jobs", headers=h).json(),
        "conversation": client.get(f"/admin/v1/conversations/{seeded.conversation_id}", headers=h).json(),
        "audit": client.get("/admin/v1/audit", headers=h).json(),
    }


def _a_job(tenant_id: str) -> str:
    from app.db import session_scope
    from app.models import IngestionJob

    with session_scope(cross_tenant="tests") as session:
        job = IngestionJob(tenant_id=tenant_id, status="succeeded", total_files=1, done_files=1, chunks=3)
        session.add(job)
        session.flush()
        return job.id


def test_tenant_b_cannot_read_or_act_on_tenant_a(
    client: TestClient, tenant_a: TenantKeys, tenant_b: TenantKeys, seeded_a: Seeded
) -> None:
    h_a = tenant_a.headers()
    channel = client.post("/admin/v1/channels", headers=h_a, json={
        "channel": "telegram", "external_id": "777", "credentials": {"bot_token": "777:A-SECRET"}}).json()
    a_keys = client.get("/admin/v1/api-keys", headers=h_a).json()["api_keys"]
    job_id = _a_job(tenant_a.id)
    before = _snapshot(client, tenant_a, seeded_a)

    conv = seeded_a.conversation_id
    for scope in ("admin", "agent"):
        h_b = tenant_b.headers(scope)
        # Conversations are readable by both scopes of B: A's are invisible.
        for path in (f"/admin/v1/conversations/{conv}", f"/admin/v1/conversations/{conv}/messages"):
            r = client.get(path, headers=h_b)
            assert r.status_code == 404, (scope, path, r.text)
        listed = client.get("/admin/v1/conversations", headers=h_b)
        assert listed.json()["conversations"] == []
        assert client.get("/admin/v1/conversations", headers=h_b,
                          params={"contact": seeded_a.contact_external_id}).json()["conversations"] == []

    h_b = tenant_b.headers()
    attempts = [
        ("GET", f"/admin/v1/channels/{channel['id']}", None),
        ("PATCH", f"/admin/v1/channels/{channel['id']}", {"enabled": False, "credentials": {"bot_token": "777:B"}}),
        ("DELETE", f"/admin/v1/channels/{channel['id']}", None),
        ("GET", f"/admin/v1/knowledge/jobs/{job_id}", None),
        ("DELETE", f"/admin/v1/knowledge/documents/{seeded_a.document_id}", None),
        *[("DELETE", f"/admin/v1/api-keys/{k['id']}", None) for k in a_keys],
    ]
    for method, path, body in attempts:
        r = client.request(method, path, headers=h_b, json=body)
        assert r.status_code == 404, (method, path, r.text)
        assert "in this tenant" in r.json()["detail"]
    # A missing id answers exactly like A's id.
    missing = client.get("/admin/v1/channels/0123456789abcdef0123456789abcdef", headers=h_b)
    assert missing.json()["detail"].replace("0123456789abcdef0123456789abcdef", channel["id"]) == \
        client.get(f"/admin/v1/channels/{channel['id']}", headers=h_b).json()["detail"]

    # B's own lists show none of A's rows.
    assert [c["channel"] for c in client.get("/admin/v1/channels", headers=h_b).json()["channels"]] == ["webchat"]
    assert client.get("/admin/v1/knowledge/documents", headers=h_b).json()["documents"] == []
    assert client.get("/admin/v1/knowledge/jobs", headers=h_b).json()["jobs"] == []
    b_keys = client.get("/admin/v1/api-keys", headers=h_b).json()["api_keys"]
    assert not {k["id"] for k in b_keys} & {k["id"] for k in a_keys}
    b_audit = client.get("/admin/v1/audit", headers=h_b).json()["events"]
    assert all(e["subject_id"] != channel["id"] for e in b_audit)
    assert client.get("/admin/v1/audit", headers=h_b, params={"subject_id": channel["id"]}).json()["events"] == []
    assert client.get("/admin/v1/tenant", headers=h_b).json()["id"] == tenant_b.id
    # B's PATCH of "its" tenant changes B only.
    client.patch("/admin/v1/tenant", headers=h_b, json={"name": "B renamed", "policies": {"min_relevance": 0.9}})

    assert _snapshot(client, tenant_a, seeded_a) == before
    # A's keys still work; A's channel still has its credentials.
    assert client.get("/admin/v1/tenant", headers=tenant_a.headers("admin")).status_code == 200
    assert client.get("/admin/v1/conversations", headers=tenant_a.headers("agent")).status_code == 200


def test_a_cursor_from_one_tenant_shows_nothing_of_another(
    client: TestClient, tenant_a: TenantKeys, tenant_b: TenantKeys, seeded_a: Seeded
) -> None:
    from tests.admin.conftest import seed_conversation

    for i in range(3):
        seed_conversation(tenant_a.id, contact=f"v_more{i}", n_turns=1)
    page = client.get("/admin/v1/conversations", headers=tenant_a.headers("agent"), params={"limit": 1}).json()
    assert page["next_cursor"]
    r = client.get("/admin/v1/conversations", headers=tenant_b.headers("agent"),
                   params={"limit": 50, "cursor": page["next_cursor"]})
    assert r.status_code == 200 and r.json()["conversations"] == []


def test_agents_read_conversations_with_pii_masked_and_admins_as_stored(client: TestClient,
                                                                       tenant_a: TenantKeys) -> None:
    from app.db import session_scope
    from app.models import Conversation, Message

    conversation_id = seed_conversation(tenant_a.id, "v_pii", n_turns=1)
    with session_scope(cross_tenant="tests") as session:
        conversation = session.get_one(Conversation, conversation_id)
        session.add(Message(tenant_id=tenant_a.id, conversation_id=conversation.id, channel="webchat",
                            direction="in", provider_message_id="v_pii:card", status="received",
                            text="my email is jane.roe@example.com, card 4111 1111 1111 1111"))

    def texts(role: str, path: str) -> str:
        response = client.get(path, headers=tenant_a.headers(role))
        assert response.status_code == 200, response.text
        return " ".join(m["text"] for m in response.json()["messages"])

    for path in (f"/admin/v1/conversations/{conversation_id}", f"/admin/v1/conversations/{conversation_id}/messages"):
        agent_view = texts("agent", path)
        assert "jane.roe@example.com" not in agent_view and "4111 1111 1111 1111" not in agent_view
        assert "[EMAIL]" in agent_view and "answer 0" in agent_view  # masked, the rest as written
        admin_view = texts("admin", path)
        assert "jane.roe@example.com" in admin_view and "4111 1111 1111 1111" in admin_view
