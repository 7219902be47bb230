"""A human's reply must obey the channel's rules: WhatsApp allows free-form text only within 24 hours of the
customer's last message; outside it the decision is refused before anything is stored, unless the channel
account has an approved template to send instead."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from app.bus.memory import MemoryBus
from app.conversations.service import accept_inbound
from app.db import migrate, session_scope
from app.models import ChannelAccount, Contact, Escalation, Message, utcnow


@pytest.fixture
def setup(sb_home: Path) -> tuple[TestClient, str, str]:
    from app.main import create_app
    from app.tenants.service import create_tenant

    migrate()
    with session_scope(cross_tenant="tests") as session:
        new = create_tenant(session, "acme")
        account = ChannelAccount(tenant_id=new.tenant.id, channel="whatsapp", external_id="PHONE1")
        session.add(account)
        session.flush()
        tenant_id, account_id, agent = new.tenant.id, account.id, new.agent_api_key
    accepted = accept_inbound(MemoryBus(), tenant_id=tenant_id, channel="whatsapp", contact_external_id="3161234",
                              provider_message_id="wamid.A", text="where is my parcel?", channel_account_id=account_id)
    with session_scope(cross_tenant="tests") as session:
        message = session.get_one(Message, accepted.message_id)
        message.status = "escalated"
        session.add(Escalation(tenant_id=tenant_id, conversation_id=accepted.conversation_id,
                               message_id=accepted.message_id, reason="no_knowledge"))
        contact = session.scalars(select(Contact).where(Contact.tenant_id == tenant_id)).one()
        contact.last_inbound_at = utcnow() - timedelta(hours=25)
    client = TestClient(create_app(run_workers=False))
    with session_scope(cross_tenant="tests") as session:
        escalation_id = session.scalars(select(Escalation.id)).one()
    return client, agent, escalation_id


def _outbound_count() -> int:
    with session_scope(cross_tenant="tests") as session:
        return session.scalar(select(func.count()).select_from(Message).where(Message.direction == "out")) or 0


def test_outside_the_24_hour_window_without_a_template_the_reply_is_refused(setup) -> None:
    client, agent, escalation_id = setup
    response = client.post(f"/review/v1/escalations/{escalation_id}/decision",
                           headers={"Authorization": f"Bearer {agent}"},
                           json={"decision": "edit", "text": "It ships tomorrow."})
    assert response.status_code == 409 and "24 hours" in response.json()["detail"]
    assert _outbound_count() == 0
    with session_scope(cross_tenant="tests") as session:
        assert session.get_one(Escalation, escalation_id).status == "open"


def test_with_an_approved_template_the_reply_is_accepted(setup) -> None:
    client, agent, escalation_id = setup
    with session_scope(cross_tenant="tests") as session:
        account = session.scalars(select(ChannelAccount).where(ChannelAccount.channel == "whatsapp")).one()
        account.config = {"template": {"name": "order_update", "language": "en_US"}}
    response = client.post(f"/review/v1/escalations/{escalation_id}/decision",
                           headers={"Authorization": f"Bearer {agent}"},
                           json={"decision": "edit", "text": "It ships tomorrow."})
    assert response.status_code == 200, response.text
    assert _outbound_count() == 1
