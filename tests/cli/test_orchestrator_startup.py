"""`switchboard orchestrator` without QDRANT_URL: a second process cannot open the embedded vector store, and says so
at start-up with the fix (QDRANT_URL) instead of failing every message; a first one starts and warns."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.providers.vectors.edge import EdgeVectorStore
from tests.conftest import REDIS_TEST_URL, REPO


@pytest.fixture
def scale_out_env(tmp_path: Path, redis_namespace: str) -> Iterator[dict[str, str]]:
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.endswith(("DATABASE_URL", "REDIS_URL", "QDRANT_URL"))}
    env.update({"SWITCHBOARD_HOME": str(home), "REDIS_URL": REDIS_TEST_URL, "BUS_NAMESPACE": redis_namespace})
    yield env


def test_a_second_orchestrator_on_the_embedded_vector_store_stops_at_start_up_naming_qdrant_url(
    scale_out_env: dict[str, str],
) -> None:
    held = EdgeVectorStore(Path(scale_out_env["SWITCHBOARD_HOME"]) / "vectors")  # the first process
    try:
        done = subprocess.run([sys.executable, "-m", "app.cli", "orchestrator"], cwd=REPO, env=scale_out_env,
                              capture_output=True, text=True, timeout=120)
    finally:
        held.close()
    assert done.returncode != 0
    assert "already open in another process" in done.stderr
    assert "set QDRANT_URL" in done.stderr
    assert "Traceback" not in done.stderr


def test_the_first_orchestrator_starts_and_warns_that_replicas_need_qdrant_url(
    scale_out_env: dict[str, str], tmp_path: Path,
) -> None:
    # stderr goes to a file, not a pipe: a pipe nobody reads after start-up would block the process's logging
    # once full, and with it the shutdown.
    log_path = tmp_path / "orchestrator.log"
    with log_path.open("w") as log_file:
        proc = subprocess.Popen([sys.executable, "-m", "app.cli", "orchestrator"], cwd=REPO, env=scale_out_env,
                                stderr=log_file, text=True)
    try:
        deadline = time.monotonic() + 120
        while "orchestrator running" not in log_path.read_text():
            assert proc.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.2)
        assert any("QDRANT_URL is not set" in line and "replicas" in line
                   for line in log_path.read_text().splitlines())
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    assert proc.returncode == 0, log_path.read_text()[-3000:]
