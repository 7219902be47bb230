"""Modes and SLA policies through the admin API: validated on save (a bad mode, channel or target is a 422 naming
the field, and changes nothing), merged per channel, and only ever the caller's tenant."""

from __future__ import annotations

from fastapi.testclient import TestClient

from tests.admin.conftest import TenantKeys


def test_modes_and_sla_are_set_and_merged_per_channel(client: TestClient, tenant_a: TenantKeys,
                                                      tenant_b: TenantKeys) -> None:
    h = tenant_a.headers()
    before_b = client.get("/admin/v1/tenant", headers=tenant_b.headers()).json()["policies"]
    r = client.patch("/admin/v1/tenant", headers=h, json={"policies": {
        "mode": "draft", "channel_modes": {"whatsapp": "human", "webchat": "auto"},
        "sla_first_response_s": 300, "sla_holding_message": "Bear with us.", "draft_notice": True}})
    assert r.status_code == 200, r.text
    policies = r.json()["policies"]
    assert policies["mode"] == "draft" and policies["channel_modes"] == {"whatsapp": "human", "webchat": "auto"}
    assert policies["sla_first_response_s"] == 300 and policies["draft_notice"] is True

    # One channel's override reset (null), the other kept.
    r = client.patch("/admin/v1/tenant", headers=h, json={"policies": {"channel_modes": {"webchat": None}}})
    assert r.status_code == 200 and r.json()["policies"]["channel_modes"] == {"whatsapp": "human"}
    assert client.get("/admin/v1/tenant", headers=tenant_b.headers()).json()["policies"] == before_b


def test_bad_modes_and_targets_are_refused(client: TestClient, tenant_a: TenantKeys) -> None:
    h = tenant_a.headers()
    before = client.get("/admin/v1/tenant", headers=h).json()
    cases = [
        ({"mode": "robot"}, "mode"),
        ({"channel_modes": {"whatsapp": "robot"}}, "channel_modes"),
        ({"channel_modes": {"fax": "draft"}}, "channel_modes"),
        ({"channel_modes": "draft"}, "channel_modes"),
        ({"sla_first_response_s": 0}, "sla_first_response_s"),
        ({"sla_first_response_s": 30 * 86400}, "sla_first_response_s"),
        ({"sla_holding_message": ""}, "sla_holding_message"),
    ]
    for policies, field in cases:
        r = client.patch("/admin/v1/tenant", headers=h, json={"policies": policies})
        assert r.status_code == 422, policies
        assert field in str(r.json()["detail"]), r.json()["detail"]
    assert client.get("/admin/v1/tenant", headers=h).json() == before
