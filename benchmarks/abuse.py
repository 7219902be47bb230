"""Hostile traffic against a running `switchboard serve` (embedded, scratch home on 127.0.0.1): 100 MB bodies,
floods and malformed payloads. Prints the status counts of each scenario and the server's peak RSS.

    .venv/bin/python benchmarks/abuse.py [--big-mb 100] [--port 8766]

What a healthy server shows: 413 for every oversized body, refused while reading (peak RSS stays near the idle
RSS, not +100 MB per request); 4xx, never 5xx, for malformed input (sent before the floods, so no limit is
spent yet); 429 once a flood passes its limit. Every
request loop is bounded and only 127.0.0.1 is contacted.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent / "switchboard"


def rss_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def cli(env: dict[str, str], *args: str) -> dict[str, Any]:
    out = subprocess.run([str(BIN), *args, "--json"], env=env, check=True, capture_output=True, text=True)
    return json.loads(out.stdout)  # type: ignore[no-any-return]


def counts(results: list[str]) -> str:
    return ", ".join(f"{k}: {v}" for k, v in sorted(Counter(results).items()))


def attempt(call: Callable[[], httpx.Response]) -> str:
    try:
        return str(call().status_code)
    except httpx.HTTPError as exc:  # the server refused mid-body and closed the connection
        return f"closed ({exc.__class__.__name__})"


def big_body(mb: int) -> Iterator[bytes]:
    chunk = b'{"x":"' + b"a" * (1024 * 1024 - 8) + b'",'
    for _ in range(mb):
        yield chunk


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--big-mb", type=int, default=100)
    parser.add_argument("--port", type=int, default=8766)
    args = parser.parse_args()

    home = tempfile.mkdtemp(prefix="sb-abuse-")
    env = {k: v for k, v in os.environ.items() if not k.endswith(("DATABASE_URL", "REDIS_URL", "QDRANT_URL",
                                                                  "S3_BUCKET", "LLM_BASE_URL"))}
    env.update(SWITCHBOARD_HOME=home, SWITCHBOARD_PUBLIC_BASE_URL=f"http://127.0.0.1:{args.port}")
    print(f"setting up a tenant in {home} ...", flush=True)
    tenant = cli(env, "tenant", "create", "acme")
    cli(env, "channel", "add", "--tenant", "acme", "--type", "whatsapp", "--account-id", "1001",
        "--access-token", "t", "--app-secret", "bench-secret")
    cli(env, "channel", "add", "--tenant", "acme", "--type", "telegram", "--bot-token", "5550001:AAH")
    public_key = Ed25519PrivateKey.generate().public_key().public_bytes_raw().hex()
    cli(env, "channel", "add", "--tenant", "acme", "--type", "discord", "--account-id", "777",
        "--public-key", public_key)
    log_path = Path(home) / "serve.log"
    server = subprocess.Popen([str(BIN), "serve", "--host", "127.0.0.1", "--port", str(args.port)], env=env,
                              stdout=log_path.open("wb"), stderr=subprocess.STDOUT)
    print(f"server log: {log_path}", flush=True)
    base = f"http://127.0.0.1:{args.port}"
    rows: list[tuple[str, str]] = []
    try:
        for _ in range(120):
            try:
                if httpx.get(base + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
        idle = rss_kib(server.pid, "VmRSS")
        print(f"server up, pid {server.pid}, RSS {idle / 1024:.0f} MiB", flush=True)
        client = httpx.Client(base_url=base, timeout=60)
        admin = {"Authorization": f"Bearer {tenant['admin_api_key']}"}
        channels = client.get("/admin/v1/channels", headers=admin).raise_for_status().json()["channels"]
        widget = next(c["external_id"] for c in channels if c["channel"] == "webchat")

        def record(name: str, results: list[str]) -> None:
            rows.append((name, counts(results)))
            print(f"  {name}: {counts(results)}  (server RSS now {rss_kib(server.pid, 'VmRSS') / 1024:.0f} MiB)",
                  flush=True)

        print(f"oversized bodies ({args.big_mb} MB each, streamed and with Content-Length) ...", flush=True)
        session = client.post(f"/widget/v1/{widget}/sessions", json={}).json()
        token = session.get("token", "")
        for route, headers in [("/webhooks/whatsapp", {"X-Hub-Signature-256": "sha256=" + "0" * 64}),
                               ("/webhooks/discord/777", {"X-Signature-Ed25519": "00" * 64,
                                                          "X-Signature-Timestamp": str(int(time.time()))}),
                               (f"/widget/v1/{widget}/messages", {"Authorization": f"Bearer {token}"})]:
            streamed = attempt(lambda r=route, h=headers: client.post(
                r, content=big_body(args.big_mb), headers={**h, "Content-Type": "application/json"}))
            sized = attempt(lambda r=route, h=headers: client.post(
                r, content=b"".join(big_body(args.big_mb)), headers={**h, "Content-Type": "application/json"}))
            record(f"{args.big_mb} MB to {route.replace(widget, '{widget}')}", [streamed, sized])

        print("floods ...", flush=True)
        print("malformed input ...", flush=True)
        malformed: list[Callable[[], httpx.Response]] = [
            *(lambda b=body: client.post("/webhooks/whatsapp", content=b, headers={"Content-Type": "application/json"})
              for body in (b"", b"{", b"[]", b"null", b'{"entry": 5}', b'{"entry": [{"changes": "x"}]}',
                           b"\xff\xfe", b'{"object": "whatsapp_business_account"}')),
            lambda: client.post(f"/widget/v1/{widget}/sessions", content=b"plain text",
                                headers={"Content-Type": "text/plain"}),
            lambda: client.post(f"/widget/v1/{widget}/sessions", content=b'{"contact_id": "\\ud800"}',
                                headers={"Content-Type": "application/json"}),
            lambda: client.post(f"/widget/v1/{widget}/messages", json={"text": "a\u0000b", "client_message_id": "n"},
                                headers={"Authorization": f"Bearer {token}"}),
            lambda: client.get("/admin/v1/conversations?limit=99999999999999999999", headers=admin),
            lambda: client.get("/admin/v1/tenant", headers={"Authorization": "Bearer \u00e9\u00e9".encode()}),
            lambda: client.post("/webhooks/telegram/5550001", content=b"{", headers={
                "X-Telegram-Bot-Api-Secret-Token": "\u00e9t\u00e9".encode()}),
        ]
        record(f"{len(malformed)} malformed requests", [attempt(call) for call in malformed])
        visitor = client.post(f"/widget/v1/{widget}/sessions", json={}).raise_for_status().json()["token"]
        with ThreadPoolExecutor(8) as pool:
            record("300 widget sessions from one IP", list(pool.map(
                lambda _: attempt(lambda: client.post(f"/widget/v1/{widget}/sessions", json={})), range(300))))
            record("200 sends from one visitor", list(pool.map(lambda i: attempt(lambda: client.post(
                f"/widget/v1/{widget}/messages", json={"text": f"hello {i}", "client_message_id": f"m{i}"},
                headers={"Authorization": f"Bearer {visitor}"})), range(200))))
            record("300 wrong admin keys", list(pool.map(lambda i: attempt(lambda: client.get(
                "/admin/v1/tenant", headers={"Authorization": f"Bearer sb_wrong_{i}"})), range(300))))
            record("300 wrong Telegram webhook secrets", list(pool.map(lambda i: attempt(lambda: client.post(
                "/webhooks/telegram/5550001", json={"update_id": i},
                headers={"X-Telegram-Bot-Api-Secret-Token": f"wrong{i}"})), range(300))))

        peak = rss_kib(server.pid, "VmHWM")
    finally:
        server.terminate()
        server.wait(timeout=30)

    print(f"\n## Abuse run ({datetime.now(UTC):%Y-%m-%d}, {platform.node()}, {os.cpu_count()} cores)\n")
    print("| scenario | status counts |\n|---|---|")
    for name, result in rows:
        print(f"| {name} | {result} |")
    print(f"\nserver RSS idle {idle / 1024:.0f} MiB, peak {peak / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
