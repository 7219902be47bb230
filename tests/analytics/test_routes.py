"""/admin/v1/analytics: who may read it (every role of the tenant, nobody else), range validation with clear 422s,
the CSV's form, handoffs as the review API writes them, and days cut in UTC whatever the database session's time
zone. SQLite and Postgres (the `backend` fixture)."""

from __future__ import annotations

import csv
import io
from datetime import UTC, date, datetime, timedelta

from fastapi.testclient import TestClient
from sqlalchemy import select

from tests.admin.conftest import TenantKeys
from tests.auth.conftest import add_person, bearer, email, login
from tests.review.helpers import open_escalation

URL = "/admin/v1/analytics"


def test_every_role_of_the_tenant_reads_and_strangers_do_not(client: TestClient, tenant_a: TenantKeys) -> None:
    today = {"since": date.today().isoformat(), "until": date.today().isoformat()}
    viewer = login(client, add_person(tenant_a, email("vic"), "viewer"))
    for headers in (tenant_a.headers(), tenant_a.headers("agent"), bearer(viewer)):
        r = client.get(URL, headers=headers, params=today)
        assert r.status_code == 200, r.text
        assert client.get(f"{URL}/export.csv", headers=headers, params=today).status_code == 200
    assert client.get(URL, params=today).status_code == 401
    assert client.get(URL, headers={"Authorization": "Bearer sb_nope"}, params=today).status_code == 401


def test_ranges_are_checked_with_the_fix_in_the_message(client: TestClient, tenant_a: TenantKeys) -> None:
    h = tenant_a.headers()
    r = client.get(URL, headers=h, params={"since": "2026-03-10", "until": "2026-03-01"})
    assert r.status_code == 422 and "since (2026-03-10) is after until (2026-03-01)" in r.text
    r = client.get(f"{URL}/export.csv", headers=h, params={"since": "2025-01-01", "until": "2026-03-01"})
    assert r.status_code == 422 and "at most 366" in r.text
    r = client.get(URL, headers=h, params={"since": "2026-02-30"})
    assert r.status_code == 422 and "since" in r.text and "date" in r.text.lower()
    r = client.get(URL, headers=h, params={"since": "9999-12-31"})
    assert r.status_code == 422 and "since (9999-12-31) must be between 1970-01-01 and 9998-12-31" in r.text
    r = client.get(f"{URL}/export.csv", headers=h, params={"until": "0001-01-01"})
    assert r.status_code == 422 and "until (0001-01-01) must be between" in r.text
    r = client.get(URL, headers=h, params={"until": "yesterday"})
    assert r.status_code == 422 and "until" in r.text

    # Defaults: 30 days ending today; one bound alone gives a 30-day range from or to it.
    assert client.get(URL, headers=h).json()["until"] == datetime.now(UTC).date().isoformat()
    body = client.get(URL, headers=h, params={"since": "2026-01-01"}).json()
    assert (body["since"], body["until"], len(body["days"])) == ("2026-01-01", "2026-01-30", 30)
    body = client.get(URL, headers=h, params={"since": "2025-03-02", "until": "2026-03-02"}).json()
    assert len(body["days"]) == 366  # the longest range accepted


def test_csv_is_one_row_per_day_even_without_activity(client: TestClient, tenant_a: TenantKeys) -> None:
    r = client.get(f"{URL}/export.csv", headers=tenant_a.headers(), params={"since": "2026-02-27",
                                                                            "until": "2026-03-02"})
    assert r.status_code == 200 and r.headers["content-type"] == "text/csv; charset=utf-8"
    assert r.headers["content-disposition"] == 'attachment; filename="analytics-2026-02-27-2026-03-02.csv"'
    rows = list(csv.DictReader(io.StringIO(r.text)))
    assert [row["day"] for row in rows] == ["2026-02-27", "2026-02-28", "2026-03-01", "2026-03-02"]
    assert all(row["messages_in"] == "0" and row["deflection"] == "" for row in rows)


