"""`switchboard ingest --version-only`, `pack list|promote|rollback` and `eval` as real processes, in embedded
mode, both alone and while `switchboard serve` holds the vector store (the CLI then delegates to it)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cli_support import run, serving
from tests.conftest import REPO

NORTHWIND = REPO / "tenants" / "northwind"




@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("packhome")
    assert run(home, "tenant", "create", "northwind", "--json").returncode == 0
    return home


def _listing(home: Path) -> dict[str, object]:
    result = run(home, "pack", "list", "--tenant", "northwind", "--json")
    assert result.returncode == 0, result.stderr
    data: dict[str, object] = json.loads(result.stdout)
    return data


def test_version_only_promote_rollback_and_eval(home: Path) -> None:
    first = run(home, "ingest", "--tenant", "northwind", str(NORTHWIND / "knowledge"), "--json")
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout)["status"] == "live"
    second = run(home, "ingest", "--tenant", "northwind", str(NORTHWIND / "knowledge"), "--version-only")
    assert second.returncode == 0, second.stderr
    assert "pack version 2 ready" in second.stdout and "(0 embedded)" in second.stdout

    listing = _listing(home)
    assert listing["live_version"] == 1
    assert [(v["version"], v["status"]) for v in listing["versions"]] == [(2, "ready"), (1, "live")]  # type: ignore[attr-defined]

    promoted = run(home, "pack", "promote", "--tenant", "northwind", "--version", "2")
    assert promoted.returncode == 0 and "* v2" in promoted.stdout
    assert run(home, "pack", "rollback", "--tenant", "northwind").returncode == 0
    assert _listing(home)["live_version"] == 1
    refused = run(home, "pack", "rollback", "--tenant", "northwind")
    assert refused.returncode == 1 and "no earlier live version" in refused.stderr
    unknown = run(home, "pack", "list", "--tenant", "nobody")
    assert unknown.returncode == 1 and "nobody" in unknown.stderr

    scores = run(home, "eval", "--tenant", "northwind", "--questions", str(NORTHWIND / "eval" / "questions.jsonl"),
                 "--json")
    assert scores.returncode == 0, scores.stderr
    data = json.loads(scores.stdout)
    assert set(data) == {"n", "hit@1", "hit@5", "mrr"} and data["n"] == 76
    assert 0.5 < data["hit@5"] <= 1 and data["hit@1"] <= data["hit@5"] and 0 < data["mrr"] <= 1
    bad = home / "bad.jsonl"
    bad.write_text('{"question": "x"}\n')
    refused = run(home, "eval", "--tenant", "northwind", "--questions", str(bad))
    assert refused.returncode == 1 and "line 1" in refused.stderr

    # The relevance threshold: nothing calibrated yet (the pack had no _eval.jsonl), then from the eval files.
    assert _listing(home)["versions"][-1]["calibration"]["threshold"] is None  # type: ignore[index]
    calibrated = run(home, "eval", "--tenant", "northwind", "--calibrate", "--questions",
                     str(NORTHWIND / "eval" / "questions.jsonl"), "--unanswerable",
                     str(NORTHWIND / "eval" / "unanswerable.jsonl"), "--json")
    assert calibrated.returncode == 0, calibrated.stderr
    relevance = json.loads(calibrated.stdout)
    assert relevance["source"] == "calibrated" and relevance["policy"] is None
    assert relevance["in_effect"] == relevance["recomputed"]["threshold"] == relevance["calibration"]["threshold"]
    assert relevance["recomputed"]["negatives_source"] == "tenant"
    assert relevance["recomputed"]["report"]["default"]["negatives"] > 0
    shown = run(home, "eval", "--tenant", "northwind", "--calibrate")  # again from the stored files, as text
    assert shown.returncode == 0 and "calibrated min_relevance" in shown.stdout and "in effect:" in shown.stdout
    alone = run(home, "eval", "--tenant", "northwind", "--unanswerable", str(bad))
    assert alone.returncode == 1 and "--unanswerable goes with --calibrate" in alone.stderr


@pytest.fixture
def server(home: Path) -> Iterator[str]:
    with serving(home) as url:
        yield url


def test_pack_commands_and_eval_delegate_to_a_running_serve(home: Path, server: str) -> None:
    built = run(home, "ingest", "--tenant", "northwind", str(NORTHWIND / "knowledge" / "faq.csv"),
                "--version-only", "--json")
    assert built.returncode == 0, built.stderr
    report = json.loads(built.stdout)
    assert report["status"] == "ready" and report["embedded"] == 0 and len(report["files_carried"]) == 5
    version = report["pack_version"]
    promoted = run(home, "pack", "promote", "--tenant", "northwind", "--version", str(version), "--json")
    assert promoted.returncode == 0, promoted.stderr
    assert json.loads(promoted.stdout)["live_version"] == version
    scores = run(home, "eval", "--tenant", "northwind", "--questions", str(NORTHWIND / "eval" / "questions.jsonl"),
                 "--json")
    assert scores.returncode == 0, scores.stderr
    assert json.loads(scores.stdout)["n"] == 76
    calibrated = run(home, "eval", "--tenant", "northwind", "--calibrate", "--version", str(version), "--questions",
                     str(NORTHWIND / "eval" / "questions.jsonl"), "--json")
    assert calibrated.returncode == 0, calibrated.stderr
    assert json.loads(calibrated.stdout)["recomputed_version"] == version
