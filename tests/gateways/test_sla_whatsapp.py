"""The SLA's holding message on WhatsApp: outside the 24-hour window it goes out as the account's approved
template (the channel's ReplyPolicy), through the real sender against a fake Graph API."""

from __future__ import annotations

from datetime import timedelta

import pytest

from app.bootstrap import container
from tests.fakes.fake_meta import FakeGraph
from tests.gateways.conftest import Gateway
from tests.gateways.test_outbound import FakeClock, clock, deliver, graph, stored, wa  # noqa: F401  (fixtures)


def test_the_holding_message_outside_the_window_is_the_approved_template(
    gw: Gateway, graph: FakeGraph, clock: FakeClock, monkeypatch: pytest.MonkeyPatch,  # noqa: F811
) -> None:
    from sqlalchemy import select

    from app.conversations.replies import outbound_event
    from app.db import session_scope
    from app.models import Conversation, Escalation, Message, utcnow
    from app.review.sla import breach

    tenant, conv = wa(gw, graph, clock, monkeypatch, tag="sla", ago=timedelta(days=2),
                      config={"template": {"name": "we_are_on_it", "language": "en_US"}})
    with session_scope(cross_tenant="tests") as session:
        inbound = Message(tenant_id=tenant, conversation_id=conv, channel="whatsapp", direction="in",
                          provider_message_id="wamid.SLA1", text="hello, anyone?", status="escalated")
        session.add(inbound)
        session.flush()
        escalation = Escalation(tenant_id=tenant, conversation_id=conv, message_id=inbound.id, reason="human_mode",
                                sla_state="pending", sla_due_at=utcnow())
        session.add(escalation)
        session.flush()
        escalation_id = escalation.id

    assert breach(container().bus, container().push, tenant, escalation_id) is True
    assert breach(container().bus, container().push, tenant, escalation_id) is False  # once
    with session_scope(cross_tenant="tests") as session:
        holding = session.scalars(select(Message).where(Message.provider_message_id == f"sla:{escalation_id}")).one()
        event = outbound_event(holding, session.get_one(Conversation, conv))
    deliver(event)

    (sent,) = graph.sends()
    assert sent.json()["type"] == "template" and sent.json()["template"]["name"] == "we_are_on_it"
    assert stored(event.message_id).status == "sent"
