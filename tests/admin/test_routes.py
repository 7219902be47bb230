"""Every admin route's happy path, authentication and scopes, and secrets kept out of responses and the DB."""

from __future__ import annotations

from fastapi.testclient import TestClient
from sqlalchemy import select

from tests.admin.conftest import Seeded, TenantKeys, seed_conversation


def test_no_key_or_a_bad_key_is_401(client: TestClient, tenant_a: TenantKeys) -> None:
    assert client.get("/admin/v1/tenant").status_code == 401
    r = client.get("/admin/v1/tenant", headers={"Authorization": "Bearer sb_nope_nope"})
    assert r.status_code == 401
    assert "invalid" in r.json()["detail"]
    assert client.get("/admin/v1/conversations", headers={"Authorization": "Basic x"}).status_code == 401


def test_agent_key_is_refused_admin_routes(client: TestClient, tenant_a: TenantKeys, seeded_a: Seeded) -> None:
    agent = tenant_a.headers("agent")
    refused = [
        ("GET", "/admin/v1/tenant", None), ("PATCH", "/admin/v1/tenant", {"name": "x"}),
        ("PUT", "/admin/v1/tenant/llm-key", {"api_key": "k"}), ("GET", "/admin/v1/api-keys", None),
        ("POST", "/admin/v1/api-keys", {"name": "x", "scope": "admin"}), ("GET", "/admin/v1/channels", None),
        ("POST", "/admin/v1/channels", {"channel": "webchat"}), ("GET", "/admin/v1/knowledge/jobs", None),
        ("GET", "/admin/v1/knowledge/documents", None), ("GET", "/admin/v1/audit", None),
        ("DELETE", f"/admin/v1/knowledge/documents/{seeded_a.document_id}", None),
    ]
    for method, path, body in refused:
        r = client.request(method, path, headers=agent, json=body)
        assert r.status_code == 403, (method, path, r.text)
        assert "admin" in r.json()["detail"]
    # ...but may read conversations.
    assert client.get("/admin/v1/conversations", headers=agent).status_code == 200
    assert client.get(f"/admin/v1/conversations/{seeded_a.conversation_id}", headers=agent).status_code == 200
    # An agent key minted by an admin can't mint an admin key for itself either.
    assert client.post("/admin/v1/api-keys", headers=agent, json={"name": "me", "scope": "admin"}).status_code == 403


def test_tenant_get_and_patch(client: TestClient, tenant_a: TenantKeys) -> None:
    h = tenant_a.headers()
    got = client.get("/admin/v1/tenant", headers=h).json()
    assert got["slug"] == tenant_a.slug and got["has_llm_key"] is False
    r = client.patch("/admin/v1/tenant", headers=h, json={
        "name": "Alpha Outfitters",
        "persona": {"name": "Ava", "tone": "warm"},
        "policies": {"min_relevance": 0.6, "banned_phrases": ["lifetime warranty"], "max_reply_chars": 600,
                     "llm": {"base_url": "https://llm.example.com/v1", "model": "m1", "timeout_s": 5}},
    })
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["name"] == "Alpha Outfitters"
    assert body["persona"]["name"] == "Ava" and body["persona"]["language"] == "en"  # default kept
    assert body["policies"]["min_relevance"] == 0.6
    assert body["policies"]["llm"] == {"base_url": "https://llm.example.com/v1", "model": "m1", "timeout_s": 5.0}
    # Partial update of a nested field keeps the rest; null resets.
    r = client.patch("/admin/v1/tenant", headers=h, json={"policies": {"llm": {"model": "m2"},
                                                                       "max_reply_chars": None}})
    policies = r.json()["policies"]
    assert policies["llm"]["model"] == "m2" and policies["llm"]["base_url"] == "https://llm.example.com/v1"
    assert "max_reply_chars" not in policies
    assert client.get("/admin/v1/tenant", headers=h).json()["policies"] == policies


def test_tenant_patch_rejects_bad_shapes(client: TestClient, tenant_a: TenantKeys) -> None:
    h = tenant_a.headers()
    before = client.get("/admin/v1/tenant", headers=h).json()
    cases = [
        ({"policies": {"min_relevance": 1.5}}, "min_relevance"),
        ({"policies": {"banned_phrases": "not a list"}}, "banned_phrases"),
        ({"policies": {"min_relevence": 0.5}}, "min_relevence"),  # misspelt: named, not ignored
        ({"policies": {"llm": {"base_url": "not a url"}}}, "base_url"),
        ({"policies": {"llm": {"base_url": "http://127.0.0.1:6379"}}}, "loopback"),  # finding 2: see tests/security
        ({"policies": {"llm": {"timeout_s": -1}}}, "timeout_s"),
        ({"persona": {"language": "english please"}}, "language"),
        ({"tenant_id": "someone-else"}, "tenant_id"),
    ]
    for body, field in cases:
        r = client.patch("/admin/v1/tenant", headers=h, json=body)
        assert r.status_code == 422, body
        assert field in r.json()["detail"], r.json()["detail"]
    assert client.get("/admin/v1/tenant", headers=h).json() == before


