"""The tenant leak suite, a bounded sample (the full run is benchmarks/leak_probes.py): two tenants with data of
every kind; tenant A calls every route of the OpenAPI document, as its admin key, its agent key, a login of each
role and a widget visitor, with B's ids in every path parameter (and in id-like query, header and body fields).
No answer may be a 2xx about B's object, nor carry any canary or id of B. Plus the stream probes (A's console and
widget streams never show B's entries) and a retrieval canary (A's widget never answers with B's passage).
On SQLite and on PostgreSQL."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from app.auth import Viewer
from app.bootstrap import container
from tests.admin.conftest import backend  # noqa: F401  (fixture re-export: sqlite, postgres)
from tests.conftest import Graph
from tests.e2e.sse import EventStream, serve_http
from tests.security import leak_probes as lp

SAMPLE = 60  # probes (every operation once, then a spread), each sent as all 7 principals of A


@pytest.fixture(autouse=True)
def _no_rate_limits(graph: Graph) -> Iterator[None]:
    """Hundreds of refused requests from one address would otherwise end in the (correct) 429 before the
    routes behind it are reached; the limits have their own tests (finding 6)."""
    graph.configure(**{f"rate_{name}": "" for name in (
        "widget_sessions_per_ip", "widget_sends_per_ip", "widget_sends_per_visitor", "auth_failures_per_ip",
        "auth_failures_per_key", "webhook_failures_per_account", "llm_calls_per_tenant",
        "login_failures_per_account", "login_failures_per_ip")})
    logger = logging.getLogger()
    level = logger.level
    logger.setLevel(logging.CRITICAL)  # hundreds of expected 4xx warnings
    yield
    logger.setLevel(level)


@pytest.fixture
def app(graph: Graph, backend: str, request: pytest.FixtureRequest) -> FastAPI:  # noqa: F811
    from app import db
    from app.main import create_app

    if backend == "postgres":
        graph.configure(database_url=request.getfixturevalue("pg_url"))
    db.migrate()
    return create_app(run_workers=False)


@pytest.fixture
def http(app: FastAPI) -> Iterator[httpx.Client]:
    with serve_http(app) as base, httpx.Client(base_url=base, timeout=10) as client:
        yield client


def _view(http: httpx.Client, t: lp.Tenant) -> dict[str, Any]:
    """What B's own admin sees of B (minus the keys' last use, which B's own calls move)."""
    h = {"Authorization": f"Bearer {t.admin}"}
    keys = http.get("/admin/v1/api-keys", headers=h).json()["api_keys"]
    return {
        "tenant": http.get("/admin/v1/tenant", headers=h).json(),
        "keys": [{k: v for k, v in key.items() if k != "last_used_at"} for key in keys],
        "channels": http.get("/admin/v1/channels", headers=h).json(),
        "users": http.get("/admin/v1/users", headers=h).json(),
        "webhook": http.get("/admin/v1/webhook", headers=h).json(),
        "conversations": [http.get(f"/admin/v1/conversations/{c}", headers=h).json()
                          for c in t.ids["conversation"]],
        "escalations": [http.get(f"/review/v1/escalations/{e}", headers=h).json() for e in t.ids["escalation"]],
        "documents": http.get("/admin/v1/knowledge/documents", headers=h).json(),
        "versions": http.get("/admin/v1/knowledge/versions", headers=h).json(),
    }


def test_a_sample_of_every_route_with_every_principal_leaks_nothing_of_another_tenant(
        app: FastAPI, http: httpx.Client) -> None:
    a, b = lp.seed_tenant(http, "alpha"), lp.seed_tenant(http, "beta")
    before = _view(http, b)
    ops = lp.operations(app.openapi())
    probes = lp.sample(list(lp.plan(ops, b, a)), SAMPLE)
    assert {p.op.label for p in probes} == {op.label for op in ops}  # every operation of the document
    tally = lp.Tally()
    lp.run_all(http, probes, a, b, tally)

    assert tally.leaks == [], lp.report(tally)
    assert tally.probes == len(probes) * 7 >= 400
    # The probes reached the routes' tenant checks: most id probes end in "not in this tenant" 404s.
    assert tally.by_status[404] >= 50 and tally.by_status[200] >= 50, lp.report(tally)
    assert tally.by_status[500] == 0, lp.report(tally)
    assert _view(http, b) == before  # and nothing of B changed


def test_the_judge_flags_a_2xx_about_the_victim_and_a_canary_anywhere() -> None:
    op = lp.Operation("GET", "/admin/v1/things/{document_id}", ("document_id",), {}, None, None, False)
    probe = lp.Probe(op, "/admin/v1/things/d1", {}, None, {"d1"}, True)
    assert lp.judge(probe, 200, "{}", {"CANARYx"}) is not None
    assert lp.judge(probe, 404, "no document d1 in this tenant", {"CANARYx", "d1"}) is None
    assert lp.judge(probe, 404, "CANARYx", {"CANARYx"}) is not None
    own = lp.Probe(op, "/admin/v1/things", {}, None, set(), False)
    assert lp.judge(own, 200, '{"things": ["victim-id"]}', {"victim-id"}) is not None


