"""The outbound dispatcher hands each stored reply to its channel once, even with two dispatchers racing."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import pytest

from app.bus.base import RetryLater
from app.bus.memory import MemoryBus
from app.channels import Permanent, RateLimited, SendError, SendRequest, Transient
from app.conversations.dispatcher import DeliveryBusy, Dispatcher, lease_for
from app.conversations.push import LocalPush
from app.conversations.replies import add_outbound, outbound_event
from app.conversations.service import accept_inbound
from app.db import migrate, session_scope
from app.models import Conversation, Message, utcnow


class CountingSender:
    in_process = False

    def __init__(self, fail: SendError | None = None) -> None:
        self.sent: list[str] = []
        self.fail = fail

    def send(self, request: SendRequest, record) -> list[str]:  # type: ignore[no-untyped-def]
        if self.fail:
            raise self.fail
        self.sent.append(request.message_id)
        record(f"prov-{len(self.sent)}")
        return [f"prov-{len(self.sent)}"]


class Clock:
    """Time that moves only when the test says so."""

    def __init__(self) -> None:
        self.now = utcnow()

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def reply(sb_home: Path):  # type: ignore[no-untyped-def]
    from app.models import ChannelAccount
    from app.tenants.service import create_tenant

    migrate()
    with session_scope(cross_tenant="tests") as session:
        tenant_id = create_tenant(session, "acme").tenant.id
        account = ChannelAccount(tenant_id=tenant_id, channel="fakechan", external_id="fake-1", name="fake")
        session.add(account)
        session.flush()
        account_id = account.id
    accepted = accept_inbound(MemoryBus(), tenant_id=tenant_id, channel="fakechan", contact_external_id="c",
                              provider_message_id="p1", text="hi", channel_account_id=account_id)
    with session_scope(cross_tenant="tests") as session:
        conversation = session.get_one(Conversation, accepted.conversation_id)
        message, _ = add_outbound(session, conversation, key="reply:p1", text="hello", author="bot")
        return outbound_event(message, conversation)


def _meta(message_id: str) -> dict:  # type: ignore[type-arg]
    with session_scope(cross_tenant="tests") as session:
        return dict(session.get_one(Message, message_id).meta or {})


def test_delivers_once_and_a_redelivered_event_sends_nothing(reply) -> None:  # type: ignore[no-untyped-def]
    sender = CountingSender()
    Dispatcher({"fakechan": sender}, LocalPush()).deliver(reply)
    Dispatcher({"fakechan": sender}, LocalPush()).deliver(reply)
    assert sender.sent == [reply.message_id]
    with session_scope(cross_tenant="tests") as session:
        message = session.get_one(Message, reply.message_id)
        assert message.status == "sent" and message.meta["provider_id"] == "prov-1"
        assert message.provider_ref == "prov-1"  # what delivery receipts are matched on
        assert "sending_until" not in message.meta


def test_a_message_another_dispatcher_is_sending_is_left_for_later(reply) -> None:  # type: ignore[no-untyped-def]
    sender = CountingSender()
    clock = Clock()
    with session_scope(cross_tenant="tests") as session:
        message = session.get_one(Message, reply.message_id)
        message.meta = {"sending_until": (clock.now + timedelta(seconds=5)).isoformat()}
    with pytest.raises(DeliveryBusy):
        Dispatcher({"fakechan": sender}, LocalPush(), clock=clock).deliver(reply)
    assert sender.sent == []
    clock.now += timedelta(seconds=6)  # the other dispatcher died: its lease runs out and delivery resumes
    Dispatcher({"fakechan": sender}, LocalPush(), clock=clock).deliver(reply)
    assert sender.sent == [reply.message_id]


class Dies(BaseException):
    """The process is killed mid-send: nothing after the lease's commit runs."""


class DyingSender(CountingSender):
    def send(self, request: SendRequest, record) -> list[str]:  # type: ignore[no-untyped-def]
        raise Dies


@pytest.mark.parametrize("claim_idle_ms", [30_000, 5_000, 400])
def test_a_lease_left_by_a_dead_dispatcher_never_outlives_the_reclaim(reply, claim_idle_ms: int) -> None:  # type: ignore[no-untyped-def]
    clock = Clock()
    lease = lease_for(claim_idle_ms)
    with pytest.raises(Dies):
        Dispatcher({"fakechan": DyingSender()}, LocalPush(), lease=lease, clock=clock).deliver(reply)
    held = datetime.fromisoformat(_meta(reply.message_id)["sending_until"])
    assert held > clock.now  # the dead dispatcher's lease was committed
    # The bus hands the entry to another consumer once it has been idle for the claim time: by then the lease
    # has run out, so the redelivery sends at once instead of failing with DeliveryBusy.
    clock.now += timedelta(milliseconds=claim_idle_ms)
    sender = CountingSender()
    Dispatcher({"fakechan": sender}, LocalPush(), lease=lease, clock=clock).deliver(reply)
    assert sender.sent == [reply.message_id]


