"""Issue 12, GDPR: a contact's data exported, erased (nothing of theirs left in any table, object, bus entry or
log line written afterwards), and their consent honoured (an opted-out contact is sent nothing but the
confirmation). Through the admin API of the embedded stack, on real conversations."""

from __future__ import annotations

import logging
import time
from typing import Any

import pytest
from sqlalchemy import String, Text, inspect, select, text

from tests.e2e.conftest import Stack, Visitor, replies

EMAIL = "maria.lindqvist@example.org"
PHONE = "+46 70 123 45 67"
QUESTION = f"How long do I have to return something? Write to {EMAIL} or call {PHONE}, order 771-XQ."
HUMAN = "I want to talk to a real person about parcel 9QZ-THREE please"


def _converse(stack: Stack, question: str = QUESTION, human: str = HUMAN) -> tuple[Visitor, str]:
    visitor = stack.visitor(stack.northwind)
    visitor.send(question, "c1")
    visitor.wait_for(lambda ms: len(replies(ms)) >= 1, timeout=60)
    visitor.send(human, "c2")
    visitor.wait_for(lambda ms: len(replies(ms)) >= 2, timeout=60)
    admin = stack.headers(stack.northwind.admin)
    found = stack.client.get("/admin/v1/conversations", headers=admin, params={"channel": "webchat"}).json()
    contact_ids = {c["contact"]["id"] for c in found["conversations"]}
    mine = [c for c in found["conversations"] if c["contact"]["external_id"] == _external_id(stack, visitor)]
    assert len(mine) == 1 and mine[0]["contact"]["id"] in contact_ids
    return visitor, mine[0]["contact"]["id"]


def _external_id(stack: Stack, visitor: Visitor) -> str:
    from gateways.webchat import sessions

    return sessions.verify(visitor.widget, visitor.token).contact_id


def _every_stored_string() -> list[tuple[str, str, str]]:
    """(table, column, value) for every text-like column of every table, JSON columns as their text."""
    from app.db import get_engine

    engine = get_engine()
    found = []
    with engine.connect() as connection:
        for table in inspect(engine).get_table_names():
            for column in inspect(engine).get_columns(table):
                kind = column["type"]
                if isinstance(kind, (String, Text)) or "JSON" in type(kind).__name__.upper():
                    rows = connection.execute(text(f'SELECT CAST("{column["name"]}" AS TEXT) FROM "{table}"'))
                    found += [(table, column["name"], v) for (v,) in rows if v]
    return found


def _bus_strings(stack: Stack) -> list[str]:
    from app.bootstrap import container
    from app.bus.memory import MemoryBus

    bus = container().bus
    assert isinstance(bus, MemoryBus)
    out = []
    for streams in bus._streams.values():
        for stream in streams.values():
            out += [value for fields in stream.entries.values() for value in fields.values()]
    for letters in bus._dead.values():
        out += [str(letter.fields) for letter in letters]
    return out


def _cached_questions(slug: str) -> list[object]:
    """The tenant's entries in the process's query-embedding cache (vectors of its customers' questions)."""
    from app.bootstrap import container
    from app.db import session_scope
    from app.models import Tenant

    with session_scope(cross_tenant="tests") as session:
        tenant_id = session.scalars(select(Tenant.id).where(Tenant.slug == slug)).one()
    cache = container().retriever.query_cache
    assert cache is not None
    return [key for key in cache._entries if key[0] == tenant_id]


def _needles(external_id: str) -> list[str]:
    return [EMAIL, PHONE, "771-XQ", "parcel 9QZ-THREE", external_id]


def test_export_then_erase_leaves_nothing_of_the_contact(stack: Stack, caplog: pytest.LogCaptureFixture) -> None:
    admin = stack.headers(stack.northwind.admin)
    visitor, contact_id = _converse(stack)
    external_id = _external_id(stack, visitor)
    # Another customer of the same tenant: untouched.
    other, other_id = _converse(stack, "Can I return a gift without the receipt?", "Can I speak to an agent?")

    exported = stack.client.get(f"/admin/v1/contacts/{contact_id}/export", headers=admin)
    assert exported.status_code == 200, exported.text
    data = exported.json()
    assert data["contact"]["id"] == contact_id and data["contact"]["external_id"] == external_id
    texts = [m["text"] for c in data["conversations"] for m in c["messages"]]
    assert QUESTION in texts and HUMAN in texts and len(texts) >= 4  # theirs and the bot's, unmasked
    assert [e["reason"] for e in data["escalations"]] == ["human_requested"]
    assert data["audit_events"] and data["files"] == []
    # By the channel's id too; other tenants and agents cannot.
    assert stack.client.get(f"/admin/v1/contacts/{external_id}/export", headers=admin).json()["contact"]["id"] \
        == contact_id
    assert stack.client.get(f"/admin/v1/contacts/{contact_id}/export",
                            headers=stack.headers(stack.other.admin)).status_code == 404
    assert stack.client.get(f"/admin/v1/contacts/{contact_id}/export",
                            headers=stack.headers(stack.northwind.agent)).status_code == 403
    assert stack.client.delete(f"/admin/v1/contacts/{contact_id}",
                               headers=stack.headers(stack.other.admin)).status_code == 404

    # Before: the needles are stored (so the search below can find them).
    before = " ".join(v for _, _, v in _every_stored_string())
    assert all(n in before for n in _needles(external_id))
    assert any(EMAIL in s for s in _bus_strings(stack))
    assert _cached_questions("northwind")

    caplog.clear()
    caplog.set_level(logging.DEBUG)
    erased = stack.client.delete(f"/admin/v1/contacts/{contact_id}", headers=admin)
    assert erased.status_code == 200, erased.text
    counts = erased.json()
    assert counts["contact_id"] == contact_id and counts["messages"] >= 4 and counts["conversations"] == 1
    assert counts["escalations"] == 1 and counts["bus_entries"] >= 2

    leftovers = [(t, c) for t, c, v in _every_stored_string() for n in _needles(external_id) if n in v]
    assert leftovers == []
    assert [s for s in _bus_strings(stack) if any(n in s for n in _needles(external_id))] == []
    objects = [p for p in (stack.home / "objects").rglob("*") if p.is_file()]
    assert [p for p in objects if any(n.encode() in p.read_bytes() for n in _needles(external_id))] == []
    assert _cached_questions("northwind") == []  # their questions' embeddings went with them
    other.send("And one more question about returns?", "c3")  # life goes on: more log lines after the erase
    other.wait_for(lambda ms: len(replies(ms)) >= 3, timeout=60)
    logged = "\n".join(r.getMessage() + str(r.__dict__) for r in caplog.records)
    assert not any(n in logged for n in _needles(external_id))

    # The tombstone: counts only.
    from app.db import session_scope
    from app.models import AuditEvent, Contact

    with session_scope(cross_tenant="tests") as session:
        (tomb,) = session.scalars(select(AuditEvent).where(AuditEvent.action == "contact.erased",
                                                           AuditEvent.subject_id == contact_id))
        assert tomb.data["messages"] == counts["messages"] and tomb.data["channel"] == "webchat"
        assert session.get(Contact, other_id) is not None
    assert stack.client.get(f"/admin/v1/contacts/{contact_id}/export", headers=admin).status_code == 404
    again = stack.client.delete(f"/admin/v1/contacts/{contact_id}", headers=admin)
    assert again.status_code == 404 and "no contact" in again.json()["detail"]
    # The other customer's conversation is whole.
    assert "Can I return a gift without the receipt?" in [m["text"] for m in other.messages()]


