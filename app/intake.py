"""The one way a customer message enters Switchboard, whatever the channel.

A gateway verifies the provider's request and normalises it into `InboundRequest`s (its own `verify` and
`parse`); `Intake` accepts and enqueues them: stored once (unique per tenant, channel and provider id) with their
`InboundMessage` in the outbox, in the process's `InboundBatcher` (concurrent webhooks and widget sends share
one transaction and one bus round trip), then published. The orchestrator decides every answer, guardrails
included. A channel that must answer inside its own HTTP response (USSD) waits for that decision, bounded, with
`await_outcome`, woken through the push hub (app/conversations/push.py) when the decision is committed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Literal

from sqlalchemy import select

from app import tracing
from app.bus.base import Bus
from app.conversations.batching import InboundBatcher
from app.conversations.push import Push, outcome_key
from app.conversations.service import Accepted, InboundRequest
from app.db import session_scope
from app.models import Message

OutcomeKind = Literal["answered", "escalated", "waiting"]


@dataclass(frozen=True)
class Outcome:
    """What the orchestrator decided for one message so far: `answered` (with the reply's id and text),
    `escalated` (a person will answer), or `waiting` (no decision yet, or the message is held or failed)."""

    kind: OutcomeKind
    reply_id: str | None = None
    reply_text: str | None = None


class Intake:
    def __init__(self, bus: Bus, push: Push, batcher: InboundBatcher) -> None:
        """`batcher`: the process's one batcher on `bus` (`Container.intake` builds both); `push`: where an
        awaited outcome (USSD) is announced."""
        self.bus = bus
        self.push = push
        self.batcher = batcher

    def submit(self, requests: Sequence[InboundRequest]) -> list[Future[Accepted]]:
        """Queue messages for the next batch; each future resolves once its message is committed and published
        (or raises what failed its batch). Validates every request in the caller's thread first."""
        return self.batcher.submit_all(list(requests))

    def accept(self, requests: Sequence[InboundRequest]) -> list[Accepted]:
        """Accept and enqueue; returns once every message is durably stored, so the caller may answer 2xx.
        Blocking: call it from a worker thread, or use `accept_async` on the event loop."""
        if not requests:
            return []
        with tracing.span("intake", _attributes(requests)) as span:
            accepted = [future.result() for future in self.submit(requests)]
            tracing.annotate(span, _accepted_attributes(accepted))
            return accepted

    async def accept_async(self, requests: Sequence[InboundRequest]) -> list[Accepted]:
        """`accept` for the event loop: awaits the batch instead of parking a threadpool thread on it."""
        if not requests:
            return []
        with tracing.span("intake", _attributes(requests)) as span:
            accepted = list(await asyncio.gather(*(asyncio.wrap_future(f) for f in self.submit(requests))))
            tracing.annotate(span, _accepted_attributes(accepted))
            return accepted

    async def await_outcome(self, tenant_id: str, message_id: str, *, timeout_s: float) -> Outcome:
        """Wait, at most `timeout_s`, for the orchestrator's decision on a message of a channel that
        `awaits_outcome`. The orchestrator wakes this waiter through the push hub (`outcome_key`) once the
        decision is committed, in whatever process it runs; the outcome is read from the database (scoped to
        the tenant) after subscribing, at each wake-up and once more at the deadline (a lost wake-up only costs
        the wait), never on a timer."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        async with self.push.subscribe(tenant_id, outcome_key(message_id)) as waiter:
            while True:
                outcome = await asyncio.to_thread(outcome_of, tenant_id, message_id)
                left = deadline - loop.time()
                if outcome.kind != "waiting" or left <= 0:
                    return outcome
                await waiter.wait(left)


def _attributes(requests: Sequence[InboundRequest]) -> dict[str, str | int]:
    first = requests[0]
    return {"switchboard.tenant.id": first.tenant_id, "switchboard.channel": first.channel,
            "switchboard.intake.messages": len(requests)}


def _accepted_attributes(accepted: Sequence[Accepted]) -> dict[str, str | int | None]:
    """The message's id when the request was about one (a webhook may carry several), and how many were
    duplicates of messages already stored."""
    return {"switchboard.message.id": accepted[0].message_id if len(accepted) == 1 else None,
            "switchboard.intake.duplicates": sum(a.duplicate for a in accepted)}


def outcome_of(tenant_id: str, message_id: str) -> Outcome:
    with session_scope(tenant=tenant_id) as session:
        status = session.scalar(select(Message.status).where(Message.tenant_id == tenant_id,
                                                             Message.id == message_id))
        if status == "escalated":
            return Outcome("escalated")
        if status != "answered":
            return Outcome("waiting")
        reply = session.execute(select(Message.id, Message.text).where(
            Message.tenant_id == tenant_id, Message.direction == "out", Message.in_reply_to_id == message_id,
            Message.author == "bot").order_by(Message.created_at).limit(1)).first()
        if reply is None:  # answered as part of a later message's turn (merged): nothing of its own to show
            return Outcome("waiting")
        return Outcome("answered", reply.id, reply.text)
