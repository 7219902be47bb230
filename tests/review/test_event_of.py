"""`event_of`: how the events stream's consumer groups (webhooks, SLA timers) pick their one kind of event."""

from __future__ import annotations

import pytest

from app.bus.base import Delivery, PermanentFailure
from app.contracts import EscalationOpened, SlaDue, event_of


def delivery(tenant_id: str, fields: dict[str, str]) -> Delivery:
    return Delivery(topic="events", tenant_id=tenant_id, id="1-0", fields=fields)


def test_its_own_kind_is_read_and_other_kinds_are_passed_over() -> None:
    due = SlaDue(tenant_id="acme", escalation_id="e1")
    assert event_of(delivery("acme", due.to_bus()), SlaDue) == due
    assert event_of(delivery("acme", due.to_bus()), EscalationOpened) is None


def test_an_unreadable_body_or_another_tenants_event_is_dead_lettered_with_the_reason() -> None:
    with pytest.raises(PermanentFailure, match="unreadable SlaDue"):
        event_of(delivery("acme", {"type": "SlaDue", "v": "1", "body": "{not json"}), SlaDue)
    with pytest.raises(PermanentFailure, match="unreadable SlaDue"):
        event_of(delivery("acme", {"type": "SlaDue", "v": "1"}), SlaDue)
    foreign = SlaDue(tenant_id="globex", escalation_id="e1").to_bus()
    with pytest.raises(PermanentFailure, match="does not match its stream's tenant"):
        event_of(delivery("acme", foreign), SlaDue)
