"""Finding 8, audit: an admin key named `operator` audited as the operator. Audit actors are now exact: `operator`
for the server's operator token, `key:<id>` for an API key (whatever its name), with the key's name alongside
for reading; a review decided by such a key names the key, not the operator."""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from tests.admin import conftest as admin_fixtures
from tests.admin.conftest import TenantKeys

# The admin API fixtures (an embedded app, tenants with their keys and widget), shared with tests/admin.
backend, client, tenant_a = admin_fixtures.backend, admin_fixtures.client, admin_fixtures.tenant_a


@pytest.fixture
def operator_token(client: TestClient) -> Iterator[str]:
    """As embedded `serve` sets it (app/cli.py)."""
    token = secrets.token_urlsafe(32)
    client.app.state.operator_token = token  # type: ignore[attr-defined]
    yield token
    client.app.state.operator_token = None  # type: ignore[attr-defined]


def test_finding8_key_named_operator_does_not_audit_as_operator(client: TestClient, tenant_a: TenantKeys,
                                                                operator_token: str) -> None:
    h = tenant_a.headers()
    created = client.post("/admin/v1/api-keys", headers=h, json={"name": "operator", "scope": "admin"})
    assert created.status_code == 201, created.text
    impostor = {"Authorization": f"Bearer {created.json()['api_key']}"}
    operator = {"Authorization": f"Bearer {operator_token}", "X-Switchboard-Tenant": tenant_a.slug}

    assert client.patch("/admin/v1/tenant", headers=impostor, json={"name": "Renamed by a key"}).status_code == 200
    assert client.patch("/admin/v1/tenant", headers=operator, json={"name": "Renamed by the operator"}).status_code \
        == 200

    events = client.get("/admin/v1/audit", headers=h, params={"action": "tenant.updated"}).json()["events"]
    by_name = {e["data"]["name"]: e for e in events}
    by_key, by_operator = by_name["Renamed by a key"], by_name["Renamed by the operator"]
    assert by_key["actor"] == f"key:{created.json()['id']}" and by_key["actor_name"] == "admin:operator"
    assert by_operator["actor"] == "operator" and by_operator["actor_name"] is None
    # The key's own creation is attributed to the key that made it, not to a name anyone can pick.
    made = client.get("/admin/v1/audit", headers=h, params={"action": "api_key.created"}).json()["events"]
    assert [e["actor_name"] for e in made] == ["admin:admin"] and made[0]["actor"].startswith("key:")


def test_finding8_audit_actor_names_the_exact_key_among_namesakes(client: TestClient,
                                                                  tenant_a: TenantKeys) -> None:
    h = tenant_a.headers()
    twins = [client.post("/admin/v1/api-keys", headers=h, json={"name": "ops", "scope": "admin"}).json()
             for _ in range(2)]
    for n, twin in enumerate(twins):
        headers = {"Authorization": f"Bearer {twin['api_key']}"}
        assert client.patch("/admin/v1/tenant", headers=headers, json={"name": f"by twin {n}"}).status_code == 200
    events = client.get("/admin/v1/audit", headers=h, params={"action": "tenant.updated"}).json()["events"]
    actors = {e["data"]["name"]: e["actor"] for e in events}
    assert actors == {"by twin 0": f"key:{twins[0]['id']}", "by twin 1": f"key:{twins[1]['id']}"}
