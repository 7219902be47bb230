"""Running the real `switchboard` command in tests: one-shot commands and an embedded `serve` in the background."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from tests.conftest import REPO

SCALE_OUT = ("DATABASE_URL", "REDIS_URL", "QDRANT_URL")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def embedded_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.endswith(SCALE_OUT)}
    env["SWITCHBOARD_HOME"] = str(home)
    return env


def run(home: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "app.cli", *args], cwd=REPO, env=embedded_env(home),
                          capture_output=True, text=True, timeout=timeout)


@contextmanager
def serving(home: Path) -> Iterator[str]:
    """`switchboard serve` on a free port, ready (it wrote server.json); stopped with Ctrl-C afterwards."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "app.cli", "serve", "--port", str(port)], cwd=REPO,
                            env=embedded_env(home), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200 and (home / "server.json").exists():
                break
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(proc.stdout.read().decode() if proc.stdout else "serve did not start")
        time.sleep(0.2)
    try:
        yield url
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(30)
