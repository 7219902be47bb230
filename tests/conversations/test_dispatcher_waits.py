"""The dispatcher under a provider's retry-after, on SQLite and Postgres (app/conversations/dispatcher.py): the
replies one wait held back come back spread out, never before the wait is over, and a conversation's replies
reach the customer in the order they were written, whatever the provider holds back, without losing one."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from sqlalchemy import delete, select

from app import outbox
from app.bus.base import Delivery
from app.bus.memory import MemoryBus
from app.channels import Permanent, RateLimited, SendError, SendRequest, Transient
from app.contracts import OUTBOUND, Event, OutboundMessage
from app.conversations.dispatcher import (
    DEFAULT_LEASE,
    ORDER_GAP,
    ORDER_UNSTARTED,
    REDELIVERY_WAIT,
    DeliveryBusy,
    Dispatcher,
)
from app.conversations.push import LocalPush
from app.conversations.replies import add_outbound, outbound_event
from app.conversations.service import accept_inbound
from app.db import session_scope
from app.models import ChannelAccount, Conversation, Message, OutboxEntry
from app.tenants.service import create_tenant
from tests.conversations.test_dispatcher import Clock, CountingSender


@pytest.fixture(autouse=True)
def empty_outbox(tenant: str) -> None:
    """The relay publishes every tenant's due entries, and the Postgres database is shared by the session's tests:
    start from an empty outbox, so what the relay publishes is this test's."""
    with session_scope(cross_tenant="tests") as session:
        session.execute(delete(OutboxEntry))


@pytest.fixture
def account(tenant: str) -> str:
    with session_scope(tenant=tenant) as session:
        row = ChannelAccount(tenant_id=tenant, channel="fakechan", external_id=f"fake-{tenant}", name="fake")
        session.add(row)
        session.flush()
        return row.id


def _replies(tenant: str, account: str, contact: str, count: int) -> list[OutboundMessage]:
    """`count` replies to `contact`, in one conversation, written in this order."""
    accepted = accept_inbound(MemoryBus(), tenant_id=tenant, channel="fakechan", contact_external_id=contact,
                              provider_message_id=f"in-{contact}", text="hi", channel_account_id=account)
    with session_scope(tenant=tenant) as session:
        conversation = session.get_one(Conversation, accepted.conversation_id)
        return [outbound_event(add_outbound(session, conversation, key=f"reply:{contact}:{i}", text=f"part {i}",
                                            author="bot")[0], conversation) for i in range(count)]


def _message(message_id: str) -> Message:
    with session_scope(cross_tenant="tests") as session:
        message = session.get_one(Message, message_id)
        session.expunge(message)
        return message


def _scheduled(message_id: str) -> list[datetime]:
    """When the outbox entries that bring the reply back are due."""
    with session_scope(cross_tenant="tests") as session:
        return list(session.scalars(select(OutboxEntry.not_before).where(OutboxEntry.message_id == message_id)
                                    .order_by(OutboxEntry.id)))


class Provider(CountingSender):
    """A provider that answers each reply's sends from a script (its refusals first, then it takes the reply), and
    notes every attempt."""

    def __init__(self, refusals: dict[str, list[SendError]] | None = None, *, always: SendError | None = None) -> None:
        super().__init__()
        self.refusals = refusals or {}
        self.always = always
        self.attempts: list[str] = []

    def send(self, request: SendRequest, record) -> list[str]:  # type: ignore[no-untyped-def]
        self.attempts.append(request.message_id)
        if self.always is not None:
            raise self.always
        if self.refusals.get(request.message_id):
            raise self.refusals[request.message_id].pop(0)
        return super().send(request, record)


