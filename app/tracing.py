"""OpenTelemetry traces: one trace per message, from the webhook through the bus to the provider's send call.

Off unless `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set. Then `setup(role)`,
called once by each role's entry point (`serve`, `gateway`, `orchestrator`, `worker`), installs the SDK's tracer
provider with a batching OTLP/HTTP exporter; the SDK reads the other standard variables itself
(`OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER[_ARG]`, `OTEL_EXPORTER_OTLP_*_HEADERS`,
`_TIMEOUT`, `_COMPRESSION`, `OTEL_BSP_*`, `OTEL_PROPAGATORS`), and `OTEL_SDK_DISABLED=true` or
`OTEL_TRACES_EXPORTER=none` keep it off. `service.name` is `switchboard-<role>` unless the environment names it.

While off, every helper here returns at once: no span objects, no context changes, no trace fields on the bus.

The trace context crosses processes in each bus entry, as the W3C `traceparent` / `tracestate` fields beside the
event's own (`with_context` when an entry is made, `extract` when it is consumed), so the outbox, the relay and
a redelivery all carry the context the entry was made in. Span attributes name tenants, channels, message ids,
outcomes and reasons, never message text or a customer's identifiers, and a failed span records only the
error's type (an exception's message can quote the customer).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import TYPE_CHECKING, Any

from opentelemetry import context as context_api
from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider

log = logging.getLogger(__name__)

TRACER_NAME = "switchboard"
# The bus entry fields the propagator writes (W3C trace context, and baggage should anyone set some).
CONTEXT_FIELDS = ("traceparent", "tracestate", "baggage")

Attributes = Mapping[str, str | int | float | bool | None]

_tracer: Tracer | None = None  # None: tracing is off
_provider: TracerProvider | None = None


def enabled() -> bool:
    return _tracer is not None


def configured(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether the environment asks for trace export (the standard OTEL_* variables)."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    if environ.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower() in ("none", ""):
        return False
    return bool(environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"))


def setup(role: str) -> bool:
    """Install the SDK's tracer provider for this process when the environment configures an OTLP endpoint.
    Once per process (OpenTelemetry's global provider can be set only once); later calls change nothing.
    Returns whether tracing is on."""
    if _tracer is not None:
        return True
    environ = os.environ
    if not configured(environ):
        return False
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    attributes: dict[str, str] = {"service.namespace": "switchboard", "switchboard.role": role}
    named = environ.get("OTEL_SERVICE_NAME") or "service.name=" in environ.get("OTEL_RESOURCE_ATTRIBUTES", "")
    if not named:
        attributes["service.name"] = f"switchboard-{role}"
    provider = TracerProvider(resource=Resource.create(attributes))  # flushes its spans at exit
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)  # for any library that traces through the global API
    install(provider)
    log.info("tracing on: spans of %s go to %s", provider.resource.attributes.get("service.name"),
             environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"))
    return True


def install(provider: TracerProvider | None) -> TracerProvider | None:
    """Use `provider` for this process's spans (None: tracing off). Returns the previous one, not shut down.
    `setup` calls it; tests call it with a provider of their own (an in-memory exporter)."""
    global _tracer, _provider
    old, _provider = _provider, provider
    _tracer = provider.get_tracer(TRACER_NAME) if provider is not None else None
    return old


def shutdown() -> None:
    """Export what is buffered and stop (at exit the SDK does this by itself)."""
    provider = install(None)
    if provider is not None:
        provider.shutdown()


# ------------------------------------------------------------------------------------------------------- spans


_OFF: AbstractContextManager[None] = nullcontext(None)  # reusable: what `span` is while tracing is off


def span(name: str, attributes: Attributes | None = None, *, kind: SpanKind = SpanKind.INTERNAL,
         parent: Context | None = None) -> AbstractContextManager[Span | None]:
    """A span around the block, current inside it (logs written there carry its trace id); None when tracing is
    off. An exception leaving the block marks the span failed with the exception's type only."""
    tracer = _tracer
    if tracer is None:
        return _OFF
    return _span(tracer, name, attributes, kind, parent)


@contextmanager
def _span(tracer: Tracer, name: str, attributes: Attributes | None, kind: SpanKind,
          parent: Context | None) -> Iterator[Span]:
    with tracer.start_as_current_span(name, context=parent, kind=kind, attributes=_clean(attributes),
                                      record_exception=False, set_status_on_exception=False) as current:
        try:
            yield current
        except BaseException as exc:
            failed(current, exc)
            raise


def start(name: str, attributes: Attributes | None = None, *, kind: SpanKind = SpanKind.INTERNAL,
          parent: Context | None = None) -> Span:
    """A span that is not made current (the caller ends it); only while tracing is on (see `enabled`)."""
    assert _tracer is not None, "tracing is off: check tracing.enabled() first"
    return _tracer.start_span(name, context=parent, kind=kind, attributes=_clean(attributes))


def annotate(target: Span | None, attributes: Attributes) -> None:
    """Set attributes on `target` (a span from `span`, or None when tracing is off); None values are skipped."""
    if target is not None:
        target.set_attributes(_clean(attributes))


def annotate_current(attributes: Attributes) -> None:
    """Set attributes on the span in progress, if tracing is on and there is one."""
    if _tracer is not None:
        current = trace.get_current_span()
        if current.is_recording():
            current.set_attributes(_clean(attributes))


def failed(target: Span | None, error: BaseException | str, reason: str | None = None) -> None:
    """Mark `target` failed: the error's type (an exception's, or a code) and a reason code, never free text."""
    if target is None:
        return
    error_type = error if isinstance(error, str) else type(error).__name__
    target.set_attribute("error.type", error_type)
    target.set_status(Status(StatusCode.ERROR, reason or error_type))


def event(name: str, attributes: Attributes | None = None) -> None:
    """An event on the span in progress (something that took no time of its own: a provider skipped)."""
    if _tracer is not None:
        current = trace.get_current_span()
        if current.is_recording():
            current.add_event(name, _clean(attributes))


def _clean(attributes: Attributes | None) -> dict[str, str | int | float | bool]:
    return {k: v for k, v in (attributes or {}).items() if v is not None}


# ---------------------------------------------------------------------------------------------- propagation


def carrier() -> dict[str, str]:
    """The current trace context as W3C fields (`traceparent`, `tracestate`); empty when tracing is off or no
    span is in progress. For work handed to another thread that will put it on the bus (the inbound batcher)."""
    if _tracer is None:
        return {}
    fields: dict[str, str] = {}
    propagate.inject(fields)
    return fields


def with_context(fields: dict[str, str], context: Mapping[str, str] | None = None) -> dict[str, str]:
    """A bus entry's fields plus the trace context it belongs to: `context` (a `carrier()` taken earlier) or
    else the current one. Unchanged when tracing is off."""
    if _tracer is None:
        return fields
    extra = dict(context) if context is not None else carrier()
    if not extra:
        return fields
    return {**{k: v for k, v in fields.items() if k not in CONTEXT_FIELDS}, **extra}


def current() -> Context:
    """The current context (to parent spans started later, elsewhere, on what is in progress here)."""
    return context_api.get_current()


def with_span(fields: dict[str, str], target: Span) -> dict[str, str]:
    """A bus entry's fields carrying `target`'s context (the entry's producer span)."""
    extra: dict[str, str] = {}
    propagate.inject(extra, context=trace.set_span_in_context(target))
    return {**{k: v for k, v in fields.items() if k not in CONTEXT_FIELDS}, **extra}


def extract(fields: Mapping[str, str]) -> Context | None:
    """The trace context a bus entry (or an HTTP request's headers, as a str map) carries; None when tracing is
    off or it carries none (the span made from it then starts a new trace)."""
    if _tracer is None or "traceparent" not in fields:
        return None
    return propagate.extract(fields)


def bus_attributes(topic: str, tenant_id: str, **more: Any) -> dict[str, Any]:
    """The messaging attributes of a span about one bus entry."""
    return {"messaging.system": "switchboard.bus", "messaging.destination.name": topic,
            "switchboard.tenant.id": tenant_id, **more}
