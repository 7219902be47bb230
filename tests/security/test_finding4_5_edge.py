"""Finding 4 (unauthenticated 500s: raw input echoed by the 422 handler, NUL bytes, lone surrogates, integer
overflow), finding 5 (bodies read and parsed whatever their size) and the error-body half of finding 8 (422
bodies that did not match the documented schema, timestamps without a time zone), at the app's edge.

Everything runs on SQLite and on PostgreSQL (which refuses NUL in text and overflows 32-bit integers)."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import httpx
import jsonschema
import pytest
from fastapi.testclient import TestClient

from tests.admin import conftest as admin
from tests.admin.conftest import TenantKeys

backend, client, tenant_a = admin.backend, admin.client, admin.tenant_a  # fixtures: an app and a tenant's keys


def _error_schema(client: TestClient) -> jsonschema.Validator:
    """The error body /openapi.json documents, as a validator."""
    doc = client.get("/openapi.json").json()
    return jsonschema.Draft202012Validator({"$ref": "#/components/schemas/ErrorOut", "components": doc["components"]})


def _assert_documented_error(client: TestClient, response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    _error_schema(client).validate(body)
    assert isinstance(body["detail"], str) and body["detail"]
    for item in body.get("errors") or []:
        assert set(item) == {"loc", "msg", "type"}  # never the raw `input` or `ctx`
    return body


def _key_names(client: TestClient, keys: TenantKeys) -> list[str]:
    response = client.get("/admin/v1/api-keys", headers=keys.headers())
    assert response.status_code == 200
    return [k["name"] for k in response.json()["api_keys"]]


# --- finding 4: the validation handler, NUL, surrogates, overflow ------------------------------------------


def test_finding4_text_plain_body_is_422(client: TestClient, tenant_a: TenantKeys) -> None:
    response = client.post("/admin/v1/api-keys", content=b"name=x&scope=agent\xff\xfe",
                           headers={**tenant_a.headers(), "Content-Type": "text/plain"})
    body = _assert_documented_error(client, response, 422)
    assert body["errors"][0]["loc"] == ["body"]


def test_finding4_lone_surrogate_body_is_422(client: TestClient, tenant_a: TenantKeys) -> None:
    before = _key_names(client, tenant_a)
    for raw in (b'{"name": "ok\\ud800", "scope": "agent"}',  # an escaped lone surrogate
                b'{"name": "ok\xed\xa0\x80", "scope": "agent"}',  # the same surrogate as raw (invalid) UTF-8
                b'{"\\udfff": 1, "name": "a", "scope": "agent"}'):  # in a key, which the 422 would name
        response = client.post("/admin/v1/api-keys", content=raw,
                               headers={**tenant_a.headers(), "Content-Type": "application/json"})
        body = _assert_documented_error(client, response, 422)
        assert body["errors"][0]["type"] == "string_unpaired_surrogate"
    assert _key_names(client, tenant_a) == before


def test_finding4_nul_in_json_body_is_422(client: TestClient, tenant_a: TenantKeys) -> None:
    before = _key_names(client, tenant_a)
    response = client.post("/admin/v1/api-keys", json={"name": "support\x00team", "scope": "agent"},
                           headers=tenant_a.headers())
    body = _assert_documented_error(client, response, 422)
    assert body["errors"] == [{"loc": ["body", "name"], "msg": "contains a NUL character (\\u0000); remove it",
                               "type": "string_nul"}]
    assert body["detail"] == "name: contains a NUL character (\\u0000); remove it"
    # Nested anywhere in a free-form object too, and on an unauthenticated route.
    response = client.patch("/admin/v1/tenant", json={"persona": {"tone": ["x", {"deep": "a\x00"}]}},
                            headers=tenant_a.headers())
    assert _assert_documented_error(client, response, 422)["errors"][0]["loc"] == ["body", "persona", "tone", 1,
                                                                                   "deep"]
    response = client.post(f"/widget/v1/{tenant_a.widget_id}/sessions", json={"contact_id": "v_\x00"})
    _assert_documented_error(client, response, 422)
    assert _key_names(client, tenant_a) == before


def test_finding4_nul_in_query_and_path_is_422(client: TestClient, tenant_a: TenantKeys) -> None:
    for url in ("/admin/v1/conversations?contact=v_alice%00", "/admin/v1/conversations/abc%00def",
                "/admin/v1/audit?subject_id=%00", f"/widget/v1/{tenant_a.widget_id}%00/messages"):
        response = client.get(url, headers=tenant_a.headers())
        body = _assert_documented_error(client, response, 422)
        assert body["errors"][0]["type"] == "string_nul", url
    response = client.get("/admin/v1/audit?action=%ED%A0%80", headers=tenant_a.headers())  # an encoded surrogate
    _assert_documented_error(client, response, 422)


def test_finding4_integer_overflow_is_422(client: TestClient, tenant_a: TenantKeys) -> None:
    huge = "99999999999999999999"
    for method, url in (("GET", f"/admin/v1/knowledge/documents?pack_version={huge}"),
                        ("GET", "/admin/v1/knowledge/documents?pack_version=2147483648"),
                        ("POST", f"/admin/v1/knowledge/versions/{huge}/promote"),
                        ("GET", f"/admin/v1/conversations?limit={huge}")):
        response = client.request(method, url, headers=tenant_a.headers())
        body = _assert_documented_error(client, response, 422)
        assert body["errors"][0]["type"] in ("less_than_equal", "int_parsing"), url
    assert client.get("/admin/v1/knowledge/documents?pack_version=2147483647",
                      headers=tenant_a.headers()).status_code == 200


def test_finding4_non_finite_numbers_are_422(client: TestClient, tenant_a: TenantKeys) -> None:
    """NaN, Infinity and 1e400 (infinite as a float) would be stored in a free-form `config` and then break the
    database (PostgreSQL's json refuses them) or the JSON encoding of every later response."""
    for raw in (b'{"channel": "telegram", "external_id": "1", "config": {"x": NaN}}',
                b'{"channel": "telegram", "external_id": "2", "config": {"x": -Infinity}}',
                b'{"channel": "telegram", "external_id": "3", "config": {"x": 1e400}}'):
        response = client.post("/admin/v1/channels", content=raw,
                               headers={**tenant_a.headers(), "Content-Type": "application/json"})
        assert _assert_documented_error(client, response, 422)["errors"][0]["type"] == "float_not_finite"
    assert client.get("/admin/v1/channels", headers=tenant_a.headers()).json()["channels"][0]["channel"] == "webchat"


def test_finding4_validation_error_echoes_no_input(client: TestClient, tenant_a: TenantKeys) -> None:
    """The old handler returned pydantic's `input` and `ctx`: the client's data, back at it, unbounded."""
    secret_looking = "x" * 5000
    response = client.patch("/admin/v1/tenant", json={"policies": {"min_relevance": secret_looking},
                                                      secret_looking: 1}, headers=tenant_a.headers())
    body = _assert_documented_error(client, response, 422)
    assert len(response.content) < 2000
    assert {tuple(e["loc"][:2]) for e in body["errors"]} >= {("body", "policies")}
    many = client.patch("/admin/v1/tenant", json={"policies": {"banned_phrases": list(range(400))}},
                        headers=tenant_a.headers())
    body = _assert_documented_error(client, many, 422)
    assert len(body["errors"]) == 20 and body["detail"].endswith("; and 380 more")
    broken = client.post("/admin/v1/api-keys", content=b'{"name": "a",', headers={
        **tenant_a.headers(), "Content-Type": "application/json"})
    assert "JSON decode error" in _assert_documented_error(client, broken, 422)["detail"]


def test_finding4_every_error_status_uses_the_schema(client: TestClient, tenant_a: TenantKeys) -> None:
    responses = {
        401: client.get("/admin/v1/tenant"),
        403: client.get("/admin/v1/tenant", headers=tenant_a.headers("agent")),
        404: client.get("/admin/v1/conversations/nope", headers=tenant_a.headers()),
        405: client.put("/healthz"),
        422: client.get("/admin/v1/conversations?limit=0", headers=tenant_a.headers()),
    }
    for status, response in responses.items():
        _assert_documented_error(client, response, status)
    assert responses[401].headers["WWW-Authenticate"] == "Bearer"


def test_finding4_unexpected_error_is_a_json_500_with_a_request_id(client: TestClient,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    from app.main import create_app

    app = create_app(run_workers=False)

    @app.get("/boom")
    def boom() -> None:
        raise RuntimeError("password=hunter2 in an internal message")

    with TestClient(app, raise_server_exceptions=False) as raw:
        response = raw.get("/boom")
    body = _assert_documented_error(raw, response, 500)
    assert body["request_id"] == response.headers["X-Request-ID"]
    assert "hunter2" not in response.text and "Traceback" not in response.text
    assert any(body["request_id"] in r.getMessage() for r in caplog.records)  # the log line names it too


def test_finding4_openapi_documents_our_error_body(client: TestClient) -> None:
    doc = client.get("/openapi.json").json()
    assert "HTTPValidationError" not in json.dumps(doc)
    for path, item in doc["paths"].items():
        for method, operation in item.items():
            responses = operation["responses"]
            assert "4XX" in responses, (method, path)
            for code, response in responses.items():
                if code[0] in "45":
                    assert response["content"]["application/json"]["schema"] == {
                        "$ref": "#/components/schemas/ErrorOut"}, (method, path, code)
    examples = doc["paths"]["/admin/v1/tenant"]["patch"]["responses"]["4XX"]["content"]["application/json"]
    validator = _error_schema(client)
    for example in examples["examples"].values():
        validator.validate(example["value"])


# --- finding 8 (part): timestamps ----------------------------------------------------------------------------


def test_finding8_timestamps_carry_a_utc_offset(client: TestClient, tenant_a: TenantKeys) -> None:
    from tests.admin.conftest import seed_conversation

    conversation_id = seed_conversation(tenant_a.id)
    stamps = [
        client.get("/admin/v1/tenant", headers=tenant_a.headers()).json()["created_at"],
        *(k["last_used_at"] for k in client.get("/admin/v1/api-keys", headers=tenant_a.headers()).json()["api_keys"]
          if k["last_used_at"]),
        *(m["created_at"] for m in client.get(f"/admin/v1/conversations/{conversation_id}",
                                              headers=tenant_a.headers()).json()["messages"]),
    ]
    assert len(stamps) >= 4
    for stamp in stamps:
        parsed = datetime.fromisoformat(stamp)
        assert parsed.utcoffset() is not None and parsed.utcoffset().total_seconds() == 0, stamp


# --- finding 5: body limits while reading --------------------------------------------------------------------


class _Body:
    """An ASGI `receive` that hands out `total` bytes in `chunk`-sized pieces and counts what was taken."""

    def __init__(self, total: int, chunk: int = 64 * 1024) -> None:
        self.total, self.chunk, self.taken = total, chunk, 0

    async def __call__(self) -> dict[str, Any]:
        if self.taken >= self.total:
            await asyncio.sleep(3600)  # a client that sent everything now waits (disconnect is not our test)
        size = min(self.chunk, self.total - self.taken)
        self.taken += size
        return {"type": "http.request", "body": b"{" + b" " * (size - 1) if size else b"",
                "more_body": self.taken < self.total}


def _call(app: Any, method: str, path: str, body: _Body, headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
    """One request straight into the ASGI app (no client that would buffer or size the body for us)."""
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "scheme": "http",
             "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
             "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
             "client": ("127.0.0.1", 5000), "server": ("testserver", 80), "state": {}}
    asyncio.run(asyncio.wait_for(app(scope, body, send), timeout=60))
    start = next(m for m in sent if m["type"] == "http.response.start")
    payload = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], json.loads(payload)


@pytest.fixture
def app(client: TestClient) -> Any:
    return client.app


MB = 1024 * 1024


@pytest.mark.parametrize("path", ["/webhooks/whatsapp", "/webhooks/discord/123", "/admin/v1/api-keys",
                                  "/widget/v1/w_x/messages"])
def test_finding5_100mb_body_refused_before_parse(app: Any, tenant_a: TenantKeys, path: str) -> None:
    """A chunked 100 MB body (no Content-Length): 413 once the route's limit is passed; the app took at most
    the limit plus one chunk, never the 100 MB."""
    from app.bootstrap import container
    from app.config import get_settings
    from app.db import session_scope
    from gateways.accounts import add_channel_account

    application_id = str(uuid.uuid4().int)[:18]
    # A Discord account, so that its route goes as far as reading the body.
    with session_scope(cross_tenant="tests") as session:
        add_channel_account(session, container().channels, tenant_a.id, "discord", application_id, credentials={},
                            config={"public_key": "00" * 32})
    settings = get_settings()
    limit = settings.max_webhook_bytes if path.startswith("/webhooks/") else settings.max_body_bytes
    body = _Body(100 * MB)
    path = path.replace("w_x", tenant_a.widget_id).replace("123", application_id)
    status, payload = _call(app, "POST", path, body, {
        "content-type": "application/json", "authorization": f"Bearer {tenant_a.admin}",
        "x-signature-ed25519": "00" * 64, "x-signature-timestamp": "1700000000"})
    assert status == 413
    assert f"{limit} bytes" in payload["detail"]
    assert ("MAX_WEBHOOK_BYTES" if path.startswith("/webhooks/") else "MAX_BODY_BYTES") in payload["detail"]
    assert body.taken <= limit + body.chunk


def test_finding5_declared_length_refused_before_reading(app: Any) -> None:
    body = _Body(100 * MB)
    status, payload = _call(app, "POST", "/webhooks/whatsapp", body,
                            {"content-type": "application/json", "content-length": str(100 * MB)})
    assert status == 413 and "MAX_WEBHOOK_BYTES" in payload["detail"]
    assert body.taken == 0  # not one byte read


def test_finding5_upload_route_has_its_own_limit(client: TestClient, tenant_a: TenantKeys,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """The knowledge upload takes MAX_UPLOAD_BYTES (not the small JSON default); over it, the same 413."""
    from app.config import get_settings
    from app.main import create_app

    monkeypatch.setattr(get_settings(), "max_upload_bytes", 600 * 1024)
    with TestClient(create_app(run_workers=False)) as small:
        def upload(repeat: int) -> httpx.Response:
            text = b"# Returns\n\n" + b"Returns are free within 30 days. " * repeat
            return small.post("/admin/v1/knowledge", headers=tenant_a.headers(), data={"version_only": "true"},
                              files={"files": ("faq.md", text, "text/markdown")})

        over = upload(25_000)  # 825 KB
        assert over.status_code == 413, over.text
        assert over.json()["detail"].endswith("(614400 bytes, set by MAX_UPLOAD_BYTES)")
        under = upload(12_000)  # 396 KB: over the JSON routes' 256 KiB, under this route's 600 KiB
        assert under.status_code == 202, under.text


def test_finding5_limits_are_settings(client: TestClient, tenant_a: TenantKeys,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from app.config import get_settings
    from app.main import create_app

    monkeypatch.setattr(get_settings(), "max_body_bytes", 1000)
    with TestClient(create_app(run_workers=False)) as small:
        name = "n" * 900
        over = small.post("/admin/v1/api-keys", json={"name": name + "n" * 200, "scope": "agent"},
                          headers=tenant_a.headers())
        assert over.status_code == 413 and "1000 bytes, set by MAX_BODY_BYTES" in over.json()["detail"]
        under = small.post("/admin/v1/api-keys", json={"name": name[:150], "scope": "agent"},
                           headers=tenant_a.headers())
        assert under.status_code == 201, under.text


def test_finding5_chunked_body_under_the_limit_arrives_intact(client: TestClient, tenant_a: TenantKeys) -> None:
    """The limit and the text check read the body as it streams and hand the app the very same bytes."""
    token = client.post(f"/widget/v1/{tenant_a.widget_id}/sessions").json()["token"]
    payload = json.dumps({"text": "Where is my order? " + "é" * 1000, "client_message_id": "m-1"}).encode()

    def chunks() -> Iterator[bytes]:
        for i in range(0, len(payload), 100):
            yield payload[i:i + 100]

    response = client.post(f"/widget/v1/{tenant_a.widget_id}/messages", content=chunks(),
                           headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    assert response.status_code == 202, response.text
    conversation = response.json()["conversation_id"]
    detail = client.get(f"/admin/v1/conversations/{conversation}", headers=tenant_a.headers()).json()
    assert detail["messages"][-1]["text"] == "Where is my order? " + "é" * 1000