class World:
    """The dispatcher as deployed, on a clock that moves only when the test says: its consumer as
    app/workers_runtime.py builds it (ordered by conversation, five deliveries, a dead letter fails the reply) and
    the outbox relay. `run` lets time pass: at every step the relay publishes what is due and the consumer handles
    what it is given."""

    def __init__(self, provider: Provider, *, max_wait: timedelta = timedelta(hours=1)) -> None:
        from app.bus.concurrent import ConcurrentConsumer
        from app.conversations.redrive import mark_outbound_dead
        from app.workers_runtime import conversation_key

        self.clock, self.bus = Clock(), MemoryBus()
        dispatcher = Dispatcher({"fakechan": provider}, LocalPush(), clock=self.clock, max_wait=max_wait)

        def dead(delivery: Delivery, reason: str) -> None:
            event = Event.from_bus(delivery.fields)
            assert isinstance(event, OutboundMessage)
            mark_outbound_dead(delivery.tenant_id, event.message_id, reason)

        self.consumer = ConcurrentConsumer(self.bus, OUTBOUND, "dispatcher", "d1", dispatcher.handle, concurrency=2,
                                           key=conversation_key, max_deliveries=5, claim_idle_ms=0,
                                           retry_in_place=True, on_dead=dead)
        self.relay = outbox.Relay(self.bus, clock=self.clock)

    def publish(self, *events: OutboundMessage) -> None:
        for event in events:
            self.bus.publish(OUTBOUND, event.tenant_id, event.to_bus())
        self.consumer.process_available()

    def run(self, *, minutes: int, step: timedelta = timedelta(seconds=30)) -> None:
        end = self.clock.now + timedelta(minutes=minutes)
        while self.clock.now < end:
            self.clock.now += step
            self.relay.publish_all_due()
            self.consumer.process_available()


# ------------------------------------------------------------------------------------------------------ jitter

@pytest.mark.parametrize(("retry_after", "spread"), [(40, timedelta(seconds=4)), (600, timedelta(seconds=5))])
def test_replies_one_wait_held_back_come_back_spread_out_and_never_early(
        tenant: str, account: str, retry_after: int, spread: timedelta) -> None:
    """Six conversations' replies, all held back by the same flood wait at the same instant: each is due again
    after the provider's wait, plus at most a tenth of it and never more than 5 s, and no two at once (all at once
    would be held back together again)."""
    replies = [_replies(tenant, account, f"c{i}", 1)[0] for i in range(6)]
    clock, provider = Clock(), Provider(always=RateLimited("Too Many Requests", retry_after=retry_after))
    dispatcher = Dispatcher({"fakechan": provider}, LocalPush(), clock=clock)
    for reply in replies:
        with pytest.raises(RateLimited):
            dispatcher.deliver(reply)
    assert provider.attempts == [r.message_id for r in replies]  # none waits behind another conversation's
    due = [datetime.fromisoformat(_message(r.message_id).meta["retry_at"]) for r in replies]
    wait = timedelta(seconds=retry_after)
    assert all(clock.now + wait <= at <= clock.now + wait + spread for at in due)
    assert len(set(due)) == len(due)
    assert [_scheduled(r.message_id) for r in replies] == [[at] for at in due]  # the entries are due then too


# ------------------------------------------------------------------------------- order within a conversation

def test_a_reply_waits_behind_an_earlier_one_the_provider_holds_back(tenant: str, account: str) -> None:
    """The first reply is held back for ten minutes; the second, written meanwhile, must not reach the customer
    before it. It goes right after it, once, however often its entry is redelivered while it waits."""
    first, second = _replies(tenant, account, "c", 2)
    provider = Provider({first.message_id: [RateLimited("Flood control exceeded", retry_after=600)]})
    world = World(provider)
    world.publish(first)
    world.publish(second, second)  # and a redelivered copy
    assert provider.attempts == [first.message_id]  # the provider was not asked for the second
    waits = [datetime.fromisoformat(_message(r.message_id).meta["retry_at"]) for r in (first, second)]
    assert waits[0] < waits[1]
    assert _scheduled(second.message_id) == [waits[1]]  # the copy scheduled nothing more
    world.run(minutes=12)
    assert provider.sent == [first.message_id, second.message_id]
    assert [_message(r.message_id).status for r in (first, second)] == ["sent", "sent"]
    assert world.bus.dead_letters(OUTBOUND, tenant) == []
    assert world.bus.pending_count(OUTBOUND, "dispatcher") == 0
    assert _scheduled(first.message_id) == _scheduled(second.message_id) == []


