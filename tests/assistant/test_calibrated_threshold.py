"""The answer-time threshold: the live pack version's calibrated `min_relevance` applies unless the tenant set
one explicitly (explicit wins), and one tenant's calibration never changes another's answers."""

from __future__ import annotations

from typing import Any

import pytest

from app.bootstrap import Container
from app.contracts import InboundMessage
from app.db import migrate, session_scope
from app.models import PackVersion, new_id
from tests.assistant.helpers import FakePassage

# Scores between a calibrated 0.35 and the default 0.45.
PASSAGE = FakePassage("c1", "faq.csv", "Do you deliver bikes?",
                      "Q: Do you deliver bikes?\nA: We deliver assembled bikes within 20 km for $25.", 0.40, 1)


@pytest.fixture
def tenants(services: Container) -> dict[str, str]:
    from app.tenants.service import create_tenant

    migrate()
    ids = {}
    with session_scope(cross_tenant="tests") as session:
        for slug, calibrated in (("calibrated", 0.35), ("explicit", 0.35), ("other", None)):
            tenant = create_tenant(session, slug).tenant
            tenant.live_pack_version = 1
            if slug == "explicit":
                tenant.policies = {**tenant.policies, "min_relevance": 0.45}
            session.add(PackVersion(id=new_id(), tenant_id=tenant.id, version=1, status="live",
                                    calibration={"threshold": calibrated}))
            ids[slug] = tenant.id
    return ids


def _ask(services: Container, tenant_id: str, text: str = "can you bring the bike to my house") -> Any:
    from app.assistant.orchestrator import Orchestrator
    from app.conversations.service import accept_inbound

    bus = services.bus
    accepted = accept_inbound(bus, tenant_id=tenant_id, channel="sms", contact_external_id="+15550001",
                              provider_message_id=f"p-{tenant_id}", text=text)
    event = InboundMessage(tenant_id=tenant_id, message_id=accepted.message_id, conversation_id="-", contact_id="-",
                           channel="sms", provider_message_id=f"p-{tenant_id}", text=text)
    orchestrator = Orchestrator.of(services, retrieve=lambda *a, **k: [PASSAGE])
    return orchestrator.process(event)


def test_calibrated_threshold_applies_unless_the_policy_sets_one(services: Container, tenants: dict[str, str]) -> None:
    answered = _ask(services, tenants["calibrated"])
    assert answered.status == "answered" and "20 km" in (answered.text or "")
    # The same calibration, but the tenant set min_relevance 0.45 itself: that wins.
    assert _ask(services, tenants["explicit"]).status == "escalated"
    # A tenant whose version has no calibrated threshold: the default 0.45, whatever the others calibrated.
    other = _ask(services, tenants["other"])
    assert other.status == "escalated" and other.reason == "no_knowledge"
