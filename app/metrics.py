"""Prometheus metrics: what operators graph and alert on (`GET /metrics`, infra/grafana-dashboard.json).

Labels stay bounded, whatever the traffic: routes are templates (`/widget/v1/{widget_id}/messages`, never the raw
path), status codes, topics and consumer groups come from the code, and the labels whose values come from
configuration (LLM provider names, escalation reasons) keep their first `MAX_LABEL_VALUES` values and count the
rest as `other`. There is no tenant, contact or message label: a tenant's own figures are in the admin API
(`GET /admin/v1/llm/usage`), and a label per tenant would multiply every series by the number of tenants.

Process roles: counters and histograms live in the process that counts. With `PROMETHEUS_MULTIPROC_DIR` set
(an empty folder, cleared before the processes start), every process of one machine writes its samples there and
`/metrics` of any of them sums them all, which is what forking servers (gunicorn, `uvicorn --workers`) need.
A role without HTTP (`switchboard orchestrator`) serves its own with `METRICS_PORT`. The streams' figures are read
from the bus when scraped (`StreamCollector`), never counted.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterable, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app import logs, tracing

if TYPE_CHECKING:
    from app.bus.base import Bus
    from app.providers.llm.router import CallRecord

log = logging.getLogger(__name__)

MAX_LABEL_VALUES = 50
OTHER = "other"

disable_created_metrics()  # no `_created` twin of every counter: half the series, nothing graphed from them
# The process's own registry: defined once at import (prometheus_client refuses a metric registered twice).
REGISTRY = CollectorRegistry(auto_describe=True)

HTTP_REQUESTS = Counter("switchboard_http_requests", "HTTP requests answered, by route template and status.",
                        ["method", "route", "status"], registry=REGISTRY)
HTTP_LATENCY = Histogram("switchboard_http_request_duration_seconds",
                         "Time to answer an HTTP request (an event stream counts until it closes).",
                         ["method", "route"], registry=REGISTRY,
                         buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
MESSAGES = Counter("switchboard_messages", "Inbound messages the orchestrator handled, by outcome.", ["outcome"],
                   registry=REGISTRY)
ESCALATIONS = Counter("switchboard_escalations", "Messages escalated to human review, by reason.", ["reason"],
                      registry=REGISTRY)
LLM_CALLS = Counter("switchboard_llm_calls", "LLM attempts, by provider and outcome (ok or the error reason).",
                    ["provider", "outcome"], registry=REGISTRY)
LLM_LATENCY = Histogram("switchboard_llm_call_duration_seconds", "Time of one LLM attempt, failed ones included.",
                        ["provider"], registry=REGISTRY,
                        buckets=(0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60))
LLM_TOKENS = Counter("switchboard_llm_tokens", "LLM tokens used, by provider and kind (prompt, completion).",
                     ["provider", "kind"], registry=REGISTRY)
INGEST_FILES = Counter("switchboard_ingest_files", "Knowledge files ingestion finished, by status.", ["status"],
                       registry=REGISTRY)
QUERY_EMBEDDINGS = Counter("switchboard_query_embeddings",
                           "Customers' questions looked up in the query-embedding cache, by result (hit or miss).",
                           ["result"], registry=REGISTRY)
TAKEN_OVER = Counter("switchboard_messages_taken_over",
                     "Messages a later message of their turn took into its reply while they were still waiting "
                     "(two handlers of one conversation at once: replicas, answering processes).", registry=REGISTRY)
INJECTION_FLAGS = Counter("switchboard_injection_flags",
                          "Texts the injection detector flagged, by where: message, passage (dropped at answer "
                          "time) or chunk (quarantined at ingestion).", ["where"], registry=REGISTRY)


class Bounded:
    """A label's values as given, up to `limit` distinct ones; later new values become `other`."""

    def __init__(self, limit: int = MAX_LABEL_VALUES) -> None:
        self._limit = limit
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, value: str) -> str:
        if value in self._seen:
            return value
        with self._lock:
            if len(self._seen) < self._limit:
                self._seen.add(value)
                return value
        return OTHER


_providers = Bounded()
_reasons = Bounded()
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_routes = Bounded(500)  # templates are bounded by the app already; this guards against a mount that echoes paths


def message_handled(outcome: str, reason: str | None) -> None:
    MESSAGES.labels(outcome).inc()
    if outcome == "escalated":
        ESCALATIONS.labels(_reasons(reason or "unknown")).inc()


def llm_calls(records: Sequence[CallRecord]) -> None:
    """Called by the LLM router with the attempts of one routed call, where it records them in `llm_calls`."""
    for r in records:
        provider = _providers(r.provider)
        LLM_CALLS.labels(provider, r.outcome).inc()
        LLM_LATENCY.labels(provider).observe(r.latency_ms / 1000)
        if r.prompt_tokens:
            LLM_TOKENS.labels(provider, "prompt").inc(r.prompt_tokens)
        if r.completion_tokens:
            LLM_TOKENS.labels(provider, "completion").inc(r.completion_tokens)


def ingest_file(status: str) -> None:
    INGEST_FILES.labels(status).inc()


def query_embedding(result: str) -> None:
    QUERY_EMBEDDINGS.labels(result).inc()


def taken_over(n: int) -> None:
    if n:
        TAKEN_OVER.inc(n)


def injection_flagged(where: str, n: int = 1) -> None:
    if n:
        INJECTION_FLAGS.labels(where).inc(n)


