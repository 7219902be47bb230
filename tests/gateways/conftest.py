"""One embedded Switchboard (SQLite + in-process bus) per test module, with helpers to sign provider requests."""

from __future__ import annotations

import hashlib
import hmac
import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import delete, select

from tests.conftest import SHARED_DATA, Graph

WEBHOOKS = SHARED_DATA / "webhooks"


@dataclass
class Gateway:
    client: TestClient
    home: Path

    def tenant(self, slug: str | None = None) -> str:
        from app.db import session_scope
        from app.tenants.service import create_tenant

        with session_scope(cross_tenant="tests") as session:
            return create_tenant(session, slug or f"t-{uuid.uuid4().hex[:8]}").tenant.id

    def account(self, tenant_id: str, channel: str, external_id: str, credentials: dict[str, Any],
                config: dict[str, Any] | None = None) -> str:
        from app.bootstrap import container
        from app.db import session_scope
        from gateways.accounts import add_channel_account

        with session_scope(cross_tenant="tests") as session:
            return add_channel_account(session, container().channels, tenant_id, channel, external_id,
                                       credentials=credentials,
                                       config=config).id

    def inbound(self, **where: Any) -> list[Any]:
        from app.db import session_scope
        from app.models import Message

        with session_scope(cross_tenant="tests") as session:
            stmt = select(Message).where(Message.direction == "in")
            for key, value in where.items():
                stmt = stmt.where(getattr(Message, key) == value)
            rows = session.scalars(stmt.order_by(Message.created_at)).all()
            session.expunge_all()
            return list(rows)

    def bus_entries(self, tenant_id: str) -> list[dict[str, Any]]:
        """The InboundMessage events published for a tenant, decoded."""
        from app.bootstrap import container
        from app.bus.memory import MemoryBus

        bus = container().bus
        assert isinstance(bus, MemoryBus)
        n = bus.stream_length("inbound", tenant_id)
        group = f"probe-{uuid.uuid4().hex[:6]}"
        bus.ensure_group("inbound", group)
        got: list[dict[str, Any]] = []
        while len(got) < n:
            batch = bus.read("inbound", group, "probe", count=100, block_ms=0)
            if not batch:
                break
            got += [json.loads(d.fields["body"]) for d in batch if d.tenant_id == tenant_id]
        return got

    def wipe_messages(self) -> None:
        from app.db import session_scope
        from app.models import Contact, Conversation, Message

        with session_scope(cross_tenant="tests") as session:
            for model in (Message, Conversation, Contact):
                session.execute(delete(model))


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    from app.db import migrate
    from app.main import create_app

    graph = Graph(tmp_path_factory.mktemp("sbhome"))
    graph.configure(public_base_url="https://sb.example.com")
    migrate()
    try:
        with TestClient(create_app(run_workers=False)) as client:
            yield Gateway(client, graph.home)
    finally:
        graph.close()


def meta_signature(secret: str, raw: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), raw, hashlib.sha256).hexdigest()