def test_llm_key_is_encrypted_and_never_returned(client: TestClient, tenant_a: TenantKeys) -> None:
    from app.crypto import decrypt_json
    from app.db import session_scope
    from app.models import Tenant

    h = tenant_a.headers()
    secret = "sk-live-THIS-IS-SECRET-123"
    r = client.put("/admin/v1/tenant/llm-key", headers=h, json={"api_key": secret})
    assert r.status_code == 200 and r.json() == {"has_llm_key": True}
    got = client.get("/admin/v1/tenant", headers=h)
    assert got.json()["has_llm_key"] is True and secret not in got.text
    with session_scope(cross_tenant="tests") as session:
        stored = session.get_one(Tenant, tenant_a.id).llm_api_key_encrypted
    assert stored and secret not in stored
    assert decrypt_json(stored) == {"api_key": secret}
    audit = client.get("/admin/v1/audit", headers=h).text
    assert "tenant.llm_key_set" in audit and secret not in audit
    assert client.delete("/admin/v1/tenant/llm-key", headers=h).json() == {"has_llm_key": False}


def test_api_keys_create_list_revoke(client: TestClient, tenant_a: TenantKeys) -> None:
    h = tenant_a.headers()
    r = client.post("/admin/v1/api-keys", headers=h, json={"name": "support", "scope": "agent"})
    assert r.status_code == 201, r.text
    new = r.json()
    assert new["api_key"].startswith(f"sb_{new['prefix']}_")
    # The new key works, with its scope.
    as_new = {"Authorization": f"Bearer {new['api_key']}"}
    assert client.get("/admin/v1/conversations", headers=as_new).status_code == 200
    assert client.get("/admin/v1/tenant", headers=as_new).status_code == 403
    listed = client.get("/admin/v1/api-keys", headers=h)
    assert {k["name"] for k in listed.json()["api_keys"]} == {"admin", "agent", "support"}
    assert new["api_key"] not in listed.text and tenant_a.admin not in listed.text
    assert all("api_key" not in k for k in listed.json()["api_keys"])
    # Revoke: the key stops working at once; revoking again is harmless.
    assert client.delete(f"/admin/v1/api-keys/{new['id']}", headers=h).status_code == 204
    assert client.get("/admin/v1/conversations", headers=as_new).status_code == 401
    assert client.delete(f"/admin/v1/api-keys/{new['id']}", headers=h).status_code == 204
    revoked = [k for k in client.get("/admin/v1/api-keys", headers=h).json()["api_keys"] if k["id"] == new["id"]]
    assert revoked[0]["revoked_at"] is not None
    assert client.post("/admin/v1/api-keys", headers=h, json={"name": "x", "scope": "root"}).status_code == 422


def test_a_key_cannot_revoke_itself(client: TestClient, tenant_a: TenantKeys) -> None:
    h = tenant_a.headers()
    mine = next(k for k in client.get("/admin/v1/api-keys", headers=h).json()["api_keys"] if k["name"] == "admin")
    r = client.delete(f"/admin/v1/api-keys/{mine['id']}", headers=h)
    assert r.status_code == 409 and "another admin key" in r.json()["detail"]
    assert client.get("/admin/v1/tenant", headers=h).status_code == 200
    # Another admin key can.
    other = client.post("/admin/v1/api-keys", headers=h, json={"name": "second", "scope": "admin"}).json()
    r = client.delete(f"/admin/v1/api-keys/{mine['id']}", headers={"Authorization": f"Bearer {other['api_key']}"})
    assert r.status_code == 204
    assert client.get("/admin/v1/tenant", headers=h).status_code == 401


