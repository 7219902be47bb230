"""The roles that consume the bus: the orchestrator (inbound) and the dispatcher (outbound), beside the outbox
relay (app/outbox.py) and the redrive sweep (app/conversations/redrive.py).

`switchboard orchestrator` runs them as one scale-out process (replicate it freely: the consumer groups share
the work and reclaim what a dead replica held); embedded `serve`, `chat` and `demo` run the same consumers in
threads of their own process, on the in-process bus.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from app.bus.base import Bus, Delivery
from app.bus.concurrent import ConcurrentConsumer
from app.bus.consumer import Consumer
from app.contracts import EVENTS, INBOUND, OUTBOUND
from app.outbox import start_relay, stop_threads

if TYPE_CHECKING:
    from app.bootstrap import Container

log = logging.getLogger(__name__)

ORCHESTRATOR_GROUP = "orchestrator"
DISPATCHER_GROUP = "dispatcher"


def consumer_name(role: str) -> str:
    # Letters between the numbers: a run of digits would read as a phone number to the log scrubber.
    return f"{role}-{socket.gethostname()}-pid{os.getpid()}-t{threading.get_ident() % 10_000}"


def warm_up(container: Container) -> None:
    """Load the models every message needs before the first one is read: otherwise the customers who write first
    after a start (a deploy, a crash) all wait for them, ~1 s on 2 cores (docs/benchmarks.md, "Tenth pass")."""
    from app.assistant import language

    if container.settings.pii_ner:
        # Names and addresses on for every tenant: a missing extra stops the process here with the install
        # command, instead of escalating every message (app/assistant/pii_ner.py).
        container.pii_ner.recognizer()
    warm = getattr(container.embedder, "warm", None)  # a model loaded on first use (a test's fake has none)
    if warm is not None:
        warm()
    language.load()


def build_consumers(container: Container, bus: Bus, stop: threading.Event, *, answer: bool = True,
                    deliver: bool = True) -> list[Consumer]:
    """The orchestrator's consumer (`answer`) and the dispatcher's (`deliver`)."""
    from app.assistant.orchestrator import Orchestrator
    from app.assistant.outcomes import mark_dead
    from app.conversations.dispatcher import Dispatcher, lease_for
    from app.conversations.redrive import mark_outbound_dead

    settings = container.settings
    if answer:
        warm_up(container)

    def on_inbound_dead(delivery: Delivery, reason: str) -> None:
        message_id = _message_id(delivery)
        if message_id:
            mark_dead(delivery.tenant_id, message_id, reason)

    def on_outbound_dead(delivery: Delivery, reason: str) -> None:
        message_id = _message_id(delivery)
        if message_id:
            mark_outbound_dead(delivery.tenant_id, message_id, reason)

    common = {
        "max_deliveries": settings.bus_max_deliveries,
        "claim_idle_ms": settings.bus_claim_idle_ms,
        "batch_size": settings.bus_batch_size,
        "stop": stop,
    }
    # Many messages at once, one conversation at a time (app/bus/concurrent.py): answers wait for the LLM, and
    # deliveries for the channel's API (or, for the widget, they wake it once committed).
    concurrency = settings.orchestrator_concurrency
    common.update(
        concurrency=concurrency, key=conversation_key, retry_in_place=True,
        tenant_concurrency=settings.orchestrator_tenant_concurrency or default_tenant_concurrency(concurrency),
    )
    consumers: list[Consumer] = []
    if answer:
        orchestrator = Orchestrator.of(container, bus=bus)
        consumers.append(ConcurrentConsumer(
            bus, INBOUND, ORCHESTRATOR_GROUP, consumer_name("orchestrator"), orchestrator.handle,
            on_dead=on_inbound_dead, after_stop=orchestrator.publisher.flush, **common))  # type: ignore[arg-type]
    if deliver:
        dispatcher = Dispatcher(container.senders, container.push, lease=lease_for(settings.bus_claim_idle_ms),
                                clock=container.clock)
        consumers.append(ConcurrentConsumer(
            bus, OUTBOUND, DISPATCHER_GROUP, consumer_name("dispatcher"), dispatcher.handle,
            on_dead=on_outbound_dead, **common))  # type: ignore[arg-type]
    return consumers


def default_tenant_concurrency(concurrency: int) -> int:
    """What one tenant may hold of `concurrency` when the operator did not say: all but a fifth (at least one).
    The workers are threads that mostly wait for the LLM, so the pool is sized above one tenant's share: a lone
    busy tenant uses its whole share (64 of the default 80: a burst of 64 customers in one LLM round), and the
    fifth it cannot take is there at once for the other tenants' messages, however long its own handlers take."""
    return max(1, concurrency - max(1, concurrency // 5))


def notification_consumers(container: Container, bus: Bus, stop: threading.Event) -> list[Consumer]:
    """Escalation events to the review consoles (a quick wake-up each) and to tenants' webhooks (slow receivers
    held per tenant, so one tenant's stalled receiver leaves the others theirs): app/review/notify.py; and the
    escalations' first-response timers when due (app/review/sla.py)."""
    from app.review.notify import CONSOLE_GROUP, WEBHOOK_GROUP, ConsoleWaker, WebhookSender
    from app.review.sla import SLA_GROUP, SlaTimers

    settings = container.settings
    common = {"max_deliveries": settings.bus_max_deliveries, "claim_idle_ms": settings.bus_claim_idle_ms,
              "batch_size": settings.bus_batch_size, "stop": stop}
    return [
        Consumer(bus, EVENTS, CONSOLE_GROUP, consumer_name("console"), ConsoleWaker(container.push).handle,
                 **common),  # type: ignore[arg-type]
        Consumer(bus, EVENTS, SLA_GROUP, consumer_name("sla"),
                 SlaTimers(bus, container.push).handle, **common),  # type: ignore[arg-type]
        ConcurrentConsumer(bus, EVENTS, WEBHOOK_GROUP, consumer_name("webhooks"), WebhookSender().handle,
                           concurrency=8, tenant_concurrency=1, key=lambda d: d.tenant_id,
                           **common),  # type: ignore[arg-type]
    ]


def conversation_key(delivery: Delivery) -> str:
    """The ordering key of an inbound message or a reply: its conversation (the stream already is the
    tenant's)."""
    import json

    return str(json.loads(delivery.fields["body"])["conversation_id"])


def _message_id(delivery: Delivery) -> str | None:
    import json

    try:
        return str(json.loads(delivery.fields["body"])["message_id"])
    except (KeyError, ValueError, TypeError):
        return None


def redrive_loop(bus: Bus, stop: threading.Event, every_s: float = 30.0) -> None:
    """Re-publish the events of messages whose event was lost on the bus (see `redrive_stale`), until `stop`."""
    from app.conversations.redrive import redrive_stale

    while not stop.wait(every_s):
        try:
            count = redrive_stale(bus, inbound_group=ORCHESTRATOR_GROUP, outbound_group=DISPATCHER_GROUP)
            if count:
                log.warning("re-published the events of %d message(s) whose event was lost", count)
        except Exception:
            log.exception("redrive sweep failed; retrying in %.0fs", every_s)


def retention_loop(stop: threading.Event, every_s: float) -> None:
    """Mask the raw PII past each tenant's `pii_retention_days` (app/retention.py) every `every_s`
    (`RETENTION_INTERVAL_S`), until `stop`. Idempotent, so every replica may run it."""
    from app.retention import purge

    while not stop.wait(every_s):
        try:
            purge()
        except Exception:
            log.exception("retention purge failed; retrying in %.0fs", every_s)


@dataclass
class RoleThreads:
    consumers: list[Consumer]
    stop_event: threading.Event
    threads: list[threading.Thread] = field(default_factory=list)

    @classmethod
    def start_all(cls, container: Container, bus: Bus | None = None, *, answer: bool = True) -> RoleThreads:
        """Every role as a thread of this process, with `container`'s services (`bus`: another bus for them);
        all but the orchestrator's when not `answer` (answering processes do that: app/answerers.py)."""
        bus = bus or container.bus
        stop = threading.Event()
        roles = cls([*build_consumers(container, bus, stop, answer=answer),
                     *notification_consumers(container, bus, stop)], stop)
        targets = [(c.run, f"sb-{c.group}") for c in roles.consumers]
        targets.append((lambda: redrive_loop(bus, stop), "sb-redrive"))
        retention_s = container.settings.retention_interval_s
        targets.append((lambda: retention_loop(stop, retention_s), "sb-retention"))
        for target, name in targets:
            roles._start(target, name)
        roles.threads.append(start_relay(bus, stop))  # this process writes: it publishes what it (or a dead one) left
        return roles

    @classmethod
    def start_answering(cls, container: Container) -> RoleThreads:
        """The orchestrator's consumer alone: an answering process of embedded `serve` (app/answerers.py)."""
        stop = threading.Event()
        roles = cls(build_consumers(container, container.bus, stop, deliver=False), stop)
        for consumer in roles.consumers:
            roles._start(consumer.run, f"sb-{consumer.group}")
        return roles

    def _start(self, target: Callable[[], object], name: str) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self.threads.append(thread)

    def stop(self, timeout: float = 10.0) -> None:
        stop_threads(self.stop_event, self.threads, timeout)
