"""Admin API fixtures: an app on a fresh embedded home (SQLite, or Postgres with `backend="postgres"`), two
tenants with their keys, and tenant A's conversations written the way the pipeline writes them."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from fastapi.testclient import TestClient

from tests.conftest import Graph


@dataclass
class TenantKeys:
    id: str
    slug: str
    admin: str
    agent: str
    widget_id: str

    def headers(self, scope: str = "admin") -> dict[str, str]:
        return {"Authorization": f"Bearer {self.admin if scope == 'admin' else self.agent}"}


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def backend(request: pytest.FixtureRequest) -> str:
    return request.param  # type: ignore[no-any-return]


@pytest.fixture
def client(graph: Graph, backend: str, request: pytest.FixtureRequest) -> Iterator[TestClient]:
    from app import db

    if backend == "postgres":
        graph.configure(database_url=request.getfixturevalue("pg_url"))
    db.migrate()
    from app.main import create_app

    with TestClient(create_app(run_workers=False)) as test_client:
        yield test_client


def _tenant(prefix: str) -> TenantKeys:
    from app.db import session_scope
    from app.tenants.service import create_tenant

    slug = f"{prefix}-{uuid.uuid4().hex[:8]}"
    with session_scope(cross_tenant="tests") as session:
        new = create_tenant(session, slug, name=prefix.upper())
        tenant_id = new.tenant.id
    return TenantKeys(tenant_id, slug, new.admin_api_key, new.agent_api_key, new.widget_id)


@pytest.fixture
def tenant_a(client: TestClient) -> TenantKeys:
    return _tenant("alpha")


@pytest.fixture
def tenant_b(client: TestClient) -> TenantKeys:
    return _tenant("beta")


@dataclass
class Seeded:
    conversation_id: str
    contact_external_id: str
    message_ids: list[str]
    document_id: str


def seed_conversation(tenant_id: str, contact: str = "v_alice", n_turns: int = 2, *, escalate: bool = False) -> str:
    """A web-chat conversation with `n_turns` question/answer pairs (answers cite a document)."""
    from app.conversations.replies import add_outbound
    from app.db import session_scope
    from app.models import Escalation, Message
    from tests.factories import get_or_create_contact, get_or_create_conversation

    with session_scope(cross_tenant="tests") as session:
        who = get_or_create_contact(session, tenant_id, "webchat", contact, "Alice")
        conversation = get_or_create_conversation(session, tenant_id, who, None)
        last = None
        for i in range(n_turns):
            inbound = Message(tenant_id=tenant_id, conversation_id=conversation.id, channel="webchat",
                              direction="in", provider_message_id=f"{contact}:q{i}", text=f"question {i}",
                              status="answered")
            session.add(inbound)
            session.flush()
            add_outbound(session, conversation, key=f"reply:{inbound.id}", text=f"answer {i} [1]", author="bot",
                         in_reply_to_id=inbound.id,
                         citations=[{"document": "faq.csv", "chunk_id": f"c{i}", "score": 0.8}])
            last = inbound
        if escalate and last is not None:
            session.add(Escalation(tenant_id=tenant_id, conversation_id=conversation.id, message_id=last.id,
                                   reason="no_knowledge"))
        return conversation.id


def seed_document(tenant_id: str, path: str = "faq.csv") -> str:
    """Document and chunk rows as the ingester writes them (no vectors)."""
    from app.db import session_scope
    from app.models import Chunk, Document

    with session_scope(cross_tenant="tests") as session:
        doc = Document(tenant_id=tenant_id, path=path, title=path, kind="faq", content_hash="0" * 64)
        session.add(doc)
        session.flush()
        for i in range(3):
            session.add(Chunk(id=str(uuid.uuid4()), tenant_id=tenant_id, document_id=doc.id, ordinal=i,
                              text=f"chunk {i}"))
        return doc.id


@pytest.fixture
def seeded_a(tenant_a: TenantKeys) -> Seeded:
    from app.db import session_scope
    from app.models import Message

    conversation_id = seed_conversation(tenant_a.id)
    with session_scope(cross_tenant="tests") as session:
        ids = [m.id for m in session.query(Message).filter(Message.conversation_id == conversation_id)]
    return Seeded(conversation_id, "v_alice", ids, seed_document(tenant_a.id))
