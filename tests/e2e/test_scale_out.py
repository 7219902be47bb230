"""Scale-out mode: Postgres + Redis Streams + an orchestrator in its own process.

No Qdrant server can be installed on this machine, so the vectors stay in the embedded store, opened only by
the orchestrator process (the API process never touches vectors). A SIGKILLed orchestrator's message is
reclaimed by the next one and answered exactly once.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from app.bootstrap import container
from tests.conftest import REDIS_TEST_URL, REPO, Graph
from tests.e2e.conftest import EXAMPLE, Visitor, child_env, replies, wait


class ScaleOut:
    def __init__(self, home: Path, env: dict[str, str]) -> None:
        self.home = home
        self.env = env
        self.processes: list[subprocess.Popen[bytes]] = []

    def start_orchestrator(self) -> subprocess.Popen[bytes]:
        log = open(self.home / f"orchestrator-{len(self.processes)}.log", "wb")  # noqa: SIM115
        proc = subprocess.Popen([sys.executable, "-m", "app.cli", "orchestrator"], cwd=REPO,
                                env=child_env(self.env), stdout=log, stderr=subprocess.STDOUT)
        self.processes.append(proc)
        return proc

    def logs(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in sorted(self.home.glob("orchestrator-*.log")))

    def stop_all(self) -> None:
        for proc in self.processes:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.processes:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()


@pytest.fixture(scope="module")
def scale_out(tmp_path_factory: pytest.TempPathFactory, pg_url: str) -> Iterator[tuple[ScaleOut, dict]]:
    import uuid

    import redis

    home = tmp_path_factory.mktemp("scaleout")
    namespace = f"sbtest{uuid.uuid4().hex[:8]}"
    env = {
        "SWITCHBOARD_HOME": str(home),
        "DATABASE_URL": pg_url,
        "REDIS_URL": REDIS_TEST_URL,
        "SWITCHBOARD_BUS_NAMESPACE": namespace,
        "SWITCHBOARD_BUS_CLAIM_IDLE_MS": "1500",
        # The fake LLM a tenant points at listens on loopback: the operator allows it, as one would a local model.
        "OUTBOUND_ALLOW_HOSTS": "127.0.0.1",
    }
    from app import operations

    graph = Graph(home)
    graph.configure(**env)  # this process: the role processes' settings, read from no environment
    stack = ScaleOut(home, env)
    try:
        tenant = operations.create_tenant("northwind", folder=EXAMPLE)
        report = operations.ingest(container(), "northwind", [EXAMPLE / "knowledge"])
        assert not report["files_failed"]
        graph.configure()  # releases the embedded vector store: the orchestrator process owns it from now on
        yield stack, tenant
    finally:
        stack.stop_all()
        graph.close()
        client = redis.Redis.from_url(REDIS_TEST_URL)
        keys = list(client.scan_iter(f"{namespace}:*"))
        if keys:
            client.delete(*keys)


@pytest.fixture
def api(scale_out: tuple[ScaleOut, dict]) -> Iterator[TestClient]:
    from app.main import create_app

    with TestClient(create_app()) as client:  # scale-out: no worker threads in the API process
        yield client


def _visitor(api: TestClient, widget: str) -> Visitor:
    return Visitor(api, widget, api.post(f"/widget/v1/{widget}/sessions", json={}).json()["token"])


def test_widget_question_is_answered_by_an_orchestrator_process(scale_out, api) -> None:
    stack, tenant = scale_out
    assert api.app.state.workers is None
    stack.start_orchestrator()
    visitor = _visitor(api, tenant["widget_id"])
    visitor.send("what are your shipping costs for orders under $75?", "s1")
    try:
        reply = replies(visitor.wait_for(lambda ms: bool(replies(ms)), timeout=90))[0]
    except AssertionError:
        raise AssertionError(stack.logs()) from None
    assert {c["document"] for c in reply["citations"]} & {"shipping-policy.md", "faq.csv"}
    stack.stop_all()


def test_sigkilled_orchestrator_message_is_reclaimed_and_answered_once(scale_out, api, openai_server) -> None:
    from app.crypto import encrypt_json
    from app.db import session_scope
    from app.models import Escalation, Message, Tenant

    stack, tenant = scale_out
    with session_scope(cross_tenant="tests") as session:
        row = session.scalars(select(Tenant).where(Tenant.slug == "northwind")).one()
        row.policies = {**row.policies, "llm": {"base_url": openai_server.base_url, "model": "m",
                                                "timeout_s": 120, "max_retries": 0}}
        row.llm_api_key_encrypted = encrypt_json({"api_key": openai_server.api_key})
    openai_server.reply("Gift cards never expire [1].")
    openai_server.then_delay(600, times=1)  # the first orchestrator hangs inside the LLM call, holding the message

    first = stack.start_orchestrator()
    visitor = _visitor(api, tenant["widget_id"])
    sent = visitor.send("do gift cards expire", "k1")
    wait("first orchestrator's LLM call", lambda: len(openai_server.completion_requests) >= 1, timeout=90)
    first.send_signal(signal.SIGKILL)
    first.wait(10)

    stack.start_orchestrator()
    try:
        reply = replies(visitor.wait_for(lambda ms: bool(replies(ms)), timeout=90))[0]
    except AssertionError:
        raise AssertionError(stack.logs()) from None
    with session_scope(cross_tenant="tests") as session:
        escalation = session.scalars(select(Escalation).where(Escalation.message_id == sent["message_id"])).first()
    assert escalation is None, (escalation.reason, escalation.detail, stack.logs())
    assert reply["text"].startswith("Gift cards never expire")
    time.sleep(2)  # give any duplicate processing a chance to show up before counting
    with session_scope(cross_tenant="tests") as session:
        count = session.scalar(select(func.count()).select_from(Message).where(
            Message.in_reply_to_id == sent["message_id"]))
        assert count == 1
        assert session.get_one(Message, sent["message_id"]).status == "answered"
    assert len(openai_server.completion_requests) == 2