def test_the_suite_catches_a_planted_leak(app: FastAPI, http: httpx.Client) -> None:
    """A route that reads a document by its id alone (no tenant criterion), added to the app: the generated
    probes find it, as every principal that gets past authentication."""
    from app.db import session_scope
    from app.models import Document

    @app.get("/admin/v1/planted/{document_id}")
    def planted(document_id: str, who: Viewer) -> dict[str, str]:
        with session_scope(cross_tenant="tests") as session:
            doc = session.get_one(Document, document_id)  # the bug: no tenant criterion
            return {"title": doc.title}

    app.openapi_schema = None
    a, b = lp.seed_tenant(http, "alpha", conversations=1), lp.seed_tenant(http, "beta", conversations=1)
    ops = [op for op in lp.operations(app.openapi()) if op.path == "/admin/v1/planted/{document_id}"]
    tally = lp.Tally()
    lp.run_all(http, list(lp.plan(ops, b, a)), a, b, tally)
    assert {leak.principal for leak in tally.leaks} == {"admin-key", "agent-key", "login-owner", "login-admin",
                                                        "login-agent", "login-viewer"}, lp.report(tally)


def test_a_route_whose_path_parameter_the_suite_cannot_fill_fails_loudly(app: FastAPI) -> None:
    @app.get("/admin/v1/gadgets/{gadget_id}")
    def gadget(gadget_id: str) -> dict[str, str]:
        return {"id": gadget_id}

    app.openapi_schema = None
    with pytest.raises(lp.Unprobed, match="gadget_id"):
        lp.operations(app.openapi())


def _until(stream: EventStream, predicate: Any, timeout: float = 30) -> list[Any]:
    """Every event up to and including the first that satisfies `predicate`."""
    seen = []
    deadline = time.monotonic() + timeout
    while True:
        event = stream.next(timeout=max(0.1, deadline - time.monotonic()))
        seen.append(event)
        if predicate(event):
            return seen


def _late_escalation(t: lp.Tenant, conversation_id: str, text: str) -> str:
    """An escalated question and the bot's holding reply, as the pipeline writes them, and the wake-ups it sends."""
    from app.bootstrap import container
    from app.conversations.replies import add_outbound
    from app.db import session_scope
    from app.models import Contact, Conversation, Escalation, Message
    from app.review.notify import CONSOLE_KEY

    with session_scope(cross_tenant="tests") as session:
        conversation = session.get_one(Conversation, conversation_id)
        inbound = Message(tenant_id=t.id, conversation_id=conversation.id, channel="webchat", direction="in",
                          provider_message_id=f"late:{uuid.uuid4().hex}", status="escalated", text=text)
        session.add(inbound)
        session.flush()
        session.add(Escalation(tenant_id=t.id, conversation_id=conversation.id, message_id=inbound.id,
                               reason="no_knowledge"))
        add_outbound(session, conversation, key=f"reply:{inbound.id}", text=f"reply to {text}", author="bot",
                     in_reply_to_id=inbound.id)
        visitor = session.get_one(Contact, conversation.contact_id).external_id  # the widget's push key
    container().push.publish(t.id, CONSOLE_KEY)
    container().push.publish(t.id, visitor)
    return inbound.id


def test_tenant_a_streams_never_carry_tenant_b_entries(app: FastAPI, http: httpx.Client) -> None:
    """A's console queue stream and A's widget visitor's stream stay open while B gets a new escalation and a
    reply (on B's visitor's conversation too): neither shows anything of B, and both deliver A's own change
    that follows."""
    a, b = lp.seed_tenant(http, "alpha", conversations=1), lp.seed_tenant(http, "beta", conversations=1)
    base = str(http.base_url).rstrip("/")
    ticket = http.post("/review/v1/events/tickets", headers={"Authorization": f"Bearer {a.admin}"}).json()
    widget_ticket = http.post(f"/widget/v1/{a.widget_id}/events/tickets",
                              headers={"Authorization": f"Bearer {a.visitor}"}).json()
    with EventStream(f"{base}/review/v1/events?ticket={ticket['ticket']}") as console, \
            EventStream(f"{base}/widget/v1/{a.widget_id}/events?ticket={widget_ticket['ticket']}") as widget:
        seen = _until(console, lambda e: e.event == "ready") + _until(widget, lambda e: e.event == "ready")
        b_texts = [b.canary("late") for _ in b.ids["conversation"]]
        b_ids = [_late_escalation(b, c, text) for c, text in zip(b.ids["conversation"], b_texts, strict=True)]
        # A's own change after B's: the streams demonstrably deliver while B's changes go by.
        _late_escalation(a, a.visitor_conversation, "a's own question")
        seen += _until(console, lambda e: e.event == "escalation" and e.data.get("customer_text") == "a's own question")
        seen += _until(widget, lambda e: e.event == "message" and e.data.get("text") == "a's own question")
    secrets = b.secrets() | set(b_ids) | set(b_texts)
    assert not [s for s in secrets if any(s in repr(e.data) for e in seen)], seen


