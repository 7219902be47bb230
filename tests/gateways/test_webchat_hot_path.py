"""The widget's hot path does less per message without giving anything up: sends share the gateway's group commit
and stay idempotent under concurrency, reads are one tenant-scoped statement, the widget is routed from the
gateways' short-lived account cache, and a verified session token is reused only until its own expiry, for its own
widget and under the key that verified it."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import event, update

from app.keys import TokenError
from tests.admin import conftest as admin_fixtures
from tests.admin.conftest import TenantKeys
from tests.conftest import Graph

# The admin API fixtures: an embedded app on SQLite and on Postgres, tenants with their keys and widget.
backend, client = admin_fixtures.backend, admin_fixtures.client
tenant_a, tenant_b = admin_fixtures.tenant_a, admin_fixtures.tenant_b


def _session(client: TestClient, widget: str) -> dict[str, str]:
    response = client.post(f"/widget/v1/{widget}/sessions", json={})
    assert response.status_code == 201, response.text
    return {"Authorization": f"Bearer {response.json()['token']}"}


def _send(client: TestClient, widget: str, auth: dict[str, str], text: str, message_id: str) -> dict[str, object]:
    response = client.post(f"/widget/v1/{widget}/messages", headers=auth,
                           json={"text": text, "client_message_id": message_id})
    assert response.status_code == 202, response.text
    return dict(response.json())


@contextmanager
def _statements() -> Iterator[list[str]]:
    """The SQL statements the process runs inside the block."""
    from app.db import get_engine

    seen: list[str] = []

    def record(_conn: object, _cursor: object, statement: str, *_: object) -> None:
        seen.append(" ".join(statement.split()).lower())

    engine = get_engine()
    event.listen(engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", record)


def test_a_send_does_not_look_the_widget_up_again_and_a_read_is_one_statement(client: TestClient,
                                                                              tenant_a: TenantKeys) -> None:
    widget = tenant_a.widget_id
    auth = _session(client, widget)
    _send(client, widget, auth, "Do you ship to Canada?", "m1")
    with _statements() as sent:
        _send(client, widget, auth, "And to Mexico?", "m2")
    assert sent and not [s for s in sent if "channel_accounts" in s], sent
    with _statements() as read:
        response = client.get(f"/widget/v1/{widget}/messages", headers=auth)
    assert [m["text"] for m in response.json()["messages"]] == ["Do you ship to Canada?", "And to Mexico?"]
    # On Postgres each transaction first names its tenant for row-level security (app/rls.py): not a query.
    read = [s for s in read if not s.startswith("select set_config('switchboard.tenant_id'")]
    assert len(read) == 1 and read[0].startswith("select") and "from messages" in read[0], read


def test_a_visitors_read_never_shows_another_visitors_or_tenants_messages(client: TestClient, tenant_a: TenantKeys,
                                                                          tenant_b: TenantKeys) -> None:
    mine, theirs = _session(client, tenant_a.widget_id), _session(client, tenant_a.widget_id)
    other_tenant = _session(client, tenant_b.widget_id)
    _send(client, tenant_a.widget_id, mine, "mine", "x1")
    _send(client, tenant_a.widget_id, theirs, "theirs", "x1")
    _send(client, tenant_b.widget_id, other_tenant, "other tenant", "x1")
    read = client.get(f"/widget/v1/{tenant_a.widget_id}/messages", headers=mine)
    assert [m["text"] for m in read.json()["messages"]] == ["mine"]
    # The same token on the other tenant's widget is refused outright.
    assert client.get(f"/widget/v1/{tenant_b.widget_id}/messages", headers=mine).status_code == 401


def test_concurrent_sends_and_retries_are_each_stored_once(client: TestClient, tenant_a: TenantKeys) -> None:
    widget = tenant_a.widget_id
    visitors = [_session(client, widget) for _ in range(12)]
    jobs = [(auth, f"question {i}", f"c{i}") for i, auth in enumerate(visitors)] * 2  # every send sent twice

    with ThreadPoolExecutor(max_workers=16) as pool:
        results = list(pool.map(lambda job: _send(client, widget, *job), jobs))

    for i, auth in enumerate(visitors):
        first, retry = results[i], results[i + len(visitors)]
        assert first["message_id"] == retry["message_id"]
        assert sorted([first["duplicate"], retry["duplicate"]]) == [False, True]
        texts = [m["text"] for m in client.get(f"/widget/v1/{widget}/messages", headers=auth).json()["messages"]]
        assert texts == [f"question {i}"]


def test_a_disabled_widget_stops_answering_once_its_cached_routing_ages_out(
        client: TestClient, tenant_a: TenantKeys, monkeypatch: pytest.MonkeyPatch) -> None:
    from app.db import session_scope
    from app.models import ChannelAccount
    from gateways import common

    widget = tenant_a.widget_id
    auth = _session(client, widget)
    _send(client, widget, auth, "hello", "d1")
    with session_scope(cross_tenant="tests") as session:
        session.execute(update(ChannelAccount).where(ChannelAccount.external_id == widget).values(enabled=False))
    monkeypatch.setattr(common, "ACCOUNT_CACHE_TTL_S", 0.0)  # as if ACCOUNT_CACHE_TTL_S had passed
    for response in (
        client.post(f"/widget/v1/{widget}/messages", headers=auth, json={"text": "hi", "client_message_id": "d2"}),
        client.get(f"/widget/v1/{widget}/messages", headers=auth),
        client.post(f"/widget/v1/{widget}/sessions", json={}),
    ):
        assert response.status_code == 404, response.text
        assert "no active web chat widget" in response.json()["detail"]


# -- verified tokens ---------------------------------------------------------------------------------------------


def _token(widget: str, expires_in: timedelta = timedelta(hours=24)) -> str:
    from app.config import get_settings
    from gateways.webchat import sessions

    ttl = timedelta(seconds=get_settings().widget_session_ttl_s)
    return sessions.issue(widget, "tenant-1", sessions.new_contact_id(), now=datetime.now(UTC) - ttl + expires_in).token


def test_a_cached_token_still_expires_at_its_own_expiry(sb_home: Path) -> None:
    from gateways.webchat import sessions

    # Issued to the second (microseconds dropped): expires between 1 and 2 s from now, so the first checks are in time.
    token = _token("w1", expires_in=timedelta(seconds=2))
    visitor = sessions.verify("w1", token)
    assert sessions.verify("w1", token) == visitor  # now cached
    deadline = time.time() + 5
    while time.time() < deadline:
        try:
            sessions.verify("w1", token)
        except TokenError as exc:
            assert exc.expired and "expired" in str(exc)
            break
        time.sleep(0.1)
    else:
        pytest.fail("a token past its expiry was still accepted")


def test_a_cached_token_is_only_good_for_its_own_widget(sb_home: Path) -> None:
    from gateways.webchat import sessions

    token = _token("w1")
    sessions.verify("w1", token)
    with pytest.raises(TokenError, match="invalid session token"):
        sessions.verify("w2", token)


def test_a_cached_token_is_not_trusted_under_another_secret_key(graph: Graph) -> None:
    from gateways.webchat import sessions

    graph.configure(secret_key=f"first-{uuid.uuid4().hex}")
    token = _token("w1")
    sessions.verify("w1", token)
    graph.configure(secret_key=f"second-{uuid.uuid4().hex}")  # another key; the module's token cache stays
    with pytest.raises(TokenError, match="invalid session token"):
        sessions.verify("w1", token)
