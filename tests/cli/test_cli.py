"""The `switchboard` command as users and scripts run it: real processes, embedded mode, JSON contracts."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cli_support import embedded_env, free_port, run, serving
from tests.conftest import REPO

KNOWLEDGE = REPO / "tenants" / "northwind" / "knowledge"




@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("clihome")




def test_tenant_create_prints_the_documented_json(home: Path) -> None:
    result = run(home, "tenant", "create", "acme", "--name", "Acme", "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert set(data) == {"tenant", "admin_api_key", "agent_api_key"}
    assert data["tenant"] == "acme" and data["admin_api_key"].startswith("sb_")
    again = run(home, "tenant", "create", "acme", "--json")
    assert again.returncode != 0 and "already exists" in again.stderr
    bad = run(home, "tenant", "create", "Not A Slug", "--json")
    assert bad.returncode != 0 and "invalid tenant slug" in bad.stderr


def test_ingest_json_summary_and_per_file_failures(home: Path, tmp_path: Path) -> None:
    result = run(home, "ingest", "--tenant", "acme", str(KNOWLEDGE), "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["documents"] == 6 and summary["chunks"] > 50 and summary["files_failed"] == []

    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    failed = run(home, "ingest", "--tenant", "acme", str(broken), "--json")
    assert failed.returncode == 1
    report = json.loads(failed.stdout)
    assert report["files_failed"][0]["file"].endswith("broken.json") and report["files_failed"][0]["reason"]

    unknown = run(home, "ingest", "--tenant", "nobody", str(KNOWLEDGE))
    assert unknown.returncode != 0 and "no tenant 'nobody'" in unknown.stderr


def test_chat_json_answers_with_citations_and_escalates_the_unanswerable(home: Path) -> None:
    result = run(home, "chat", "--tenant", "acme", "--message", "What is your return policy?", "--json")
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    assert set(answer) == {"status", "text", "citations", "escalation_id", "reason"}
    assert answer["status"] == "answered" and answer["escalation_id"] is None and answer["reason"] is None
    assert answer["citations"] and set(answer["citations"][0]) == {"document", "chunk_id", "score"}
    assert {c["document"] for c in answer["citations"]} & {"faq.csv", "returns-and-refunds.md"}

    result = run(home, "chat", "--tenant", "acme", "--contact", "c2", "--message",
                 "can i rent a canoe from you for the weekend", "--json")
    escalated = json.loads(result.stdout)
    assert escalated["status"] == "escalated" and escalated["escalation_id"]
    assert escalated["reason"] == "no_knowledge"


def test_chat_json_prints_the_reason_of_a_language_escalation(home: Path) -> None:
    """No LLM here: a Spanish question is acknowledged in Spanish and escalated with reason `language`."""
    result = run(home, "chat", "--tenant", "acme", "--contact", "c3", "--message",
                 "¿cuánto tardan los reembolsos?", "--json")
    assert result.returncode == 0, result.stderr
    escalated = json.loads(result.stdout)
    assert escalated["status"] == "escalated" and escalated["reason"] == "language" and escalated["escalation_id"]
    assert "español" in escalated["text"]


@pytest.fixture
def server(home: Path) -> Iterator[str]:
    with serving(home) as url:
        yield url
    assert not (home / "server.json").exists()


def test_chat_and_ingest_work_while_serve_holds_the_embedded_store(home: Path, server: str, tmp_path: Path) -> None:
    faq = tmp_path / "extra.csv"
    faq.write_text("question,answer\nDo you sell canoes?,No. We sell paddles and PFDs but not canoes.\n")
    ingested = run(home, "ingest", "--tenant", "acme", str(faq), "--json")
    assert ingested.returncode == 0, ingested.stderr
    assert json.loads(ingested.stdout)["chunks"] == 1

    result = run(home, "chat", "--tenant", "acme", "--message", "do you sell canoes?", "--json")
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    assert answer["status"] == "answered" and answer["citations"][0]["document"] == "extra.csv"

    second = run(home, "serve", "--port", str(free_port()), timeout=60)
    assert second.returncode != 0 and "another 'switchboard serve'" in second.stderr


def test_serve_keeps_an_idle_connection_open_longer_than_clients_keep_theirs(server: str) -> None:
    """A client (httpx: 5 s) or a proxy (ALB: 60 s) reuses an idle connection until its own expiry: the server must
    not close it first, or the request sent on it gets no response (uvicorn's default was 5 s)."""
    import http.client
    import time
    from urllib.parse import urlsplit

    address = urlsplit(server)
    conn = http.client.HTTPConnection(address.hostname, address.port, timeout=10)
    try:
        conn.request("GET", "/healthz")
        first = conn.getresponse()
        first.read()
        assert first.status == 200
        time.sleep(6)  # idle past uvicorn's default keep-alive, then the next request on the same connection
        conn.request("GET", "/healthz")
        assert conn.getresponse().status == 200  # the old 5 s: RemoteDisconnected
    finally:
        conn.close()


def test_demo_creates_the_example_tenant_and_shows_a_real_conversation(tmp_path: Path) -> None:
    result = run(tmp_path / "demo", "demo", "--no-serve")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "Created tenant 'northwind'" in out and "admin API key: sb_" in out
    assert "customer> How long do I have to return something?" in out
    answer = out.split("customer> How long do I have to return something?")[1].split("customer>")[0]
    assert "bot> " in answer and "30 days" in answer and "sources:" in answer
    assert "escalated to a human (human_requested)" in out
    again = run(tmp_path / "demo", "demo", "--no-serve")  # idempotent: the tenant is reused, not recreated
    assert again.returncode == 0 and "Created tenant" not in again.stdout


def test_an_invalid_setting_stops_a_command_with_the_variables_named_not_a_traceback(tmp_path: Path) -> None:
    env = {**embedded_env(tmp_path), "SWITCHBOARD_ORCHESTRATOR_CPU_SLOTS": "-1",
           "SWITCHBOARD_BUS_BATCH_SIZE": "banana"}
    for command in (["tenant", "create", "acme"], ["serve", "--port", "0"]):
        result = subprocess.run([sys.executable, "-m", "app.cli", *command], cwd=REPO, env=env, capture_output=True,
                                text=True, timeout=120)
        assert result.returncode == 2, (command, result.stderr)
        assert "SWITCHBOARD_ORCHESTRATOR_CPU_SLOTS: Input should be greater than or equal to 0" in result.stderr
        assert "SWITCHBOARD_BUS_BATCH_SIZE: Input should be a valid integer" in result.stderr
        assert "Traceback" not in result.stderr and "banana" not in result.stderr  # no value is echoed
    assert not (tmp_path / "switchboard.db").exists()  # stopped before anything was set up
