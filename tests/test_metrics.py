"""app/metrics.py on its own: bounded labels, the token gate, the stand-alone port, and several processes summed
through PROMETHEUS_MULTIPROC_DIR."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from app import metrics
from app.api import install
from app.bus.memory import MemoryBus
from app.providers.llm.router import CallRecord
from tests.conftest import settings_for


def test_a_label_keeps_its_first_values_then_says_other() -> None:
    label = metrics.Bounded(3)
    assert [label(v) for v in ("a", "b", "a", "c", "d", "e", "b")] == ["a", "b", "a", "c", "other", "other", "b"]


def test_many_llm_provider_names_stay_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    def providers() -> set[str]:
        return {
            sample.labels["provider"]
            for family in text_string_to_metric_families(metrics.exposition(None).decode())
            if family.name == "switchboard_llm_calls"
            for sample in family.samples
        }

    monkeypatch.setattr(metrics, "_providers", metrics.Bounded())  # the process's own set stays as it was
    before = providers()  # other tests' providers, in this process's registry
    metrics.llm_calls([CallRecord("t", None, f"tenant-provider-{i}", "m", "ok", 10, 3, 2) for i in range(200)])
    added = providers() - before
    assert len(added - {"other"}) == metrics.MAX_LABEL_VALUES and "other" in providers()


def test_metrics_are_off_without_a_token(tmp_path: Path) -> None:
    app = FastAPI()
    install(app, settings_for(tmp_path, metrics_token=None))
    with TestClient(app) as client:
        response = client.get("/metrics", headers={"Authorization": "Bearer anything-at-all-here"})
    assert response.status_code == 404 and "METRICS_TOKEN" in response.json()["detail"]


def test_a_role_without_http_serves_metrics_and_streams_on_its_own_port() -> None:
    bus = MemoryBus()
    bus.publish("inbound", "acme", {"n": "1"})
    server = metrics.serve(0, "127.0.0.1", bus)
    try:
        body = httpx.get(f"http://127.0.0.1:{server.server_port}/metrics", timeout=5).text
    finally:
        server.shutdown()
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for f in text_string_to_metric_families(body) for s in f.samples}
    assert samples[("switchboard_stream_length", (("topic", "inbound"),))] == 1
    assert samples[("switchboard_stream_lag", (("group", "orchestrator"), ("topic", "inbound")))] == 1
    assert samples[("switchboard_bus_up", ())] == 1


def test_forked_processes_are_summed_through_the_multiprocess_dir(tmp_path: Path) -> None:
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    count = "from app import metrics; metrics.message_handled('escalated', 'no_knowledge')"
    for _ in range(2):
        subprocess.run([sys.executable, "-c", count], env=env, check=True)
    read = "from app import metrics; print(metrics.exposition(None).decode())"
    body = subprocess.run([sys.executable, "-c", read], env=env, check=True, capture_output=True, text=True).stdout
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for f in text_string_to_metric_families(body) for s in f.samples}
    assert samples[("switchboard_messages_total", (("outcome", "escalated"),))] == 2
    assert samples[("switchboard_escalations_total", (("reason", "no_knowledge"),))] == 2


def test_the_grafana_dashboard_graphs_only_metrics_that_exist() -> None:
    import json
    import re

    dashboard = json.loads((Path(__file__).parent.parent / "infra" / "grafana-dashboard.json").read_text())
    used = {re.sub(r"_(total|bucket|count|sum)$", "", name)
            for panel in dashboard["panels"] for target in panel["targets"]
            for name in re.findall(r"switchboard_[a-z_]+", target["expr"])}
    exposed = {f.name for f in text_string_to_metric_families(metrics.exposition(MemoryBus()).decode())}
    assert used and used <= exposed, used - exposed
    assert {"switchboard_http_requests", "switchboard_stream_lag", "switchboard_escalations",
            "switchboard_llm_tokens", "switchboard_ingest_files"} <= used
