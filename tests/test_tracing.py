"""app/tracing.py's switch: the standard OTEL_* variables decide, once per process at role start. Without an
OTLP endpoint nothing is installed (OpenTelemetry's no-op API stays in place, and every helper returns at once);
with one, the SDK's provider exports over OTLP/HTTP under `switchboard-<role>` unless the environment names the
service. Role processes are real subprocesses: the global provider can be set only once per process."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from app import tracing
from tests.conftest import REPO
from tests.fakes.otlp_collector import FakeCollector

PROBE = """
import json, sys
from opentelemetry import trace
from app import tracing
on = tracing.setup(sys.argv[1])
with tracing.span("probe", {"switchboard.tenant.id": "t1"}) as span:
    fields = tracing.with_context({"type": "X"})
provider = trace.get_tracer_provider()
print(json.dumps({"on": on, "again": tracing.setup("other"), "provider": type(provider).__name__,
                  "service": getattr(getattr(provider, "resource", None), "attributes", {}).get("service.name"),
                  "span": span is not None, "fields": sorted(fields)}))
"""


def _probe(role: str, **env: str) -> dict:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    out = subprocess.run([sys.executable, "-c", PROBE, role], cwd=REPO, env={**clean, **env}, capture_output=True,
                         text=True, timeout=60, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize(("env", "expected"), [
    ({}, False),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}, True),
    ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:4318/v1/traces"}, True),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318", "OTEL_SDK_DISABLED": "true"}, False),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318", "OTEL_TRACES_EXPORTER": "none"}, False),
])
def test_the_standard_variables_decide_whether_traces_are_exported(env: dict[str, str], expected: bool) -> None:
    assert tracing.configured(env) is expected


def test_without_an_endpoint_nothing_is_installed_and_entries_carry_no_context() -> None:
    got = _probe("orchestrator")
    assert got == {"on": False, "again": False, "provider": "ProxyTracerProvider", "service": None, "span": False,
                   "fields": ["type"]}


def test_with_an_endpoint_the_role_exports_its_spans_under_its_service_name(otlp_collector: FakeCollector) -> None:
    got = _probe("orchestrator", OTEL_EXPORTER_OTLP_ENDPOINT=otlp_collector.url)
    assert got == {"on": True, "again": True, "provider": "TracerProvider", "service": "switchboard-orchestrator",
                   "span": True, "fields": ["traceparent", "type"]}
    # The process flushed its spans at exit: the collector decoded the protobuf export.
    (span,) = otlp_collector.wait_for(lambda spans: bool(spans), timeout=10)
    assert (span.name, span.service, span.attributes) == ("probe", "switchboard-orchestrator",
                                                          {"switchboard.tenant.id": "t1"})


def test_the_environment_may_name_the_service(otlp_collector: FakeCollector) -> None:
    got = _probe("gateway-telegram", OTEL_EXPORTER_OTLP_ENDPOINT=otlp_collector.url, OTEL_SERVICE_NAME="edge-eu1")
    assert got["service"] == "edge-eu1"


def test_this_test_process_has_tracing_off() -> None:
    """No test leaves tracing on behind it (the `traced` fixture restores the previous state)."""
    from opentelemetry import trace

    assert not tracing.enabled()
    with tracing.span("nothing") as span:
        assert span is None
        assert not trace.get_current_span().get_span_context().is_valid
    assert tracing.carrier() == {}
    assert tracing.extract({"traceparent": "00-" + "1" * 32 + "-" + "2" * 16 + "-01"}) is None


def test_a_request_span_is_named_after_its_route_continues_the_callers_trace_and_holds_no_query(
        traced, sb_home) -> None:
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from app.api import TELEMETRY, install
    from app.config import get_settings

    app = FastAPI(telemetry=TELEMETRY)
    install(app, get_settings())

    @app.get("/things/{thing_id}")
    def thing(thing_id: str, token: str) -> dict[str, str]:
        return {"thing": thing_id}

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    caller_trace, caller_span = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    with TestClient(app) as client:
        response = client.get("/things/t-123?token=s3cret-webhook-token",
                              headers={"traceparent": f"00-{caller_trace}-{caller_span}-01"})
        assert response.status_code == 200
        assert client.get("/healthz").status_code == 200
    (span,) = traced.spans()  # the probe made none; FastAPI made none of its own
    assert (span.name, span.kind, span.trace_id, span.parent_id) == ("GET /things/{thing_id}", "server",
                                                                     caller_trace, caller_span)
    assert span.attributes["http.route"] == "/things/{thing_id}"
    assert span.attributes["http.response.status_code"] == 200
    assert "s3cret" not in str(span.attributes) and "t-123" not in str(span.attributes)