def test_a_question_whose_only_matching_passage_is_another_tenants_gets_none_of_its_text(
        sb_home: Path, tmp_path: Path) -> None:
    """Retrieval canary: B's pack holds the only passage about a made-up product, with a canary; A's pack is
    about something else. A's widget visitor asks about B's product: the answer carries no B text and cites no B
    document, and A's retrieval returns none of B's chunks; B's own visitor, asking the same, gets the passage
    (the question does match it)."""
    from fastapi.testclient import TestClient

    from app import operations
    from app.db import migrate
    from app.main import create_app

    migrate()
    canary = f"ZX{uuid.uuid4().hex[:10].upper()}"
    question = "What is the warranty claim code for the Quillfeather zorbulator?"
    for slug, name, text in (
        ("leak-a", "shipping.md", "# Shipping\n\nOrders ship within two business days. Delivery takes three to five "
                                  "days by standard post; express delivery takes one day."),
        ("leak-b", "zorbulator.md", f"# Quillfeather zorbulator warranty\n\nThe warranty claim code for the "
                                    f"Quillfeather zorbulator is {canary}. Quote it to claim a zorbulator repair."),
    ):
        operations.create_tenant(slug, slug.upper())
        folder = tmp_path / slug
        folder.mkdir()
        (folder / name).write_text(text)
        report = operations.ingest(container(), slug, [folder])
        assert not report["files_failed"], report
    ids = {slug: _tenant_id(slug) for slug in ("leak-a", "leak-b")}
    assert all(canary not in p.text for p in container().retriever(ids["leak-a"], question, top_k=20))
    assert any(canary in p.text for p in container().retriever(ids["leak-b"], question, top_k=20))

    with TestClient(create_app()) as client:  # the lifespan runs the orchestrator
        def ask(slug: str) -> dict[str, Any]:
            widget = _widget(slug)
            token = client.post(f"/widget/v1/{widget}/sessions", json={}).json()["token"]
            auth = {"Authorization": f"Bearer {token}"}
            assert client.post(f"/widget/v1/{widget}/messages", headers=auth,
                               json={"text": question, "client_message_id": "q1"}).status_code == 202
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                out = [m for m in client.get(f"/widget/v1/{widget}/messages", headers=auth).json()["messages"]
                       if m["direction"] == "out"]
                if out:
                    return out[0]
                time.sleep(0.1)
            raise AssertionError(f"{slug}: no reply within 60 s")

        a_reply, b_reply = ask("leak-a"), ask("leak-b")
    assert canary not in a_reply["text"] and "zorbulator" not in a_reply["text"].lower(), a_reply
    assert not [c for c in a_reply["citations"] or [] if c.get("document") == "zorbulator.md"], a_reply
    assert canary in b_reply["text"], b_reply  # the control: the question does find the passage in B


def _tenant_id(slug: str) -> str:
    from sqlalchemy import select

    from app.db import session_scope
    from app.models import Tenant

    with session_scope(cross_tenant="tests") as session:
        return session.scalars(select(Tenant.id).where(Tenant.slug == slug)).one()


def _widget(slug: str) -> str:
    from sqlalchemy import select

    from app.db import session_scope
    from app.models import ChannelAccount, Tenant

    with session_scope(cross_tenant="tests") as session:
        return session.scalars(select(ChannelAccount.external_id).join(Tenant, Tenant.id == ChannelAccount.tenant_id)
                               .where(Tenant.slug == slug, ChannelAccount.channel == "webchat")).one()


def test_adding_a_person_by_email_does_not_tell_whether_another_tenant_has_them(http: httpx.Client) -> None:
    """A's admin adds B's owner's email: the answer (an invitation) is the same as for an email without an
    account, and carries nothing of B. (It used to be 201 `new_account: false` with the account's id, against a
    422 asking for a password for an unknown email.)"""
    a, b = lp.seed_tenant(http, "alpha", conversations=1), lp.seed_tenant(http, "beta", conversations=1)
    admin = {"Authorization": f"Bearer {a.admin}"}
    known = http.post("/admin/v1/users", headers=admin, json={"email": b.emails["owner"], "role": "viewer"})
    unknown = http.post("/admin/v1/users", headers=admin, json={"email": "nobody-new@example.com", "role": "viewer"})
    assert known.status_code == unknown.status_code
    assert not [s for s in b.secrets() if s in known.text]
