"""`switchboard user add` through the real command (a separate process, embedded mode), then a login with the
password it was given, through the API of the same home."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tests.cli_support import embedded_env
from tests.conftest import REPO

PASSWORD = "correct horse battery staple"


def switchboard(home: Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**embedded_env(home), "SWITCHBOARD_PASSWORD_HASH_MEMORY_KIB": "1024",
           "SWITCHBOARD_PASSWORD_HASH_TIME_COST": "1"}
    return subprocess.run([sys.executable, "-m", "app.cli", *args], cwd=REPO, env=env, input=stdin or "",
                          capture_output=True, text=True, timeout=300)


@pytest.fixture
def home(sb_home: Path) -> Path:
    for slug in ("acme", "globex"):
        created = switchboard(sb_home, "tenant", "create", slug, "--json")
        assert created.returncode == 0, created.stderr
    return sb_home


def test_user_add_creates_the_account_and_the_person_logs_in(home: Path) -> None:
    added = switchboard(home, "user", "add", "--tenant", "acme", "--email", "Dana@Example.com", "--role", "owner",
                        "--password-stdin", "--json", stdin=PASSWORD + "\n")
    assert added.returncode == 0, added.stderr
    result = json.loads(added.stdout)
    assert set(result) == {"user_id", "email", "role"}
    assert result["email"] == "dana@example.com" and result["role"] == "owner"

    # Existing account: the membership is added, and the password sent is not applied.
    again = switchboard(home, "user", "add", "--tenant", "globex", "--email", "dana@example.com", "--role", "viewer",
                        "--password-stdin", "--json", stdin="another password entirely")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout) == {"user_id": result["user_id"], "email": "dana@example.com", "role": "viewer"}
    assert "keeps its own password" in again.stderr

    from app.main import create_app

    with TestClient(create_app(run_workers=False)) as client:
        def as_dana(tenant: str) -> dict[str, str]:
            tokens = client.post("/auth/login", data={"username": "dana@example.com", "password": PASSWORD,
                                                      "tenant": tenant})
            assert tokens.status_code == 200, tokens.text
            return {"Authorization": f"Bearer {tokens.json()['access_token']}"}

        assert client.get("/auth/me", headers=as_dana("acme")).json() == {
            "user_id": result["user_id"], "email": "dana@example.com", "tenant": "acme", "role": "owner"}
        assert client.get("/auth/me", headers=as_dana("globex")).json()["role"] == "viewer"
        refused = client.post("/auth/login", data={"username": "dana@example.com", "tenant": "globex",
                                                   "password": "another password entirely"})
        assert refused.status_code == 401
        # The operator added an owner, acting as an owner: the audit says so.
        events = client.get("/admin/v1/audit", params={"action": "user.added"}, headers=as_dana("acme")).json()
        assert [(e["actor"], e["data"]["role"]) for e in events["events"]] == [("operator", "owner")]


def test_user_add_errors_name_the_fix(home: Path) -> None:
    no_password = switchboard(home, "user", "add", "--tenant", "acme", "--email", "lee@example.com", "--role",
                              "agent", "--json")
    assert no_password.returncode == 1 and "--password-stdin" in no_password.stderr and no_password.stdout == ""
    weak = switchboard(home, "user", "add", "--tenant", "acme", "--email", "lee@example.com", "--role", "agent",
                       "--password-stdin", stdin="short\n")
    assert weak.returncode == 1 and "at least 12 characters" in weak.stderr
    tenant = switchboard(home, "user", "add", "--tenant", "nobody", "--email", "lee@example.com", "--role", "agent",
                         "--password-stdin", stdin=PASSWORD)
    assert tenant.returncode == 1 and "no tenant 'nobody'" in tenant.stderr
    role = switchboard(home, "user", "add", "--tenant", "acme", "--email", "lee@example.com", "--role", "boss",
                       "--password-stdin", stdin=PASSWORD)
    assert role.returncode == 1 and "role must be one of owner, admin, agent, viewer" in role.stderr
    bad_email = switchboard(home, "user", "add", "--tenant", "acme", "--email", "lee", "--role", "agent",
                            "--password-stdin", stdin=PASSWORD)
    assert bad_email.returncode == 1 and "not an email address" in bad_email.stderr
    ok = switchboard(home, "user", "add", "--tenant", "acme", "--email", "lee@example.com", "--role", "agent",
                     "--password-stdin", stdin=PASSWORD)
    assert ok.returncode == 0 and "lee@example.com is now agent of acme" in ok.stdout
    twice = switchboard(home, "user", "add", "--tenant", "acme", "--email", "lee@example.com", "--role", "admin")
    assert twice.returncode == 1 and "already in this tenant" in twice.stderr
