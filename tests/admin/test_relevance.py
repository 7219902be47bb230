"""Admin API: the relevance threshold in effect, its source and the calibration's figures; recalibration; an
explicit policy wins; each tenant sees and changes only its own."""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient

from app.bootstrap import container
from app.db import session_scope
from app.knowledge.service import ingest_paths
from tests.admin.conftest import TenantKeys
from tests.knowledge import calibration_pack


def test_relevance_shows_the_calibration_and_which_threshold_is_in_effect(
        client: TestClient, tenant_a: TenantKeys, tenant_b: TenantKeys, tmp_path: Path) -> None:
    with session_scope(cross_tenant="tests") as session:
        ingest_paths(session, tenant_a.id, [calibration_pack.write(tmp_path / "a")], deps=container().knowledge)
        ingest_paths(session, tenant_b.id, [calibration_pack.write(tmp_path / "b", eval_set=False)],
                     deps=container().knowledge)

    a = client.get("/admin/v1/knowledge/relevance", headers=tenant_a.headers()).json()
    threshold = a["calibration"]["threshold"]
    assert a["source"] == "calibrated" and a["in_effect"] == a["calibrated"] == threshold and a["policy"] is None
    assert a["pack_version"] == 1 and set(a["calibration"]["report"]) == {"chosen", "default"}
    b = client.get("/admin/v1/knowledge/relevance", headers=tenant_b.headers()).json()
    assert b["source"] == "default" and b["in_effect"] == 0.45 and b["calibrated"] is None
    assert "no eval questions" in b["calibration"]["reason"]
    versions = client.get("/admin/v1/knowledge/versions", headers=tenant_a.headers()).json()["versions"]
    assert versions[0]["calibration"]["threshold"] == threshold

    # Explicit wins; null resets it to the calibration.
    client.patch("/admin/v1/tenant", headers=tenant_a.headers(), json={"policies": {"min_relevance": 0.6}})
    a = client.get("/admin/v1/knowledge/relevance", headers=tenant_a.headers()).json()
    assert (a["in_effect"], a["source"], a["calibrated"]) == (0.6, "policy", threshold)
    client.patch("/admin/v1/tenant", headers=tenant_a.headers(), json={"policies": {"min_relevance": None}})
    assert client.get("/admin/v1/knowledge/relevance", headers=tenant_a.headers()).json()["source"] == "calibrated"

    # Recalibrating B (no eval set) keeps its default and leaves A alone; another tenant's version is a 404.
    again = client.post("/admin/v1/knowledge/relevance/calibrate", headers=tenant_b.headers())
    assert again.status_code == 200 and again.json()["source"] == "default"
    assert client.get("/admin/v1/knowledge/relevance", headers=tenant_a.headers()).json()["calibrated"] == threshold
    missing = client.post("/admin/v1/knowledge/relevance/calibrate?pack_version=9", headers=tenant_b.headers())
    assert missing.status_code == 404 and "does not exist" in missing.json()["detail"]
    assert client.get("/admin/v1/knowledge/relevance", headers=tenant_a.headers("agent")).status_code == 403