def test_each_recorded_part_renews_the_lease(reply) -> None:  # type: ignore[no-untyped-def]
    clock = Clock()
    seen: list[str] = []

    class SlowParts(CountingSender):
        def send(self, request: SendRequest, record) -> list[str]:  # type: ignore[no-untyped-def]
            for i in range(3):
                clock.now += timedelta(seconds=4)  # each part takes a while
                record(f"part-{i}")
                seen.append(_meta(request.message_id)["sending_until"])
            return ["part-0", "part-1", "part-2"]

    Dispatcher({"fakechan": SlowParts()}, LocalPush(), lease=timedelta(seconds=5), clock=clock).deliver(reply)
    assert len(set(seen)) == 3 and sorted(seen) == seen  # pushed forward at every part
    assert _meta(reply.message_id)["provider_ids"] == ["part-0", "part-1", "part-2"]


def test_transient_failure_releases_the_lease_and_permanent_failure_is_recorded(reply) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(SendError):
        Dispatcher({"fakechan": CountingSender(fail=Transient("provider 503"))}, LocalPush()).deliver(reply)
    with session_scope(cross_tenant="tests") as session:
        message = session.get_one(Message, reply.message_id)
        assert message.status == "pending" and "sending_until" not in message.meta
    Dispatcher({"fakechan": CountingSender(fail=Permanent("number blocked"))}, LocalPush()).deliver(reply)
    with session_scope(cross_tenant="tests") as session:
        message = session.get_one(Message, reply.message_id)
        assert message.status == "failed" and message.error == "number blocked"


def test_retry_after_is_honoured_by_scheduling_not_sleeping(reply) -> None:  # type: ignore[no-untyped-def]
    clock = Clock()
    with pytest.raises(RateLimited):
        Dispatcher({"fakechan": CountingSender(fail=RateLimited("slow down", retry_after=40))}, LocalPush(),
                   clock=clock).deliver(reply)
    sender = CountingSender()
    clock.now += timedelta(seconds=30)  # redelivered (reclaimed) before the provider's wait is over
    with pytest.raises(DeliveryBusy, match="retry-after") as busy:
        Dispatcher({"fakechan": sender}, LocalPush(), clock=clock).deliver(reply)
    assert sender.sent == []  # the provider was not called
    assert isinstance(busy.value, RetryLater)  # an expected wait: the consumer logs a warning, not an error trace
    clock.now = datetime.fromisoformat(_meta(reply.message_id)["retry_at"])  # the wait (and its jitter) is over
    Dispatcher({"fakechan": sender}, LocalPush(), clock=clock).deliver(reply)
    assert sender.sent == [reply.message_id]
    assert "retry_at" not in _meta(reply.message_id)


def test_a_reply_published_again_after_its_writer_died_before_the_delete_is_sent_once(reply) -> None:  # type: ignore[no-untyped-def]
    """The orchestrator publishes an outcome's reply and deletes its outbox entry with a later transaction
    (app/outbox.py `Publisher`); a process that dies in between leaves the entry, and a relay publishes it again
    after the grace. The customer still gets one message."""
    from app import outbox
    from app.contracts import OUTBOUND, Event

    bus = MemoryBus()
    bus.ensure_group(OUTBOUND, "dispatcher")
    dying = outbox.Publisher(bus, forget_after_s=3600)
    with session_scope(tenant=reply.tenant_id) as session:
        pending = dying.add(session, [outbox.Entry.of(OUTBOUND, reply, reply.message_id)])
    dying.publish(pending)  # ... and the process dies before any later transaction or flush
    assert outbox.Relay(bus, clock=lambda: utcnow() + outbox.GRACE).publish_all_due() == 1
    deliveries = bus.read(OUTBOUND, "dispatcher", "d", count=10, block_ms=0)
    assert [Event.from_bus(d.fields).message_id for d in deliveries] == [reply.message_id] * 2
    sender = CountingSender()
    for delivery in deliveries:
        Dispatcher({"fakechan": sender}, LocalPush()).handle(delivery)
    assert sender.sent == [reply.message_id]


# ------------------------------------------------------------------------------------ a provider's long retry-after

class HeldBack(CountingSender):
    """A provider that asks us to wait (a Telegram flood wait): `times` times, then it takes the reply."""

    def __init__(self, retry_after: float, times: int = 1) -> None:
        super().__init__()
        self.retry_after = retry_after
        self.refusals = times

    def send(self, request: SendRequest, record) -> list[str]:  # type: ignore[no-untyped-def]
        if self.refusals:
            self.refusals -= 1
            raise RateLimited("Flood control exceeded", retry_after=self.retry_after)
        return super().send(request, record)


