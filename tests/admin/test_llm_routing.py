"""The tenant's LLM list, routing rule and per-provider keys through the admin API, and the usage summary (with a
tenant-crossing attempt). SQLite and Postgres (the `backend` fixture)."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient

from tests.admin.conftest import TenantKeys

PROVIDERS = [
    {"name": "full", "base_url": "https://llm.example.com/v1", "model": "big-model", "timeout_s": 20,
     "input_per_1m": 2.5, "output_per_1m": 10},
    {"name": "cheap", "model": "small-model"},  # the server's own endpoint, another model
]


def _patch(client: TestClient, t: TenantKeys, llm: dict[str, Any]) -> Any:
    return client.patch("/admin/v1/tenant", headers=t.headers(), json={"policies": {"llm": llm}})


def test_provider_list_and_routing_rule_are_saved_and_read_back(client: TestClient, tenant_a: TenantKeys) -> None:
    r = _patch(client, tenant_a, {"providers": PROVIDERS, "deadline_s": 45,
                                  "route": {"max_words": 12, "use": "cheap", "min_score": 0.6}})
    assert r.status_code == 200, r.text
    llm = client.get("/admin/v1/tenant", headers=tenant_a.headers()).json()["policies"]["llm"]
    assert [p["name"] for p in llm["providers"]] == ["full", "cheap"]
    assert llm["route"] == {"max_words": 12, "use": "cheap", "min_score": 0.6} and llm["deadline_s"] == 45

    # The rule alone can change later: it is checked against the stored list.
    assert _patch(client, tenant_a, {"route": {"max_words": 8, "use": "full"}}).status_code == 200
    r = _patch(client, tenant_a, {"route": {"max_words": 8, "use": "nope"}})
    assert r.status_code == 422 and "'nope' is not one of policies.llm.providers (full, cheap)" in r.text


def test_invalid_lists_are_refused_with_the_reason(client: TestClient, tenant_a: TenantKeys) -> None:
    cases = [
        ({"providers": [{"name": "x", "base_url": "http://127.0.0.1:11434/v1", "model": "m"}]}, "loopback"),
        ({"providers": [{"name": "x", "base_url": "http://169.254.169.254/v1", "model": "m"}]}, "link-local"),
        ({"providers": [{"name": "a", "model": "m"}, {"name": "a", "model": "n"}]}, "unique"),
        ({"providers": [{"name": "Bad Name", "model": "m"}]}, "name"),
        ({"providers": [{"name": "a"}]}, "model"),
        ({"providers": []}, "providers"),
        ({"providers": [{"name": "a", "model": "m"}], "base_url": "https://llm.example.com/v1"}, "not both"),
        ({"route": {"max_words": 5, "use": "cheap"}}, "none set"),
        ({"route": {"max_words": 0, "use": "cheap"}}, "max_words"),
        ({"providers": [{"name": "a", "model": "m", "input_per_1m": -1}]}, "input_per_1m"),
    ]
    for llm, reason in cases:
        r = _patch(client, tenant_a, llm)
        assert r.status_code == 422, (llm, r.text)
        assert reason in r.text, (llm, r.text)
    assert "llm" not in client.get("/admin/v1/tenant", headers=tenant_a.headers()).json()["policies"]

    # A stored one-endpoint form must be cleared when a list replaces it.
    assert _patch(client, tenant_a, {"base_url": "https://llm.example.com/v1", "model": "m"}).status_code == 200
    r = _patch(client, tenant_a, {"providers": PROVIDERS})
    assert r.status_code == 422 and '"base_url": null' in r.json()["detail"]
    assert _patch(client, tenant_a, {"providers": PROVIDERS, "base_url": None}).status_code == 200


def test_provider_keys_are_stored_encrypted_and_never_returned(client: TestClient, tenant_a: TenantKeys,
                                                               tenant_b: TenantKeys) -> None:
    h = tenant_a.headers()
    r = client.put("/admin/v1/tenant/llm-keys/full", headers=h, json={"api_key": "sk-full-secret"})
    assert r.status_code == 200 and r.json() == {"llm_provider_keys": ["full"]}
    tenant = client.get("/admin/v1/tenant", headers=h)
    assert tenant.json()["llm_provider_keys"] == ["full"] and "sk-full-secret" not in tenant.text
    assert client.get("/admin/v1/tenant", headers=tenant_b.headers()).json()["llm_provider_keys"] == []
    assert client.delete("/admin/v1/tenant/llm-keys/full", headers=tenant_b.headers()).status_code == 404

    from app.db import session_scope
    from app.models import Tenant

    with session_scope(cross_tenant="tests") as session:
        stored = session.get_one(Tenant, tenant_a.id).llm_provider_keys_encrypted
        assert stored and "sk-full-secret" not in stored

    assert client.put("/admin/v1/tenant/llm-keys/Not Valid", headers=h, json={"api_key": "k"}).status_code == 422
    assert client.put("/admin/v1/tenant/llm-keys/full", headers=tenant_a.headers("agent"),
                      json={"api_key": "k"}).status_code == 403
    assert client.delete("/admin/v1/tenant/llm-keys/full", headers=h).json() == {"llm_provider_keys": []}
    assert client.delete("/admin/v1/tenant/llm-keys/full", headers=h).status_code == 404
    actions = [e["action"] for e in client.get("/admin/v1/audit", headers=h).json()["events"]]
    assert "tenant.llm_provider_key_set" in actions and "tenant.llm_provider_key_removed" in actions


def _calls(tenant_id: str, *rows: tuple[str, str, str, int, int, float | None]) -> None:
    from app.providers.llm.router import CallRecord
    from app.providers.llm.usage import record_calls

    record_calls([CallRecord(tenant_id=tenant_id, message_id="m1", provider=provider, model=model, outcome=outcome,
                             latency_ms=100, prompt_tokens=p, completion_tokens=c, cost=cost)
                  for provider, model, outcome, p, c, cost in rows])


def test_usage_summary_by_day_and_model_stays_in_its_tenant(client: TestClient, tenant_a: TenantKeys,
                                                            tenant_b: TenantKeys) -> None:
    _calls(tenant_a.id, ("full", "big-model", "unavailable", 0, 0, None), ("cheap", "small-model", "ok", 40, 6, 0.001),
           ("cheap", "small-model", "ok", 60, 4, 0.002))
    _calls(tenant_b.id, ("b-only", "b-model", "ok", 999, 999, 9.0))

    r = client.get("/admin/v1/llm/usage", headers=tenant_a.headers())
    assert r.status_code == 200, r.text
    body = r.json()
    rows = {(u["provider"], u["model"]): u for u in body["usage"]}
    assert set(rows) == {("full", "big-model"), ("cheap", "small-model")}
    cheap = rows[("cheap", "small-model")]
    assert (cheap["calls"], cheap["failed"], cheap["prompt_tokens"], cheap["completion_tokens"]) == (2, 0, 100, 10)
    assert abs(cheap["cost"] - 0.003) < 1e-9 and cheap["day"] == body["until"]
    assert rows[("full", "big-model")]["failed"] == 1 and rows[("full", "big-model")]["cost"] is None
    assert body["total_prompt_tokens"] == 100 and abs(body["total_cost"] - 0.003) < 1e-9

    # B sees its own calls only, whatever it adds to the request.
    for params in ({}, {"tenant_id": tenant_a.id}, {"tenant": tenant_a.slug}):
        seen = client.get("/admin/v1/llm/usage", headers=tenant_b.headers(), params=params).json()
        assert [(u["provider"], u["prompt_tokens"]) for u in seen["usage"]] == [("b-only", 999)], params
    assert client.get("/admin/v1/llm/usage", headers=tenant_b.headers("agent")).status_code == 403
    assert client.get("/admin/v1/llm/usage").status_code == 401


def test_usage_summary_window(client: TestClient, tenant_a: TenantKeys) -> None:
    h = tenant_a.headers()
    _calls(tenant_a.id, ("cheap", "small-model", "ok", 1, 1, 0.5))
    past = client.get("/admin/v1/llm/usage", headers=h, params={"since": "2020-01-01", "until": "2020-01-31"}).json()
    assert past["usage"] == [] and past["total_cost"] == 0
    r = client.get("/admin/v1/llm/usage", headers=h, params={"since": "2026-02-01", "until": "2026-01-01"})
    assert r.status_code == 422 and "after" in r.text
    assert client.get("/admin/v1/llm/usage", headers=h, params={"since": "yesterday"}).status_code == 422
