"""An embedded Switchboard with the example tenant ingested once per test module (ingesting takes seconds)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.bootstrap import container
from tests.conftest import REPO, Graph
from tests.fakes.openai_server import openai_server  # noqa: F401  (fixture re-export)

EXAMPLE = REPO / "tenants" / "northwind"
SCALE_OUT_VARS = ("DATABASE_URL", "REDIS_URL", "QDRANT_URL", "S3_BUCKET", "LLM_BASE_URL", "LLM_API_KEY")


@dataclass
class TenantKeys:
    slug: str
    admin: str
    agent: str
    widget: str


@dataclass
class Stack:
    client: TestClient
    home: Path
    northwind: TenantKeys
    other: TenantKeys

    def headers(self, key: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {key}"}

    def visitor(self, tenant: TenantKeys) -> Visitor:
        response = self.client.post(f"/widget/v1/{tenant.widget}/sessions", json={})
        assert response.status_code == 201, response.text
        return Visitor(self.client, tenant.widget, response.json()["token"])


@dataclass
class Visitor:
    client: TestClient
    widget: str
    token: str

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def send(self, text: str, client_message_id: str) -> dict[str, Any]:
        response = self.client.post(f"/widget/v1/{self.widget}/messages", headers=self.auth,
                                    json={"text": text, "client_message_id": client_message_id})
        assert response.status_code == 202, response.text
        return response.json()  # type: ignore[no-any-return]

    def messages(self) -> list[dict[str, Any]]:
        response = self.client.get(f"/widget/v1/{self.widget}/messages", headers=self.auth)
        assert response.status_code == 200, response.text
        return response.json()["messages"]  # type: ignore[no-any-return]

    def wait_for(self, predicate: Callable[[list[dict[str, Any]]], bool], timeout: float = 30) -> list[dict]:
        deadline = time.monotonic() + timeout
        while True:
            messages = self.messages()
            if predicate(messages):
                return messages
            if time.monotonic() > deadline:
                raise AssertionError(f"condition not met; messages: {messages}")
            time.sleep(0.05)


def replies(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [m for m in messages if m["direction"] == "out"]


def wait(what: str, probe: Callable[[], Any], timeout: float = 60) -> Any:
    """`probe()`'s first truthy result, asked every 50 ms; fails after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not (found := probe()):
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} within {timeout} s")
        time.sleep(0.05)
    return found


def child_env(env: dict[str, str]) -> dict[str, str]:
    """The environment of a role process: this one's without its scale-out variables, then `env`."""
    dropped = {*SCALE_OUT_VARS, *(f"SWITCHBOARD_{var}" for var in SCALE_OUT_VARS)}
    return {**{k: v for k, v in os.environ.items() if k not in dropped}, **env}


@pytest.fixture(scope="module")
def stack_settings() -> dict[str, Any]:
    """Settings of the module's embedded stack beyond the defaults (a module overrides this fixture)."""
    return {}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, stack_settings: dict[str, Any]) -> Iterator[Stack]:
    from app import operations
    from app.db import migrate
    from app.main import create_app

    graph = Graph(tmp_path_factory.mktemp("embedded"))
    # Fake LLMs that tenants point at listen on loopback: the operator allows it, as one would a local model.
    graph.configure(outbound_allow_hosts="127.0.0.1", **stack_settings)
    try:
        migrate()
        nw = operations.create_tenant("northwind", folder=EXAMPLE)
        report = operations.ingest(container(), "northwind", [EXAMPLE / "knowledge"])
        assert not report["files_failed"], report
        other = operations.create_tenant("otherbrand", "Other Brand")
        with TestClient(create_app()) as client:  # the lifespan runs the orchestrator threads
            yield Stack(
                client, graph.home,
                TenantKeys("northwind", nw["admin_api_key"], nw["agent_api_key"], nw["widget_id"]),
                TenantKeys("otherbrand", other["admin_api_key"], other["agent_api_key"], other["widget_id"]),
            )
    finally:
        graph.close()