def _outbound_consumer(bus: MemoryBus, dispatcher: Dispatcher, message_id: str):  # type: ignore[no-untyped-def]
    """The dispatcher's consumer as app/workers_runtime.py builds it (five deliveries; a dead letter fails the
    reply), with no claim wait: each drain reclaims what the one before left pending."""
    from app.bus.concurrent import ConcurrentConsumer
    from app.contracts import OUTBOUND
    from app.conversations.redrive import mark_outbound_dead
    from app.workers_runtime import conversation_key

    return ConcurrentConsumer(bus, OUTBOUND, "dispatcher", "d1", dispatcher.handle, concurrency=2,
                              key=conversation_key, max_deliveries=5, claim_idle_ms=0, retry_in_place=True,
                              on_dead=lambda d, reason: mark_outbound_dead(d.tenant_id, message_id, reason))


def _run_for(reply, bus: MemoryBus, dispatcher: Dispatcher, clock: Clock, *,  # type: ignore[no-untyped-def]
             minutes: int, step: timedelta = timedelta(seconds=30)) -> None:
    """Time passes on the fake clock: at every step the outbox relay publishes what is due and the dispatcher's
    consumer handles what it is given (new entries, and the pending ones it reclaims)."""
    from app import outbox
    from app.contracts import OUTBOUND

    bus.publish(OUTBOUND, reply.tenant_id, reply.to_bus())
    consumer = _outbound_consumer(bus, dispatcher, reply.message_id)
    relay = outbox.Relay(bus, clock=clock)
    end = clock.now + timedelta(minutes=minutes)
    while clock.now < end:
        relay.publish_all_due()
        consumer.process_available()
        clock.now += step


def test_a_retry_after_longer_than_the_redeliveries_still_gets_the_reply_out(reply) -> None:  # type: ignore[no-untyped-def]
    """A 10-minute flood wait is far longer than five redeliveries 30 s apart: the wait must not use them up
    (dead-lettered, the reply was marked failed and the customer never got it)."""
    from app.contracts import OUTBOUND

    clock, bus, sender = Clock(), MemoryBus(), HeldBack(retry_after=600)
    _run_for(reply, bus, Dispatcher({"fakechan": sender}, LocalPush(), clock=clock), clock, minutes=12)
    assert sender.sent == [reply.message_id]  # once, after the wait
    with session_scope(cross_tenant="tests") as session:
        assert session.get_one(Message, reply.message_id).status == "sent"
    assert bus.dead_letters(OUTBOUND, reply.tenant_id) == []
    assert bus.pending_count(OUTBOUND, "dispatcher") == 0


def test_a_reply_the_provider_keeps_holding_back_ends_failed_with_its_reason(reply) -> None:  # type: ignore[no-untyped-def]
    clock, bus, sender = Clock(), MemoryBus(), HeldBack(retry_after=600, times=100)
    dispatcher = Dispatcher({"fakechan": sender}, LocalPush(), clock=clock, max_wait=timedelta(minutes=25))
    _run_for(reply, bus, dispatcher, clock, minutes=60, step=timedelta(minutes=5))
    assert sender.refusals == 100 - 3  # two waits (10 minutes and a jitter each); the third ends past 25: failed
    with session_scope(cross_tenant="tests") as session:
        message = session.get_one(Message, reply.message_id)
        assert message.status == "failed" and "Flood control exceeded" in (message.error or "")
        assert "still hold it back 0:25:00 after it first did" in (message.error or "")
    assert sender.sent == []


def test_many_short_waits_never_fail_a_reply(reply) -> None:  # type: ignore[no-untyped-def]
    """A burst's flood waits are seconds each: however many, the reply goes out once the provider takes it."""
    clock, bus, sender = Clock(), MemoryBus(), HeldBack(retry_after=2, times=20)
    dispatcher = Dispatcher({"fakechan": sender}, LocalPush(), clock=clock, max_wait=timedelta(minutes=5))
    _run_for(reply, bus, dispatcher, clock, minutes=2, step=timedelta(seconds=3))
    assert sender.refusals == 0 and sender.sent == [reply.message_id]


def test_the_rescheduled_reply_goes_out_even_when_the_dispatchers_clock_lags_the_relays(reply) -> None:  # type: ignore[no-untyped-def]
    """The relay publishes the scheduled entry by its own clock; the entry names the wait it was scheduled for,
    so a dispatcher whose clock is a little behind sends it instead of taking it for an early copy."""
    from app import outbox
    from app.contracts import OUTBOUND

    clock, bus, sender = Clock(), MemoryBus(), HeldBack(retry_after=600)
    consumer = _outbound_consumer(bus, Dispatcher({"fakechan": sender}, LocalPush(), clock=clock), reply.message_id)
    bus.publish(OUTBOUND, reply.tenant_id, reply.to_bus())
    assert consumer.process_available().acked == 1  # rescheduled: the entry in hand is done
    bus.publish(OUTBOUND, reply.tenant_id, reply.to_bus())  # a copy before the wait is over (a relay's duplicate)
    assert consumer.process_available().acked == 1  # acked without calling the provider: the schedule stands
    assert sender.refusals == 0 and sender.sent == []
    outbox.Relay(bus, clock=lambda: clock.now + timedelta(seconds=605)).publish_all_due()
    clock.now += timedelta(seconds=599)
    assert consumer.process_available().acked == 1
    assert sender.sent == [reply.message_id]
