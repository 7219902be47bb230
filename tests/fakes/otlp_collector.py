"""An OTLP/HTTP trace collector on 127.0.0.1: `POST /v1/traces` with an `ExportTraceServiceRequest` protobuf body
(gzip or not), decoded with opentelemetry-proto, as the OpenTelemetry Collector, Jaeger or Tempo receive it.
Every span is kept as a `Span` for tests to inspect; any other path answers 404."""

from __future__ import annotations

import gzip
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span as SpanProto

KINDS = {SpanProto.SPAN_KIND_INTERNAL: "internal", SpanProto.SPAN_KIND_SERVER: "server",
         SpanProto.SPAN_KIND_CLIENT: "client", SpanProto.SPAN_KIND_PRODUCER: "producer",
         SpanProto.SPAN_KIND_CONSUMER: "consumer"}


@dataclass(frozen=True)
class Span:
    trace_id: str  # hex, as the logs print it
    span_id: str
    parent_id: str  # "" for a root span
    name: str
    kind: str
    service: str  # the resource's service.name: which process sent it
    attributes: dict[str, Any]
    error: bool


def _value(value: AnyValue) -> Any:
    field = value.WhichOneof("value")
    return getattr(value, field) if field else None


def decode(body: bytes) -> list[Span]:
    request = ExportTraceServiceRequest()
    request.ParseFromString(body)
    spans = []
    for resource_spans in request.resource_spans:
        resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
        for scope_spans in resource_spans.scope_spans:
            for s in scope_spans.spans:
                spans.append(Span(
                    trace_id=s.trace_id.hex(), span_id=s.span_id.hex(), parent_id=s.parent_span_id.hex(),
                    name=s.name, kind=KINDS.get(s.kind, "unspecified"), service=str(resource.get("service.name")),
                    attributes={a.key: _value(a.value) for a in s.attributes},
                    error=s.status.code == s.status.STATUS_CODE_ERROR))
    return spans


class FakeCollector:
    def __init__(self) -> None:
        self.spans: list[Span] = []
        self.exports = 0
        self._lock = threading.Lock()
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.path != "/v1/traces":
                    self.send_response(404)
                    self.end_headers()
                    return
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                spans = decode(body)
                with collector._lock:
                    collector.spans.extend(spans)
                    collector.exports += 1
                answer = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def received(self) -> list[Span]:
        with self._lock:
            return list(self.spans)

    def wait_for(self, condition: Callable[[list[Span]], bool], timeout: float = 30.0) -> list[Span]:
        """The spans received once `condition` holds for them (exporters batch: spans arrive a little later)."""
        deadline = time.monotonic() + timeout
        while True:
            spans = self.received()
            if condition(spans):
                return spans
            if time.monotonic() > deadline:
                names = sorted({(s.service, s.name) for s in spans})
                raise AssertionError(f"the collector did not get the expected spans within {timeout}s; got {names}")
            time.sleep(0.05)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def otlp_collector() -> Iterator[FakeCollector]:
    collector = FakeCollector()
    yield collector
    collector.close()
