"""The trace context travels in each bus entry (both buses): a message's consumer span continues the trace its
entry was made in, as the child of the entry's publish span, on the first delivery and on a redelivery after a
failure; with tracing off, entries carry no trace fields at all."""

from __future__ import annotations

from opentelemetry import trace

from app import outbox, tracing
from app.bus.base import Delivery
from app.bus.consumer import Consumer
from app.contracts import INBOUND, InboundMessage
from tests.bus.conftest import BusFactory
from tests.traces import Recorded, ancestry, one


def _event(tenant: str = "acme") -> InboundMessage:
    return InboundMessage(tenant_id=tenant, message_id="m1", conversation_id="c1", contact_id="k1",
                          channel="webchat", provider_message_id="p1", text="where is my parcel?")


def test_the_consumer_continues_the_trace_of_the_entry_first_time_and_after_a_redelivery(
        make_bus: BusFactory, traced: Recorded) -> None:
    bus = make_bus()
    with tracing.span("origin") as origin:
        assert origin is not None
        entry = outbox.Entry.of(INBOUND, _event(), "m1")
    assert set(entry.fields) >= {"type", "v", "body", "traceparent"}
    outbox.send(bus, [outbox.Pending(0, entry)])  # the writer's fast path

    seen: list[tuple[int, int, int]] = []  # (delivery, trace id, span id) as the handler saw them

    def handler(delivery: Delivery) -> None:
        current = trace.get_current_span().get_span_context()
        seen.append((delivery.deliveries, current.trace_id, current.span_id))
        if delivery.deliveries == 1:
            raise RuntimeError("the LLM timed out")  # left pending: claimed again below

    consumer = Consumer(bus, INBOUND, "g", "c1", handler, claim_idle_ms=0)
    consumer.process_available()
    consumer.process_available()  # claims the failed entry (idle >= 0 ms) and succeeds

    assert [d for d, _, _ in seen] == [1, 2]
    spans = traced.spans()
    trace_id = format(origin.get_span_context().trace_id, "032x")
    assert {s.trace_id for s in spans} == {trace_id}
    publish = one(spans, "publish inbound")
    assert publish.kind == "producer" and publish.attributes["switchboard.outbox.relayed"] is False
    for delivery in (1, 2):
        process = one(spans, "process inbound", **{"switchboard.bus.deliveries": delivery})
        assert process.kind == "consumer"
        assert ancestry(spans, process) == ["origin", "publish inbound", "process inbound"]
        assert process.attributes["messaging.consumer.group.name"] == "g"
        assert process.attributes["switchboard.tenant.id"] == "acme"
        # The handler ran inside the process span: its logs carry that span's ids.
        (_, handler_trace, handler_span) = next(s for s in seen if s[0] == delivery)
        assert format(handler_trace, "032x") == trace_id and format(handler_span, "016x") == process.span_id
    failed = one(spans, "process inbound", **{"switchboard.bus.deliveries": 1})
    assert failed.error and failed.attributes["error.type"] == "RuntimeError"
    assert failed.attributes["switchboard.bus.outcome"] == "failed"
    assert not one(spans, "process inbound", **{"switchboard.bus.deliveries": 2}).error


def test_a_dead_lettered_entry_ends_its_trace_marked_failed(make_bus: BusFactory, traced: Recorded) -> None:
    from app.bus.base import PermanentFailure

    bus = make_bus()
    with tracing.span("origin"):
        bus.publish(INBOUND, "acme", tracing.with_context(_event().to_bus()))

    def handler(delivery: Delivery) -> None:
        raise PermanentFailure("unknown event version")

    Consumer(bus, INBOUND, "g", "c1", handler).process_available()
    process = one(traced.spans(), "process inbound")
    assert ancestry(traced.spans(), process) == ["origin", "process inbound"]
    assert process.error and process.attributes["switchboard.bus.outcome"] == "dead"
    assert "unknown event version" not in str(process.attributes)  # reasons are codes, never free text


def test_with_tracing_off_entries_carry_no_trace_fields_and_no_span_is_made(make_bus: BusFactory) -> None:
    assert not tracing.enabled()
    bus = make_bus()
    with tracing.span("origin") as origin:
        assert origin is None
        entry = outbox.Entry.of(INBOUND, _event(), "m1")
    assert set(entry.fields) == {"type", "v", "body"}
    outbox.send(bus, [outbox.Pending(0, entry)])
    got: list[dict[str, str]] = []
    Consumer(bus, INBOUND, "g", "c1", lambda d: got.append(d.fields)).process_available()
    assert got == [entry.fields]
    assert not trace.get_current_span().get_span_context().is_valid
