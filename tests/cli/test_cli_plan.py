"""`switchboard tenant plan` as operators run it, with embedded `serve` running (the change goes through the
server, whose orchestrator applies it at once) and without."""

from __future__ import annotations

import json
from pathlib import Path

from tests.cli_support import run, serving
from tests.conftest import REPO

FAQ = REPO / "tenants" / "northwind" / "knowledge" / "faq.csv"


def test_plan_set_through_a_running_server_applies_to_its_next_message(tmp_path: Path) -> None:
    home = tmp_path / "home"
    assert run(home, "tenant", "create", "acme", "--json").returncode == 0
    assert run(home, "ingest", "--tenant", "acme", str(FAQ), "--json").returncode == 0
    offline = run(home, "tenant", "plan", "acme", "--plan", "standard", "--messages", "5", "--json")
    assert offline.returncode == 0, offline.stderr
    assert json.loads(offline.stdout)["plan"]["messages_per_month"] == 5

    with serving(home):
        answered = json.loads(run(home, "chat", "--tenant", "acme", "--message", "do gift cards expire",
                                  "--json").stdout)
        assert answered["status"] == "answered"
        shown = run(home, "tenant", "plan", "acme", "--plan", "free", "--messages", "1")
        assert shown.returncode == 0, shown.stderr
        assert "plan free" in shown.stdout and "messages_per_month=1" in shown.stdout
        over = json.loads(run(home, "chat", "--tenant", "acme", "--contact", "c2", "--message",
                              "do gift cards expire", "--json").stdout)
        assert over["status"] == "escalated" and over["reason"] == "quota_exceeded"
        unknown = run(home, "tenant", "plan", "nobody", "--plan", "free")
        assert unknown.returncode == 1 and "no tenant 'nobody'" in unknown.stderr
