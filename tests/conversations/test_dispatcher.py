"""The outbound dispatcher hands each stored reply to its channel once, even with two dispatchers racing."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from app.bus.memory import MemoryBus
from app.conversations.dispatcher import DeliveryBusy, Dispatcher
from app.conversations.service import accept_inbound, add_outbound, outbound_event
from app.db import migrate, session_scope
from app.models import Conversation, Message, utcnow
from gateways.base import SendError


class CountingSender:
    def __init__(self, fail: SendError | None = None) -> None:
        self.sent: list[str] = []
        self.fail = fail

    def send(self, session, account, message) -> str:  # type: ignore[no-untyped-def]
        if self.fail:
            raise self.fail
        self.sent.append(message.id)
        return f"prov-{len(self.sent)}"


@pytest.fixture
def reply(sb_home: Path, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    from app.tenants.service import create_tenant

    migrate()
    with session_scope() as session:
        tenant_id = create_tenant(session, "acme").tenant.id
    accepted = accept_inbound(MemoryBus(), tenant_id=tenant_id, channel="fakechan", contact_external_id="c",
                              provider_message_id="p1", text="hi")
    with session_scope() as session:
        conversation = session.get_one(Conversation, accepted.conversation_id)
        message, _ = add_outbound(session, conversation, key="reply:p1", text="hello", author="bot")
        return outbound_event(message, conversation)


def _use(monkeypatch: pytest.MonkeyPatch, sender: CountingSender) -> None:
    import gateways.registry

    monkeypatch.setitem(gateways.registry.SENDERS, "fakechan", sender)


def test_delivers_once_and_a_redelivered_event_sends_nothing(reply, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    sender = CountingSender()
    _use(monkeypatch, sender)
    Dispatcher().deliver(reply)
    Dispatcher().deliver(reply)
    assert sender.sent == [reply.message_id]
    with session_scope() as session:
        message = session.get_one(Message, reply.message_id)
        assert message.status == "sent" and message.meta["provider_id"] == "prov-1"
        assert message.provider_ref == "prov-1"  # what delivery receipts are matched on


def test_a_message_another_dispatcher_is_sending_is_left_for_later(reply, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    sender = CountingSender()
    _use(monkeypatch, sender)
    with session_scope() as session:
        message = session.get_one(Message, reply.message_id)
        message.meta = {"sending_until": (utcnow() + timedelta(seconds=30)).isoformat()}
    with pytest.raises(DeliveryBusy):
        Dispatcher().deliver(reply)
    assert sender.sent == []
    with session_scope() as session:  # the other dispatcher died: its lease runs out and delivery resumes
        message = session.get_one(Message, reply.message_id)
        message.meta = {"sending_until": (utcnow() - timedelta(seconds=1)).isoformat()}
    Dispatcher().deliver(reply)
    assert sender.sent == [reply.message_id]


def test_transient_failure_releases_the_lease_and_permanent_failure_is_recorded(reply, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    _use(monkeypatch, CountingSender(fail=SendError("provider 503", permanent=False)))
    with pytest.raises(SendError):
        Dispatcher().deliver(reply)
    with session_scope() as session:
        message = session.get_one(Message, reply.message_id)
        assert message.status == "pending" and "sending_until" not in message.meta
    _use(monkeypatch, CountingSender(fail=SendError("number blocked", permanent=True)))
    Dispatcher().deliver(reply)
    with session_scope() as session:
        message = session.get_one(Message, reply.message_id)
        assert message.status == "failed" and message.error == "number blocked"
