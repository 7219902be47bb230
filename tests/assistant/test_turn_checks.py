"""The orchestrator's one-statement forms of the turn checks give what the separate queries give: the context
read's `newer_pending` and `merged_before` columns (app/assistant/orchestrator.py `_LOAD`) and the outcome's
claim-and-set (app/assistant/outcomes.py `claim_as`, against `claim` then `_set_status`), for every message of
conversations in every state a turn can be in; and the history read (no expanding NOT IN) against a plain query;
on SQLite and on Postgres."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from sqlalchemy import select, update

from app.assistant import outcomes
from app.assistant.orchestrator import _LOAD
from app.assistant.turns import merged_into, newer_pending
from app.bootstrap import container
from app.conversations.service import accept_inbound, history
from app.db import open_session, session_scope
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


def _context(tenant_id: str, message_id: str) -> outcomes.Context:
    with session_scope(tenant=tenant_id) as session:
        message = session.get_one(Message, message_id)
        return outcomes.Context(message_id=message_id, tenant_id=tenant_id, conversation_id=message.conversation_id,
                                mode="bot", persona={}, policies={}, llm=None, history=[], pack_version=None,
                                received_at=message.created_at)


def _claimed(tenant_id: str, ids: list[str], message_id: str, one_statement: bool) -> tuple[Any, ...]:
    """What claiming `message_id` as answered returns and leaves (statuses, metas), rolled back afterwards."""
    ctx = _context(tenant_id, message_id)
    session = open_session(tenant=tenant_id)
    try:
        if one_statement:
            to = outcomes.claim_as(session, ctx, "answered")
        else:
            to = outcomes.claim(session, ctx)
            if to is not None:
                outcomes._set_status(session, ctx, "answered")
        rows = session.execute(select(Message.id, Message.status, Message.meta, Message.processed_at)
                               .where(Message.id.in_(ids))).all()
        return to, sorted((r.id, r.status, r.meta, r.id == message_id and r.processed_at is not None) for r in rows)
    finally:
        session.rollback()
        session.close()


def test_the_folded_turn_checks_match_the_separate_queries(tenant: str) -> None:
    seen_newer = seen_merged = seen_merge = seen_claim = 0
    for statuses in CONVERSATIONS:
        ids = _conversation(tenant, statuses)
        for message_id in ids:
            with session_scope(tenant=tenant) as session:
                row = session.execute(_LOAD, {"message": message_id, "tenant": tenant}).one()
                newer = newer_pending(session, tenant, row.conversation_id, row.created_at)
                merged = merged_into(session, tenant, row.conversation_id, row.id, row.created_at)
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

            folded, separate = (_claimed(tenant, ids, message_id, one) for one in (True, False))
            assert folded == separate, (statuses, ids.index(message_id))
            seen_claim += folded[0] is not None
            seen_merge += statuses[ids.index(message_id)] == "received" and any(
                status == "merged" and message_id == mid for mid, status, *_ in folded[1])
    # Every path was taken: a later message waiting, a turn with merged texts, a claim, a merge at the claim.
    assert seen_newer and seen_merged and seen_claim and seen_merge