@pytest.mark.parametrize("ends", ["permanent error", "past max_wait"])
def test_a_reply_behind_one_that_ends_failed_still_goes(tenant: str, account: str, ends: str) -> None:
    """The reply it waited behind ends `failed` (the provider refuses it for good, or would hold it back past
    `max_wait`): the later reply goes then, after it, and is not failed for the time it waited."""
    first, second = _replies(tenant, account, "c", 2)
    held = RateLimited("Flood control exceeded", retry_after=600)
    script: list[SendError] = [held, Permanent("message is too long")] if ends == "permanent error" else [held] * 9
    provider = Provider({first.message_id: script})
    world = World(provider, max_wait=timedelta(minutes=25))
    world.publish(first)
    world.publish(second)
    world.run(minutes=40)
    assert _message(first.message_id).status == "failed"
    assert provider.attempts[-1] == second.message_id and provider.attempts.count(second.message_id) == 1
    assert provider.sent == [second.message_id] and _message(second.message_id).status == "sent"
    assert world.bus.pending_count(OUTBOUND, "dispatcher") == 0


def test_the_wait_behind_an_earlier_reply_never_counts_towards_a_replys_own_max_wait(
        tenant: str, account: str) -> None:
    """The first reply is held back twice (20 minutes), the second waits behind it, then the provider holds the
    second back once: 10 minutes from its own first refusal is within the 25 minutes' budget, so it is sent."""
    first, second = _replies(tenant, account, "c", 2)
    held = RateLimited("Flood control exceeded", retry_after=600)
    provider = Provider({first.message_id: [held, RateLimited("Flood control exceeded", retry_after=600)],
                         second.message_id: [RateLimited("Flood control exceeded", retry_after=600)]})
    world = World(provider, max_wait=timedelta(minutes=25))
    world.publish(first)
    world.publish(second)
    world.run(minutes=40)
    assert provider.sent == [first.message_id, second.message_id]
    assert [_message(r.message_id).status for r in (first, second)] == ["sent", "sent"]


def test_a_reply_waits_behind_an_earlier_one_nobody_has_taken_up_yet(tenant: str, account: str) -> None:
    """Scale-out: the second reply's entry reaches a dispatcher before the first's reaches another. The second
    looks again a second later; once the first is sent, it goes. Behind one nobody takes up (its entry lost, to be
    redriven later) a reply waits at most ORDER_UNSTARTED."""
    first, second, lost, fourth = _replies(tenant, account, "c", 4)
    clock, provider = Clock(), Provider()
    dispatcher = Dispatcher({"fakechan": provider}, LocalPush(), clock=clock)
    with pytest.raises(DeliveryBusy, match="behind an earlier reply"):
        dispatcher.deliver(second)
    assert _scheduled(second.message_id) == [clock.now + ORDER_GAP]
    dispatcher.deliver(first)
    clock.now += ORDER_GAP
    dispatcher.deliver(second, due=_message(second.message_id).meta["retry_at"])
    assert provider.sent == [first.message_id, second.message_id]
    assert "held_back_since" not in _message(second.message_id).meta  # waiting behind is not being held back

    with pytest.raises(DeliveryBusy, match="behind an earlier reply"):
        dispatcher.deliver(fourth)
    clock.now += ORDER_UNSTARTED + ORDER_GAP  # nobody took `lost` up meanwhile
    dispatcher.deliver(fourth, due=_message(fourth.message_id).meta["retry_at"])
    assert provider.sent == [first.message_id, second.message_id, fourth.message_id]
    assert _message(lost.message_id).status == "pending"