# Topic -> the consumer groups that read it (app/workers_runtime.py, app/review/notify.py).
STREAM_GROUPS: dict[str, tuple[str, ...]] = {
    "inbound": ("orchestrator",),
    "outbound": ("dispatcher",),
    "events": ("console", "webhooks"),
}


class StreamCollector(Collector):
    """The bus's streams, read when scraped: length, dead letters, and per consumer group the pending entries
    (delivered, not acknowledged) and the lag (not yet delivered). Summed over tenants (see the module's doc)."""

    def __init__(self, bus: Bus, groups: dict[str, tuple[str, ...]] = STREAM_GROUPS) -> None:
        self._bus = bus
        self._groups = groups

    def collect(self) -> Iterable[Metric]:
        length = GaugeMetricFamily("switchboard_stream_length", "Entries in the topic's streams.", labels=["topic"])
        dead = GaugeMetricFamily("switchboard_stream_dead_letters", "Entries in the topic's dead-letter streams.",
                                 labels=["topic"])
        pending = GaugeMetricFamily("switchboard_stream_pending", "Entries delivered to the group, not acknowledged.",
                                    labels=["topic", "group"])
        lag = GaugeMetricFamily("switchboard_stream_lag", "Entries not yet delivered to the group.",
                                labels=["topic", "group"])
        up = GaugeMetricFamily("switchboard_bus_up", "1 when the bus answered this scrape.")
        try:
            for topic, groups in self._groups.items():
                stats = self._bus.stream_stats(topic, groups)
                length.add_metric([topic], stats.length)
                dead.add_metric([topic], stats.dead_letters)
                for group in groups:
                    pending.add_metric([topic, group], stats.pending.get(group, 0))
                    lag.add_metric([topic, group], stats.lag.get(group, 0))
        except Exception as exc:  # a scrape must answer: the bus being down is itself the figure
            log.warning("could not read the bus's streams for /metrics: %s", type(exc).__name__)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield from (length, dead, pending, lag, up)


def exposition(bus: Bus | None) -> bytes:
    """The text format of this process's metrics (of every process, with PROMETHEUS_MULTIPROC_DIR), and the
    streams of `bus`."""
    registry = REGISTRY
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    if bus is not None:
        scrape = CollectorRegistry()
        scrape.register(StreamCollector(bus))
        return generate_latest(registry) + generate_latest(scrape)
    return generate_latest(registry)


def serve(port: int, addr: str, bus: Bus | None) -> Any:
    """`/metrics` on its own port, for roles without HTTP (METRICS_PORT, METRICS_ADDR). Returns the server
    (`shutdown()` stops it)."""
    from prometheus_client import start_http_server

    registry = REGISTRY
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    if bus is not None:
        registry.register(StreamCollector(bus))
    server, _ = start_http_server(port, addr=addr, registry=registry)
    log.info("metrics on http://%s:%d/metrics", addr, server.server_port)
    return server


class Observe:
    """ASGI middleware: counts and times each HTTP request by route template, and gives it a request id
    (the caller's `X-Request-ID` when it is a sane one, else a new one) for the logs and the response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        request_id = logs.request_id_from(scope)
        token = logs.start(request_id)
        log_context = logs.current()
        status = 500  # unless the app answers otherwise

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", request_id.encode())]
            await send(message)

        method = scope["method"] if scope["method"] in _METHODS else OTHER
        server_span = _server_span(scope, method, request_id) if tracing.enabled() else nullcontext(None)
        with server_span as span:
            try:
                await self.app(scope, receive, send_with_id)
                logs.reset(token)  # after an exception, the 500 handler outside this middleware still needs the id
            finally:
                route = scope.get("route")
                template = _routes(getattr(route, "path_format", None) or getattr(route, "path", None)
                                   or "unmatched")
                HTTP_REQUESTS.labels(method, template, str(status)).inc()
                HTTP_LATENCY.labels(method, template).observe(time.perf_counter() - started)
                if span is not None:
                    _finish_server_span(span, method, template, status, log_context)


_UNTRACED = frozenset({"/healthz", "/readyz", "/metrics"})  # probes and scrapes: noise in every trace store


def _server_span(scope: Scope, method: str, request_id: str) -> AbstractContextManager[tracing.Span | None]:
    """The request's span (app/tracing.py), continuing the caller's trace when it sent a `traceparent`."""
    if scope.get("path") in _UNTRACED:
        return nullcontext(None)
    headers = {name.decode("latin-1"): value.decode("latin-1") for name, value in scope.get("headers", ())
               if name in (b"traceparent", b"tracestate")}
    return tracing.span(method, {"http.request.method": method, "url.scheme": scope.get("scheme", "http"),
                                 "switchboard.request.id": request_id},
                        kind=tracing.SpanKind.SERVER, parent=tracing.extract(headers))


def _finish_server_span(span: tracing.Span, method: str, template: str, status: int,
                        context: logs.LogContext | None) -> None:
    """Named after the route template (never the raw path: ids in it), with what the request turned out to be
    about (the tenant and message its handler bound, app/logs.py)."""
    span.update_name(f"{method} {template}")
    tracing.annotate(span, {"http.route": template, "http.response.status_code": status,
                            "switchboard.tenant.id": context.tenant_id if context else None,
                            "switchboard.message.id": context.message_id if context else None})
    if status >= 500:
        tracing.failed(span, str(status))
