"""The orchestrator's one-statement form of the turn checks gives what the separate queries give: the context
read's `newer_pending` and `merged_before` columns (app/assistant/orchestrator.py `_LOAD`), for every message of
conversations in every state a turn can be in; and the history read (no expanding NOT IN) against a plain query;
on SQLite and on Postgres."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import select, update

from app.assistant.orchestrator import _LOAD
from app.assistant.turns import merged_turn, newer_pending
from app.bootstrap import container
from app.conversations.service import accept_inbound, history
from app.db import session_scope
from app.models import Message
from tests.conftest import REDIS_TEST_URL, Graph

# Each conversation: its inbound messages' statuses, oldest first; "merged>N" is merged into message N.
CONVERSATIONS = [
    ["received"],
    ["received", "received"],
    ["received", "received", "received"],
    ["received", "answered", "received"],
    ["answered", "received"],
    ["merged>1", "received"],
    ["merged>1", "merged>2", "received"],
    ["merged>1", "answered", "received"],
    ["merged>2", "received", "received"],
    ["received", "escalated"],
    ["received", "human", "received"],
    ["answered"],
    ["skipped", "received", "failed"],
    ["dead", "answered", "failed", "received"],
]


@pytest.fixture(params=["embedded", "postgres+redis"])
def tenant(request: pytest.FixtureRequest, graph: Graph) -> str:
    from app.db import migrate
    from app.tenants.service import create_tenant

    if request.param == "postgres+redis":
        graph.configure(database_url=request.getfixturevalue("pg_url"), redis_url=REDIS_TEST_URL,
                        bus_namespace=request.getfixturevalue("redis_namespace"))
    migrate()
    with session_scope(cross_tenant="tests") as session:
        return create_tenant(session, f"t{uuid.uuid4().hex[:8]}").tenant.id


def _conversation(tenant_id: str, statuses: list[str]) -> list[str]:
    contact = uuid.uuid4().hex
    ids = [accept_inbound(container().bus, tenant_id=tenant_id, channel="webchat", contact_external_id=contact,
                          provider_message_id=uuid.uuid4().hex, text=f"text {i}").message_id
           for i in range(len(statuses))]
    with session_scope(tenant=tenant_id) as session:
        for message_id, status in zip(ids, statuses, strict=True):
            status, _, into = status.partition(">")
            meta = {"superseded_by": ids[int(into)]} if into else {}
            session.execute(update(Message).where(Message.id == message_id)
                            .values(status=status, meta=meta).execution_options(synchronize_session=False))
    return ids


def test_the_folded_turn_checks_match_the_separate_queries(tenant: str) -> None:
    seen_newer = seen_merged = 0
    for statuses in CONVERSATIONS:
        ids = _conversation(tenant, statuses)
        for message_id in ids:
            with session_scope(tenant=tenant) as session:
                row = session.execute(_LOAD, {"message": message_id, "tenant": tenant}).one()
                newer = newer_pending(session, tenant, row.conversation_id, row.created_at)
                merged = merged_turn(session, tenant, row.conversation_id, row.id, row.created_at)[0]
            assert row.newer_pending == newer, (statuses, ids.index(message_id))
            with session_scope(tenant=tenant) as session:
                turns = history(session, tenant, row.conversation_id, before_id=message_id, turns=3)
                kept = session.execute(select(Message.id, Message.text).where(
                    Message.conversation_id == row.conversation_id, Message.status.notin_(["failed", "dead"]))
                    .order_by(Message.created_at.desc()).limit(4)).all()
            assert turns == [("customer", text) for mid, text in kept if mid != message_id][:3][::-1]
            assert merged == [] or row.merged_before, (statuses, ids.index(message_id))
            seen_newer += newer is not None
            seen_merged += bool(merged)

    # Every path was taken: a later message waiting, a turn with merged texts.
    assert seen_newer and seen_merged
