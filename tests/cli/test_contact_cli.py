"""`switchboard contact export|erase|consent --tenant SLUG --contact ID --json`: the real command, without and with
`serve` running on the same home (then it goes through the server, which holds the in-process bus)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.cli_support import run, serving

QUESTION = "Where is my parcel? Reach me at ola.nordmann@example.no"


@pytest.mark.parametrize("with_server", [False, True], ids=["alone", "while-serve-runs"])
def test_export_consent_erase_from_the_command_line(tmp_path: Path, with_server: bool) -> None:
    home = tmp_path / "home"
    assert run(home, "tenant", "create", "acme").returncode == 0
    chat = run(home, "chat", "--tenant", "acme", "--contact", "ola", "--message", QUESTION, "--json")
    assert chat.returncode == 0, chat.stderr

    def commands() -> None:
        exported = run(home, "contact", "export", "--tenant", "acme", "--contact", "cli:ola", "--json")
        assert exported.returncode == 0, exported.stderr
        data = json.loads(exported.stdout)
        assert data["contact"]["external_id"] == "cli:ola"
        assert QUESTION in [m["text"] for c in data["conversations"] for m in c["messages"]]

        consent = run(home, "contact", "consent", "--tenant", "acme", "--contact", "cli:ola", "withdrawn", "--json")
        assert consent.returncode == 0 and json.loads(consent.stdout)["status"] == "withdrawn", consent.stderr
        wrong = run(home, "contact", "consent", "--tenant", "acme", "--contact", "cli:ola", "maybe")
        assert wrong.returncode != 0 and "consent must be one of" in wrong.stderr

        erased = run(home, "contact", "erase", "--tenant", "acme", "--contact", "cli:ola", "--json")
        assert erased.returncode == 0, erased.stderr
        counts = json.loads(erased.stdout)
        assert counts["contact_id"] == data["contact"]["id"] and counts["messages"] >= 2

        missing = run(home, "contact", "export", "--tenant", "acme", "--contact", "cli:ola", "--json")
        assert missing.returncode != 0 and "no contact 'cli:ola'" in missing.stderr
        unknown = run(home, "contact", "erase", "--tenant", "nope", "--contact", "cli:ola")
        assert unknown.returncode != 0 and "nope" in unknown.stderr

    if with_server:
        with serving(home):
            commands()
    else:
        commands()
    # Not even in the database's files: deleted rows are zeroed (secure_delete) and the log truncated.
    for name in ("switchboard.db", "switchboard.db-wal"):
        path = home / name
        assert not path.exists() or QUESTION.split()[-1].encode() not in path.read_bytes(), name
