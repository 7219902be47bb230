"""Removing a signing key from the keyring ends the web chat sessions it signed (gateways/webchat/sessions.py): at
the process's next keyring reload, even for a token the process verified (and cached) a moment before."""

from __future__ import annotations

import json
import time

import httpx
import pytest
from fastapi.testclient import TestClient

from tests.admin import conftest as admin_fixtures
from tests.admin.conftest import TenantKeys

# The admin API fixtures (an embedded app, tenants with their keys and widget), shared with tests/admin.
client, tenant_a = admin_fixtures.client, admin_fixtures.tenant_a


@pytest.fixture
def backend() -> str:
    return "sqlite"  # the tokens never touch the database


def _open(client: TestClient, widget: str) -> str:
    response = client.post(f"/widget/v1/{widget}/sessions", json={})
    assert response.status_code == 201, response.text
    return str(response.json()["token"])


def _read(client: TestClient, widget: str, token: str) -> httpx.Response:
    return client.get(f"/widget/v1/{widget}/messages", headers={"Authorization": f"Bearer {token}"})


def test_a_session_ends_once_the_key_that_signed_it_is_removed_from_the_keyring(client: TestClient,
                                                                                tenant_a: TenantKeys) -> None:
    from app import keys
    from app.key_rotation import rotate

    widget = tenant_a.widget_id
    old = _open(client, widget)
    rotate(wait=False)  # a new first signing key; the old one still verifies
    new = _open(client, widget)
    for token in (old, new):
        assert _read(client, widget, token).status_code == 200  # verified now, so cached
        assert _read(client, widget, token).status_code == 200

    # The operator deletes the old signing key from keyring.json; the first key (the one that signs) stays.
    path = keys.current().path
    assert path is not None
    data = json.loads(path.read_text())
    assert len(data["signing"]) == 2
    data["signing"] = data["signing"][:1]
    path.write_text(json.dumps(data, indent=2) + "\n")
    time.sleep(keys.reload_wait())  # this process re-reads the keyring at its next use of a key

    refused = _read(client, widget, old)
    assert refused.status_code == 401, refused.text
    assert client.post(f"/widget/v1/{widget}/messages", headers={"Authorization": f"Bearer {old}"},
                       json={"text": "hi", "client_message_id": "m1"}).status_code == 401
    assert _read(client, widget, new).status_code == 200  # signed by the key that stays
