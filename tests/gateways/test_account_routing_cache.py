"""The webhook routing cache against an admin change made in this process: a routing read that began before the
change never puts the old account back into the cache the change dropped."""

from __future__ import annotations

import threading
import uuid
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.conftest import Graph


def test_a_read_begun_before_an_admin_patch_does_not_refill_the_cache_with_the_old_account(
        graph: Graph, monkeypatch: pytest.MonkeyPatch) -> None:
    import gateways.common as common
    from app import db
    from app.bootstrap import container
    from app.db import session_scope
    from app.main import create_app
    from app.tenants.service import create_tenant

    db.migrate()
    with session_scope(cross_tenant="tests") as session:
        admin_key = create_tenant(session, f"t-{uuid.uuid4().hex[:8]}").admin_api_key
    headers = {"Authorization": f"Bearer {admin_key}"}
    read, go = threading.Event(), threading.Event()
    real_read = common._load_account
    held: list[bool] = []

    def held_read(channel: str, external_id: str) -> Any:
        """The database read, then (the first time only) a wait while the test changes the account."""
        account = real_read(channel, external_id)
        if not held:
            held.append(True)
            read.set()
            assert go.wait(30)
        return account

    with TestClient(create_app(run_workers=False)) as client:
        r = client.post("/admin/v1/channels", headers=headers, json={
            "channel": "telegram", "external_id": "8123456789",
            "credentials": {"bot_token": "8123456789:token", "secret_token": "whsec-42"},
        })
        assert r.status_code == 201, r.text
        monkeypatch.setattr(common, "_load_account", held_read)
        routed: list[Any] = []
        webhook = threading.Thread(target=lambda: routed.append(
            common.load_account(container(), "telegram", "8123456789")))
        webhook.start()
        assert read.wait(30)  # the webhook's routing has read the enabled account and not cached it yet
        r = client.patch(f"/admin/v1/channels/{r.json()['id']}", headers=headers, json={"enabled": False})
        assert r.status_code == 200 and r.json()["enabled"] is False
        go.set()
        webhook.join(30)
        assert not webhook.is_alive() and routed[0] is not None  # it answered with what it read
        assert common.load_account(container(), "telegram", "8123456789") is None  # disabled: seen at once
