"""One trace per message across processes: a Telegram webhook enters a `switchboard gateway telegram` process, the
answer is decided and sent by a `switchboard orchestrator` process, the two meet only on Redis Streams and
Postgres, and each exports its spans over OTLP/HTTP (OTEL_EXPORTER_OTLP_ENDPOINT) to a fake collector that decodes
the protobuf export. The spans of both processes form one trace: webhook -> intake -> publish (gateway) ->
process -> orchestrate -> ... -> dispatch -> the provider send (orchestrator), each the child of the one before."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from fastapi.testclient import TestClient

from tests.conftest import REDIS_TEST_URL, REPO, Graph
from tests.e2e.conftest import child_env
from tests.fakes.fake_telegram import FakeTelegram
from tests.fakes.otlp_collector import FakeCollector, Span
from tests.traces import ancestry, one

GATEWAY = "switchboard-gateway-telegram"
ORCHESTRATOR = "switchboard-orchestrator"
WEBHOOK = "POST /webhooks/telegram/{bot_id}"  # the route template, never the raw path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Roles:
    """The role processes, started as an operator would (`python -m app.cli ...`), logs kept for failures."""

    def __init__(self, home: Path, env: dict[str, str]) -> None:
        self.home, self.env = home, env
        self.processes: list[subprocess.Popen[bytes]] = []

    def start(self, *args: str) -> subprocess.Popen[bytes]:
        log = open(self.home / f"{args[0]}-{len(self.processes)}.log", "wb")  # noqa: SIM115
        proc = subprocess.Popen([sys.executable, "-m", "app.cli", *args], cwd=REPO, env=child_env(self.env),
                                stdout=log, stderr=subprocess.STDOUT)
        self.processes.append(proc)
        return proc

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')}" for p in sorted(self.home.glob("*.log")))

    def stop(self) -> None:
        for proc in self.processes:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.processes:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()


@pytest.fixture
def stack(tmp_path: Path, pg_url: str, otlp_collector: FakeCollector) -> Iterator[dict[str, Any]]:
    import redis

    namespace = f"sbtest{uuid.uuid4().hex[:8]}"
    env = {"SWITCHBOARD_HOME": str(tmp_path), "DATABASE_URL": pg_url, "REDIS_URL": REDIS_TEST_URL,
           "SWITCHBOARD_BUS_NAMESPACE": namespace, "OUTBOUND_ALLOW_HOSTS": "127.0.0.1"}
    from app import operations
    from app.main import create_app

    graph = Graph(tmp_path)
    graph.configure(**env)  # this process sets the tenant up; tracing stays off here (no OTEL_* in it)
    fake = FakeTelegram()
    roles = Roles(tmp_path, {**env, "OTEL_EXPORTER_OTLP_ENDPOINT": otlp_collector.url,
                             "OTEL_BSP_SCHEDULE_DELAY": "200"})
    try:
        slug = f"traced{uuid.uuid4().hex[:6]}"
        tenant = operations.create_tenant(slug)
        admin = {"Authorization": f"Bearer {tenant['admin_api_key']}"}
        with TestClient(create_app()) as api:
            schemas = api.get("/openapi.json").json()["components"]["schemas"]
            (body,) = [s["examples"][0] for name, s in schemas.items()
                       if name.endswith("ChannelIn") and s["examples"][0]["channel"] == "telegram"]
            bot = str(7_000_000_000 + uuid.uuid4().int % 10**9)  # a bot of this test's own (ids are unique)
            body = {**body, "external_id": bot, "credentials": {"bot_token": f"{bot}:AAH-test-token"},
                    "config": {"api_base_url": fake.url}}
            created = api.post("/admin/v1/channels", headers=admin, json=body)
            assert created.status_code == 201, created.text
            account = created.json()
        graph.close()  # the role processes own the services from here on
        port = _free_port()
        roles.start("gateway", "telegram", "--port", str(port))
        roles.start("orchestrator")
        gateway = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{gateway}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or any(p.poll() is not None for p in roles.processes):
                raise AssertionError(f"the gateway did not start\n{roles.logs()}")
            time.sleep(0.1)
        yield {"gateway": gateway, "path": urlsplit(account["webhook_url"]).path, "slug": slug, "fake": fake,
               "secret": account["setup"]["secret_token"], "roles": roles, "collector": otlp_collector}
    finally:
        roles.stop()
        fake.close()
        graph.close()
        client = redis.Redis.from_url(REDIS_TEST_URL)
        keys = list(client.scan_iter(f"{namespace}:*"))
        if keys:
            client.delete(*keys)
        client.close()


def test_a_webhook_and_its_reply_are_one_trace_across_the_gateway_and_orchestrator_processes(stack) -> None:
    fake, roles, collector = stack["fake"], stack["roles"], stack["collector"]
    update = {"update_id": 1, "message": {"message_id": 7, "date": int(time.time()),
                                          "text": "I want to talk to a real person please",
                                          "chat": {"id": 7300912345, "type": "private"},
                                          "from": {"id": 7300912345, "is_bot": False, "first_name": "Ana"}}}
    response = httpx.post(stack["gateway"] + stack["path"], json=update, timeout=30,
                          headers={"X-Telegram-Bot-Api-Secret-Token": stack["secret"]})
    assert response.status_code == 200 and response.json()["accepted"] == 1, response.text
    deadline = time.monotonic() + 90
    while not fake.texts():  # the holding notice of the escalation, sent by the orchestrator process
        if time.monotonic() > deadline:
            raise AssertionError(f"no Telegram send\n{roles.logs()}")
        time.sleep(0.1)

    # Every span of the chain must have arrived: a child ends (and may be exported) before its parent does.
    chain = [WEBHOOK, "intake", "publish inbound",  # the gateway process
             "process inbound", "orchestrate", "record escalation", "publish outbound",  # the orchestrator process
             "process outbound", "dispatch", "send telegram", "telegram send part"]

    def complete(spans: list[Span]) -> bool:
        return {*chain, "guardrails"} <= {s.name for s in spans}

    try:
        spans = collector.wait_for(complete, timeout=60)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{roles.logs()}") from None
    part = one(spans, "telegram send part")
    trace = [s for s in spans if s.trace_id == part.trace_id]
    assert ancestry(trace, part) == chain
    webhook = one(trace, WEBHOOK)
    assert webhook.kind == "server" and not webhook.parent_id
    by_name = {s.name: s for s in trace}
    for name in (WEBHOOK, "intake", "publish inbound"):
        assert by_name[name].service == GATEWAY, name
    for name in ("process inbound", "orchestrate", "guardrails", "dispatch", "send telegram", "telegram send part"):
        assert by_name[name].service == ORCHESTRATOR, name
    assert {s.service for s in trace} == {GATEWAY, ORCHESTRATOR}
    orchestrate = by_name["orchestrate"]
    assert orchestrate.attributes["switchboard.outcome"] == "escalated"
    assert orchestrate.attributes["switchboard.escalation.reason"] == "human_requested"
    assert orchestrate.attributes["switchboard.tenant.slug"] == stack["slug"]
    assert orchestrate.attributes["switchboard.channel"] == "telegram"
    assert by_name["guardrails"].parent_id == orchestrate.span_id
    assert by_name["dispatch"].attributes["switchboard.outcome"] == "sent"
    assert webhook.attributes["http.response.status_code"] == 200
    assert webhook.attributes["switchboard.tenant.id"] == orchestrate.attributes["switchboard.tenant.id"]
    text = str([s.attributes for s in spans])
    # a long chat id: a short one turns up inside random hex ids (a 4-digit one failed CI once)
    assert "real person" not in text and "7300912345" not in text and "Ana" not in text  # no text, no customer ids