def _handoffs(tenant_id: str) -> list[tuple[str | None, bool]]:
    from app.db import session_scope
    from app.models import Handoff

    with session_scope(cross_tenant="tests") as session:
        rows = session.scalars(select(Handoff).where(Handoff.tenant_id == tenant_id).order_by(Handoff.started_at))
        return [(h.escalation_id, h.ended_at is not None) for h in rows]


def test_takeovers_and_releases_leave_one_handoff_each_and_count_as_handling(client: TestClient,
                                                                               tenant_a: TenantKeys,
                                                                               tenant_b: TenantKeys) -> None:
    opened = open_escalation(tenant_a.id, publish=False)
    agent = tenant_a.headers("agent")
    r = client.post(f"/review/v1/escalations/{opened.escalation_id}/decision", headers=agent,
                    json={"decision": "takeover"})
    assert r.status_code == 200, r.text
    # Taken over again from the conversation: still one stretch in an agent's hands.
    assert client.post(f"/review/v1/conversations/{opened.conversation_id}/takeover", headers=agent).status_code == 200
    assert _handoffs(tenant_a.id) == [(opened.escalation_id, False)]
    # The other tenant cannot release it (404), and no handoff of its own appears.
    assert client.post(f"/review/v1/conversations/{opened.conversation_id}/release",
                       headers=tenant_b.headers("agent")).status_code == 404
    assert client.post(f"/review/v1/conversations/{opened.conversation_id}/release", headers=agent).status_code == 200
    assert client.post(f"/review/v1/conversations/{opened.conversation_id}/release", headers=agent).status_code == 200
    assert _handoffs(tenant_a.id) == [(opened.escalation_id, True)] and _handoffs(tenant_b.id) == []

    today = datetime.now(UTC).date().isoformat()
    total = client.get(URL, headers=tenant_a.headers(), params={"since": today, "until": today}).json()["total"]
    assert total["agent_handling"]["count"] == 1 and total["human_resolution"]["count"] == 1
    assert total["escalations_by_reason"] == {"no_knowledge": 1} and total["decisions"] == {"takeover": 1}
    other = client.get(URL, headers=tenant_b.headers(), params={"since": today, "until": today}).json()["total"]
    assert other["escalations"] == 0 and other["agent_handling"]["count"] == 0 and other["messages_in"] == 0


def test_days_are_utc_days_whatever_the_session_time_zone(client: TestClient, tenant_a: TenantKeys,
                                                         backend: str) -> None:
    """Messages at 23:30 and 00:30 UTC fall on two days, also when PostgreSQL's session speaks another zone."""
    from sqlalchemy import event, text

    from app.analytics.figures import compute
    from app.db import get_engine, session_scope
    from app.models import Message
    from tests.factories import get_or_create_contact, get_or_create_conversation

    late = datetime(2026, 5, 1, 23, 30, tzinfo=UTC)
    with session_scope(cross_tenant="tests") as session:
        contact = get_or_create_contact(session, tenant_a.id, "webchat", "v_tz", None)
        conversation = get_or_create_conversation(session, tenant_a.id, contact, None)
        for i, at in enumerate((late, late + timedelta(hours=1))):
            session.add(Message(tenant_id=tenant_a.id, conversation_id=conversation.id, channel="webchat",
                                direction="in", provider_message_id=f"tz{i}", text="hi", status="answered",
                                created_at=at))
    engine = get_engine()

    def far_east(dbapi_connection, record) -> None:  # type: ignore[no-untyped-def]
        cursor = dbapi_connection.cursor()
        cursor.execute("SET TIME ZONE 'Pacific/Kiritimati'")  # UTC+14: both messages on 2 May there
        cursor.close()

    if backend == "postgres":
        engine.dispose()
        event.listen(engine, "connect", far_east)
    try:
        with session_scope(cross_tenant="tests") as session:
            if backend == "postgres":
                assert session.execute(text("SHOW TIME ZONE")).scalar() == "Pacific/Kiritimati"
            report = compute(session, tenant_a.id, date(2026, 5, 1), date(2026, 5, 2))
    finally:
        if backend == "postgres":
            event.remove(engine, "connect", far_east)
            engine.dispose()
    assert [(d.isoformat(), f.messages_in) for d, f in report.days] == [("2026-05-01", 1), ("2026-05-02", 1)]
