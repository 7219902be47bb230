"""Every channel type's example in the OpenAPI document is a working create request: posted as is, it makes an
account whose webhook URL is routed (no 404) and whose generated secrets are shown once."""

from __future__ import annotations

from fastapi.testclient import TestClient

from tests.admin.conftest import TenantKeys


def test_every_openapi_example_creates_an_account_with_a_routed_webhook(client: TestClient,
                                                                       tenant_a: TenantKeys) -> None:
    schemas = client.get("/openapi.json").json()["components"]["schemas"]
    examples = {name: schemas[name]["examples"][0] for name in schemas if name.endswith("ChannelIn")}
    assert {e["channel"] for e in examples.values()} == {"webchat", "whatsapp", "instagram", "telegram", "twilio",
                                                         "ussd", "discord"}
    base = "http://127.0.0.1:8080"
    for name, example in examples.items():
        r = client.post("/admin/v1/channels", headers=tenant_a.headers(), json=example)
        assert r.status_code == 201, (name, r.text)
        account = r.json()
        assert account["webhook_url"].startswith(base), account
        if example["channel"] == "telegram":  # the token names the bot; Telegram must be given the secret token
            assert account["external_id"] == "8123456789" and account["setup"]["secret_token"]
        if example["channel"] in ("whatsapp", "instagram"):
            assert account["setup"]["verify_token"]
        # The URL is routed: a request without its signature is refused, never 404/405.
        path = account["webhook_url"][len(base):]
        answer = client.get(path) if example["channel"] == "webchat" else client.post(path, content=b"{}")
        assert answer.status_code not in (404, 405), (name, path, answer.status_code, answer.text)
        # The examples' provider ids are fixed: free them for other tests sharing this database.
        assert client.delete(f"/admin/v1/channels/{account['id']}", headers=tenant_a.headers()).status_code == 204