def _contact(stack: Stack, visitor: Visitor) -> dict[str, Any]:
    admin = stack.headers(stack.northwind.admin)
    data = stack.client.get(f"/admin/v1/contacts/{_external_id(stack, visitor)}/export", headers=admin)
    assert data.status_code == 200, data.text
    return data.json()


def test_stop_opts_out_and_nothing_but_the_confirmation_is_sent(stack: Stack) -> None:
    visitor = stack.visitor(stack.northwind)
    visitor.send("How long do I have to return something?", "s1")
    visitor.wait_for(lambda ms: len(replies(ms)) == 1, timeout=60)
    visitor.send("STOP", "s2")
    messages = visitor.wait_for(lambda ms: len(replies(ms)) == 2, timeout=60)
    assert "unsubscribed" in replies(messages)[-1]["text"]
    assert _contact(stack, visitor)["contact"]["consent"]["status"] == "withdrawn"

    # Opted out: a question is stored and skipped (no answer, no escalation notice), and an agent's message is
    # refused by the dispatcher.
    visitor.send("I want to talk to a real person", "s3")
    from app.db import session_scope
    from app.models import Message

    def status_of(text_: str) -> str | None:
        with session_scope(cross_tenant="tests") as session:
            return session.scalars(select(Message.status).where(Message.text == text_)).first()

    deadline = time.monotonic() + 60
    while status_of("I want to talk to a real person") == "received":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert status_of("I want to talk to a real person") == "skipped"
    assert len(replies(visitor.messages())) == 2
    assert _contact(stack, visitor)["escalations"] == []

    # START opts back in, with its confirmation, and answers flow again.
    visitor.send("start", "s4")
    visitor.wait_for(lambda ms: len(replies(ms)) == 3, timeout=60)
    assert _contact(stack, visitor)["contact"]["consent"]["status"] == "granted"
    visitor.send("How long do I have to return something?", "s5")
    visitor.wait_for(lambda ms: len(replies(ms)) == 4, timeout=60)


def test_admins_set_consent_and_the_dispatcher_refuses_to_send(stack: Stack) -> None:
    admin = stack.headers(stack.northwind.admin)
    visitor = stack.visitor(stack.northwind)
    visitor.send("How long do I have to return something?", "a1")
    visitor.wait_for(lambda ms: len(replies(ms)) == 1, timeout=60)
    contact_id = _contact(stack, visitor)["contact"]["id"]
    response = stack.client.put(f"/admin/v1/contacts/{contact_id}/consent", headers=admin,
                                json={"status": "withdrawn"})
    assert response.status_code == 200 and response.json()["status"] == "withdrawn", response.text
    assert response.json()["source"].startswith("key:")
    bad = stack.client.put(f"/admin/v1/contacts/{contact_id}/consent", headers=admin, json={"status": "maybe"})
    assert bad.status_code == 422

    from app.bootstrap import container
    from app.conversations.replies import ReplyTo, store_reply
    from app.db import session_scope
    from app.models import Conversation, Message

    with session_scope(cross_tenant="tests") as session:
        conversation = session.scalars(select(Conversation).where(Conversation.contact_id == contact_id)).one()
        event = store_reply(session, ReplyTo(conversation.tenant_id, conversation.id, "webchat", None),
                            key="agent:late-note", text="A late note from an agent", author="agent:ana").event
    from app.conversations.replies import publish_outbound

    publish_outbound(container().bus, event)
    deadline = time.monotonic() + 60
    while True:
        with session_scope(cross_tenant="tests") as session:
            row = session.get_one(Message, event.message_id)
            if row.status != "pending":
                break
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert row.status == "failed" and "opted out" in (row.error or "")
    assert "A late note from an agent" not in [m["text"] for m in visitor.messages()]