def test_channels_crud_and_credentials_never_leak(client: TestClient, tenant_a: TenantKeys) -> None:
    from app.crypto import decrypt_json
    from app.db import session_scope
    from app.models import ChannelAccount

    h = tenant_a.headers()
    token = "8123456789:AAH-super-secret-bot-token"
    r = client.post("/admin/v1/channels", headers=h, json={
        "channel": "telegram", "external_id": "8123456789", "name": "Bot",
        "credentials": {"bot_token": token, "secret_token": "whsec-42"},
    })
    assert r.status_code == 201, r.text
    account = r.json()
    assert account["has_credentials"] is True
    assert account["webhook_url"] == "http://127.0.0.1:8080/webhooks/telegram/8123456789"
    assert token not in r.text and "whsec-42" not in r.text
    listed = client.get("/admin/v1/channels", headers=h)
    channels = {c["channel"]: c for c in listed.json()["channels"]}
    assert set(channels) == {"webchat", "telegram"}
    assert channels["webchat"]["webhook_url"] == f"http://127.0.0.1:8080/widget/{tenant_a.widget_id}"
    assert token not in listed.text
    with session_scope(cross_tenant="tests") as session:
        row = session.get_one(ChannelAccount, account["id"])
        assert token not in (row.credentials_encrypted or "") and "whsec-42" not in str(row.config)
        assert decrypt_json(row.credentials_encrypted or "") == {"bot_token": token, "secret_token": "whsec-42"}
    # Patch: rename, disable, rotate the token.
    r = client.patch(f"/admin/v1/channels/{account['id']}", headers=h,
                     json={"name": "Renamed", "enabled": False, "credentials": {"bot_token": "8123456789:rotated-1"}})
    assert r.status_code == 200 and r.json()["name"] == "Renamed" and r.json()["enabled"] is False
    assert "rotated-1" not in r.text
    with session_scope(cross_tenant="tests") as session:
        row = session.get_one(ChannelAccount, account["id"])
        # The secret token the provider already has is kept; the bot token is replaced.
        assert decrypt_json(row.credentials_encrypted or "") == {"bot_token": "8123456789:rotated-1",
                                                                 "secret_token": "whsec-42"}
    r = client.patch(f"/admin/v1/channels/{account['id']}", headers=h, json={"credentials": {"bot_token": "nope"}})
    assert r.status_code == 422 and "bot_token" in r.json()["detail"]  # validated as a Telegram account
    assert client.get(f"/admin/v1/channels/{account['id']}", headers=h).json()["name"] == "Renamed"
    # The audit log names the credential fields, never their values.
    audit = client.get("/admin/v1/audit", headers=h, params={"subject_id": account["id"]})
    assert [e["action"] for e in audit.json()["events"]] == ["channel.updated", "channel.created"]
    assert token not in audit.text and "rotated-1" not in audit.text
    # A webchat account gets a generated widget id; others must name theirs.
    r = client.post("/admin/v1/channels", headers=h, json={"channel": "webchat", "name": "Help page"})
    assert r.status_code == 201 and r.json()["external_id"].startswith("w_")
    r = client.post("/admin/v1/channels", headers=h, json={
        "channel": "twilio", "credentials": {"account_sid": "AC1", "auth_token": "t"}})
    assert r.status_code == 422 and "external_id is required" in r.json()["detail"]
    r = client.post("/admin/v1/channels", headers=h, json={"channel": "carrier-pigeon", "external_id": "1"})
    assert r.status_code == 422 and "channel" in r.json()["detail"]
    # Delete.
    assert client.delete(f"/admin/v1/channels/{account['id']}", headers=h).status_code == 204
    assert client.get(f"/admin/v1/channels/{account['id']}", headers=h).status_code == 404


def test_channel_conflict_is_409_and_writes_nothing(
    client: TestClient, tenant_a: TenantKeys, tenant_b: TenantKeys
) -> None:
    body = {"channel": "whatsapp", "external_id": "1065550001", "credentials": {"access_token": "t", "app_secret": "s"}}
    assert client.post("/admin/v1/channels", headers=tenant_a.headers(), json=body).status_code == 201
    for tenant in (tenant_a, tenant_b):
        r = client.post("/admin/v1/channels", headers=tenant.headers(), json=body)
        assert r.status_code == 409
        assert "already registered" in r.json()["detail"] and "1065550001" in r.json()["detail"]
    b_channels = client.get("/admin/v1/channels", headers=tenant_b.headers()).json()["channels"]
    assert [c["channel"] for c in b_channels] == ["webchat"]
    b_audit = client.get("/admin/v1/audit", headers=tenant_b.headers(), params={"action": "channel.created"})
    assert b_audit.json()["events"] == []


