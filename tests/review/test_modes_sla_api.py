"""What the console shows of modes and SLAs: the tenant's effective mode on each escalation's channel (queue items,
the escalation, the conversation view) and its SLA state, with a filter on it; never another tenant's."""

from __future__ import annotations

from fastapi.testclient import TestClient

from tests.admin.conftest import TenantKeys
from tests.review.helpers import open_escalation


def _set_sla(escalation_id: str, state: str) -> None:
    from app.db import session_scope
    from app.models import Escalation, utcnow

    with session_scope(cross_tenant="tests") as session:
        escalation = session.get_one(Escalation, escalation_id)
        escalation.sla_state = state
        escalation.sla_breached_at = utcnow() if state == "breached" else None


def test_the_queue_shows_the_tenants_mode_per_channel_and_the_sla_state(
    client: TestClient, tenant_a: TenantKeys, tenant_b: TenantKeys,
) -> None:
    from app.db import session_scope
    from app.review.queue import open_queue

    r = client.patch("/admin/v1/tenant", headers=tenant_a.headers(),
                     json={"policies": {"mode": "draft", "channel_modes": {"whatsapp": "human"}}})
    assert r.status_code == 200, r.text
    web = open_escalation(tenant_a.id, channel="webchat", publish=False)
    wa = open_escalation(tenant_a.id, channel="whatsapp", publish=False)
    in_b = open_escalation(tenant_b.id, channel="webchat", publish=False)
    _set_sla(wa.escalation_id, "breached")
    _set_sla(web.escalation_id, "pending")
    agent_a = tenant_a.headers("agent")

    listed = {e["id"]: e for e in client.get("/review/v1/escalations", headers=agent_a).json()}
    assert set(listed) == {web.escalation_id, wa.escalation_id}  # not tenant B's
    assert (listed[web.escalation_id]["tenant_mode"], listed[web.escalation_id]["sla_state"]) == ("draft", "pending")
    assert (listed[wa.escalation_id]["tenant_mode"], listed[wa.escalation_id]["sla_state"]) == ("human", "breached")
    assert listed[wa.escalation_id]["sla_breached_at"] is not None

    breached = client.get("/review/v1/escalations", headers=agent_a, params={"sla": "breached"}).json()
    assert [e["id"] for e in breached] == [wa.escalation_id]
    assert client.get("/review/v1/escalations", headers=agent_a, params={"sla": "late"}).status_code == 422

    one = client.get(f"/review/v1/escalations/{wa.escalation_id}", headers=agent_a).json()
    assert (one["tenant_mode"], one["sla_state"]) == ("human", "breached")
    view = client.get(f"/review/v1/conversations/{web.conversation_id}", headers=agent_a).json()
    assert view["tenant_mode"] == "draft"

    # The live queue's items (what the stream sends the console) carry both too.
    with session_scope(cross_tenant="tests") as session:
        items = {i.id: i.to_json() for i in open_queue(session, tenant_a.id)}
        items_b = [i.to_json() for i in open_queue(session, tenant_b.id)]
    assert (items[wa.escalation_id]["tenant_mode"], items[wa.escalation_id]["sla_state"]) == ("human", "breached")
    assert items[web.escalation_id]["tenant_mode"] == "draft"
    assert [(i["id"], i["tenant_mode"], i["sla_state"]) for i in items_b] == [(in_b.escalation_id, "auto", None)]

    # Tenant B's agent sees none of it.
    agent_b = tenant_b.headers("agent")
    assert client.get(f"/review/v1/escalations/{wa.escalation_id}", headers=agent_b).status_code == 404
    assert client.get("/review/v1/escalations", headers=agent_b, params={"sla": "breached"}).json() == []