def test_a_reply_waits_behind_an_earlier_one_whose_send_failed_until_its_redelivery(tenant: str, account: str) -> None:
    """Scale-out: the first reply's send fails without a retry-after (a 502) on one dispatcher; its entry comes back
    by itself. The second, at another dispatcher meanwhile, waits for that redelivery (REDELIVERY_WAIT at most),
    then goes after it. Behind a failed send whose redelivery never comes it goes once that wait is over."""
    first, second, third, fourth = _replies(tenant, account, "c", 4)
    clock, provider = Clock(), Provider({first.message_id: [Transient("502 Bad Gateway")],
                                         third.message_id: [Transient("502 Bad Gateway")]})
    clock.now += ORDER_UNSTARTED + ORDER_GAP  # every reply older than a newly made one
    dispatcher = Dispatcher({"fakechan": provider}, LocalPush(), clock=clock)
    with pytest.raises(Transient):
        dispatcher.deliver(first)
    with pytest.raises(DeliveryBusy, match="behind an earlier reply"):
        dispatcher.deliver(second)
    clock.now += ORDER_GAP
    dispatcher.deliver(first)  # the redelivery
    dispatcher.deliver(second, due=_message(second.message_id).meta["retry_at"])
    assert provider.sent == [first.message_id, second.message_id]
    assert "redelivery_until" not in _message(first.message_id).meta

    with pytest.raises(Transient):
        dispatcher.deliver(third)  # and its redelivery never comes (its entry lost: redriven much later)
    with pytest.raises(DeliveryBusy, match="behind an earlier reply"):
        dispatcher.deliver(fourth)
    clock.now += REDELIVERY_WAIT
    dispatcher.deliver(fourth, due=_message(fourth.message_id).meta["retry_at"])
    assert provider.sent[-1] == fourth.message_id and _message(third.message_id).status == "pending"


def test_a_reply_waits_behind_an_earlier_one_being_sent(tenant: str, account: str) -> None:
    """Another dispatcher holds the earlier reply's send lease (the provider may yet hold it back): the later one
    is not sent alongside it; it looks again a second later (ORDER_GAP), not at the end of the lease (a send is
    done long before), and a lease later once that lease ran out with the earlier reply still pending."""
    first, second = _replies(tenant, account, "c", 2)
    clock, provider = Clock(), Provider()
    lease_end = clock.now + timedelta(seconds=8)
    with session_scope(tenant=tenant) as session:
        session.get_one(Message, first.message_id).meta = {"sending_until": lease_end.isoformat()}
    dispatcher = Dispatcher({"fakechan": provider}, LocalPush(), clock=clock)
    with pytest.raises(DeliveryBusy, match="behind an earlier reply") as busy:
        dispatcher.deliver(second)
    assert busy.value.rescheduled and provider.attempts == []
    [soon] = _scheduled(second.message_id)
    assert soon == clock.now + ORDER_GAP
    clock.now = lease_end  # that dispatcher died: its lease ran out; the bus hands the earlier reply out again soon
    with pytest.raises(DeliveryBusy, match="behind an earlier reply"):  # still pending: looked at again shortly
        dispatcher.deliver(second, due=_message(second.message_id).meta["retry_at"])
    [again] = _scheduled(second.message_id)[1:]
    assert lease_end < again <= lease_end + DEFAULT_LEASE
    dispatcher.deliver(first)
    clock.now = again
    dispatcher.deliver(second, due=_message(second.message_id).meta["retry_at"])
    assert provider.sent == [first.message_id, second.message_id]


def test_a_reply_of_another_tenant_never_holds_one_back(tenant: str, account: str) -> None:
    """The look for an earlier reply is the reply's tenant's: a held-back row of another tenant that names the
    same conversation (forged; the ids never meet otherwise) is not seen."""
    [reply] = _replies(tenant, account, "c", 1)
    with session_scope(cross_tenant="tests") as session:
        other = create_tenant(session, f"other-{tenant}").tenant.id
        session.flush()
        session.add(Message(tenant_id=other, conversation_id=reply.conversation_id, channel="fakechan",
                            direction="out", provider_message_id="forged", status="pending",
                            created_at=_message(reply.message_id).created_at - timedelta(seconds=1),
                            meta={"retry_at": "2999-01-01T00:00:00+00:00"}))
    provider = Provider()
    Dispatcher({"fakechan": provider}, LocalPush()).deliver(reply)
    assert provider.sent == [reply.message_id]