def test_conversations_list_filter_page_and_detail(client: TestClient, tenant_a: TenantKeys) -> None:
    ids = [seed_conversation(tenant_a.id, contact=f"v_{i}", n_turns=1, escalate=(i == 0)) for i in range(5)]
    h = tenant_a.headers("agent")
    seen: list[str] = []
    cursor = None
    while True:
        params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = client.get("/admin/v1/conversations", headers=h, params=params).json()
        assert len(page["conversations"]) <= 2
        seen += [c["id"] for c in page["conversations"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert sorted(seen) == sorted(ids) and len(seen) == len(set(seen))
    escalated = client.get("/admin/v1/conversations", headers=h, params={"escalated": True}).json()
    assert [c["id"] for c in escalated["conversations"]] == [ids[0]]
    assert escalated["conversations"][0]["open_escalation"] is True
    by_contact = client.get("/admin/v1/conversations", headers=h, params={"contact": "v_3"}).json()
    assert [c["contact"]["external_id"] for c in by_contact["conversations"]] == ["v_3"]
    assert client.get("/admin/v1/conversations", headers=h, params={"mode": "human"}).json()["conversations"] == []
    assert len(client.get("/admin/v1/conversations", headers=h,
                          params={"channel": "webchat"}).json()["conversations"]) == 5
    assert client.get("/admin/v1/conversations", headers=h, params={"mode": "robot"}).status_code == 422
    r = client.get("/admin/v1/conversations", headers=h, params={"cursor": "!!garbage"})
    assert r.status_code == 400 and "cursor" in r.json()["detail"]


def test_conversation_detail_and_messages(client: TestClient, tenant_a: TenantKeys, seeded_a: Seeded) -> None:
    h = tenant_a.headers("agent")
    detail = client.get(f"/admin/v1/conversations/{seeded_a.conversation_id}", headers=h).json()
    assert detail["contact"]["external_id"] == "v_alice" and detail["contact"]["display_name"] == "Alice"
    assert [m["direction"] for m in detail["messages"]] == ["in", "out", "in", "out"]
    assert detail["messages"][1]["citations"][0]["document"] == "faq.csv"
    assert detail["more_messages"] is False
    short = client.get(f"/admin/v1/conversations/{seeded_a.conversation_id}", headers=h,
                       params={"messages": 1}).json()
    assert [m["text"] for m in short["messages"]] == ["answer 1 [1]"] and short["more_messages"] is True
    texts: list[str] = []
    cursor = None
    while True:
        params = {"limit": 3, **({"cursor": cursor} if cursor else {})}
        page = client.get(f"/admin/v1/conversations/{seeded_a.conversation_id}/messages", headers=h,
                          params=params).json()
        texts += [m["text"] for m in page["messages"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert texts == ["question 0", "answer 0 [1]", "question 1", "answer 1 [1]"]
    assert client.get("/admin/v1/conversations/nope", headers=h).status_code == 404
    assert client.get("/admin/v1/conversations/nope/messages", headers=h).status_code == 404


def test_audit_log_records_admin_changes(client: TestClient, tenant_a: TenantKeys) -> None:
    h = tenant_a.headers()
    client.patch("/admin/v1/tenant", headers=h, json={"name": "A2"})
    client.post("/admin/v1/api-keys", headers=h, json={"name": "k", "scope": "agent"})
    events = client.get("/admin/v1/audit", headers=h).json()["events"]
    assert [e["action"] for e in events[:2]] == ["api_key.created", "tenant.updated"]
    keys = client.get("/admin/v1/api-keys", headers=h).json()["api_keys"]
    admin_key = next(k for k in keys if k["name"] == "admin")
    assert events[0]["actor"] == f"key:{admin_key['id']}" and events[0]["actor_name"] == "admin:admin"
    assert events[-1]["action"] == "tenant.created"
    page = client.get("/admin/v1/audit", headers=h, params={"limit": 1}).json()
    assert len(page["events"]) == 1 and page["next_cursor"]
    page2 = client.get("/admin/v1/audit", headers=h, params={"limit": 1, "cursor": page["next_cursor"]}).json()
    assert page2["events"][0]["id"] == events[1]["id"]


def test_openapi_documents_the_admin_api(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    paths = spec["paths"]
    assert "multipart/form-data" in paths["/admin/v1/knowledge"]["post"]["requestBody"]["content"]
    for path, methods in paths.items():
        if path.startswith("/admin/v1"):
            for op in methods.values():
                assert op.get("summary"), path
    schemas = spec["components"]["schemas"]
    assert schemas["TenantPatch"].get("examples")
    channel_types = [name for name in schemas if name.endswith("ChannelIn")]
    assert len(channel_types) == 7 and all(schemas[name].get("examples") for name in channel_types)


def test_document_rows_are_listed_with_chunk_counts(
    client: TestClient, tenant_a: TenantKeys, seeded_a: Seeded
) -> None:
    from app.db import session_scope
    from app.models import Document

    docs = client.get("/admin/v1/knowledge/documents", headers=tenant_a.headers()).json()["documents"]
    assert [(d["path"], d["chunks"], d["pack_version"], d["status"]) for d in docs] == [("faq.csv", 3, 1, "indexed")]
    with session_scope(cross_tenant="tests") as session:
        assert session.scalars(select(Document.id).where(Document.tenant_id == tenant_a.id)).all()
