from __future__ import annotations

import json

from fastapi.testclient import TestClient
from typer.testing import CliRunner

from app.bootstrap import container
from tests.gateways.conftest import Gateway


def test_channel_add_and_list(gw: Gateway) -> None:
    from app.db import session_scope
    from app.tenants.service import create_tenant
    from gateways.cli import channel_app

    with session_scope(cross_tenant="tests") as session:
        create_tenant(session, "cli-shop")
    runner = CliRunner()
    out = runner.invoke(channel_app, ["add", "--tenant", "cli-shop", "--type", "telegram", "--bot-token",
                                      "8080:ABC", "--json"])
    assert out.exit_code == 0, out.output
    data = json.loads(out.output)
    assert data["webhook_url"] == "https://sb.example.com/webhooks/telegram/8080" and data["channel_id"]
    dup = runner.invoke(channel_app, ["add", "--tenant", "cli-shop", "--type", "telegram", "--bot-token", "8080:X"])
    assert dup.exit_code == 1 and "already registered" in dup.output
    missing = runner.invoke(channel_app, ["add", "--tenant", "cli-shop", "--type", "whatsapp", "--account-id", "1"])
    assert missing.exit_code == 1 and "access_token: Field required" in missing.output
    listed = json.loads(runner.invoke(channel_app, ["list", "--tenant", "cli-shop", "--json"]).output)
    assert {r["type"] for r in listed} == {"webchat", "telegram"}
    # The secret token it generated is what the webhook then requires.
    from gateways.common import load_account

    account = load_account(container(), "telegram", "8080")
    assert account is not None and account.credentials["secret_token"] == data["secret_token"]


def test_gateway_app_serves_one_channel(gw: Gateway) -> None:
    from gateways.server import create_gateway_app

    client = TestClient(create_gateway_app("telegram"))
    assert client.get("/healthz").json()["channel"] == "telegram"
    assert client.post("/webhooks/telegram/none", json={}).status_code == 404  # the route exists: unknown bot
    assert client.post("/webhooks/whatsapp", json={}).status_code == 404  # not mounted here (no route)
    assert client.post("/webhooks/whatsapp", json={}).json()["detail"] == "Not Found"
