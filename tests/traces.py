"""Helpers for tests of traces (app/tracing.py): an in-process tracer provider with an in-memory exporter (the
`traced` fixture), and the spans of both sources (it, and the fake OTLP collector) in one shape."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from app import tracing
from tests.fakes.otlp_collector import Span


class Recorded:
    """The spans this process finished while the fixture was active."""

    def __init__(self, exporter: InMemorySpanExporter) -> None:
        self.exporter = exporter

    def spans(self) -> list[Span]:
        return [from_sdk(s) for s in self.exporter.get_finished_spans()]


@pytest.fixture
def traced() -> Iterator[Recorded]:
    """Tracing on in this process, every span kept in memory (SimpleSpanProcessor: exported as it ends)."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    old = tracing.install(provider)
    try:
        yield Recorded(exporter)
    finally:
        tracing.install(old)
        provider.shutdown()


def from_sdk(span: ReadableSpan) -> Span:
    context, parent = span.get_span_context(), span.parent
    assert context is not None
    kind = span.kind.name.lower()
    return Span(trace_id=format(context.trace_id, "032x"), span_id=format(context.span_id, "016x"),
                parent_id=format(parent.span_id, "016x") if parent is not None else "", name=span.name, kind=kind,
                service=str(span.resource.attributes.get("service.name")), attributes=dict(span.attributes or {}),
                error=span.status.status_code == StatusCode.ERROR)


def one(spans: Iterable[Span], name: str, **attributes: Any) -> Span:
    """The only span called `name` (with these attribute values)."""
    spans = list(spans)
    found = [s for s in spans if s.name == name and all(s.attributes.get(k) == v for k, v in attributes.items())]
    names = sorted(s.name for s in spans)
    assert len(found) == 1, f"expected one span {name!r} {attributes}, got {len(found)} of {names}"
    return found[0]


def parent_of(spans: Iterable[Span], child: Span) -> Span:
    (parent,) = [s for s in spans if s.span_id == child.parent_id and s.trace_id == child.trace_id]
    return parent


def ancestry(spans: list[Span], leaf: Span) -> list[str]:
    """The names from the trace's root down to `leaf`, following parent ids (a missing parent fails)."""
    names = [leaf.name]
    while leaf.parent_id:
        leaf = parent_of(spans, leaf)
        names.append(leaf.name)
    return names[::-1]
