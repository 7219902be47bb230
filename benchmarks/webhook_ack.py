"""Webhook ack latency: one WhatsApp gateway process (uvicorn, `create_gateway_app("whatsapp")`) on a scratch
Postgres database and the real Redis Streams bus, receiving signed webhooks at a fixed rate.

    .venv/bin/python benchmarks/webhook_ack.py [--rate 500] [--seconds 10] [--workers 1]

Each request is a distinct, correctly signed WhatsApp text message, so every one pays the full path:
signature check, account lookup, deduplicating insert, XADD, enqueued_at update. Requests are started on a
fixed schedule (open loop: a slow server does not slow the generator), and latency is measured from the
scheduled start, so queueing counts. The scratch database and the tenant's Redis streams are dropped afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import httpx
import psycopg
import redis

PG_ADMIN = os.environ.get("SWITCHBOARD_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("SWITCHBOARD_BENCH_REDIS", "redis://127.0.0.1:6379/0")
SECRET = "bench-app-secret"
PHONE_ID = "100200300400"
ROOT = Path(__file__).resolve().parent.parent


def body(n: int) -> bytes:
    return json.dumps({"object": "whatsapp_business_account", "entry": [{"id": "1", "changes": [{"field": "messages",
        "value": {"messaging_product": "whatsapp", "metadata": {"display_phone_number": "1555", "phone_number_id":
        PHONE_ID}, "contacts": [{"profile": {"name": "Bench"}, "wa_id": f"1555{n % 200:04d}"}],
        "messages": [{"from": f"1555{n % 200:04d}", "id": f"wamid.bench{n}", "timestamp": "1700000000",
                      "type": "text", "text": {"body": f"What are your opening hours? #{n}"}}]}}]}]}).encode()


def setup(db_url: str) -> str:
    os.environ.update(DATABASE_URL=db_url, REDIS_URL=REDIS_URL)
    from app.db import migrate, session_scope
    from app.runtime import reset_caches
    from app.tenants.service import create_tenant
    from gateways.accounts import add_channel_account

    reset_caches()
    migrate(db_url)
    with session_scope() as session:
        tenant = create_tenant(session, f"bench-{uuid.uuid4().hex[:6]}").tenant
        add_channel_account(session, tenant.id, "whatsapp", PHONE_ID, credentials={
            "app_secret": SECRET, "verify_token": "v", "access_token": "t"})
        return tenant.id


async def load(url: str, rate: int, seconds: int, first: int = 0) -> tuple[list[float], int, float]:
    total = rate * seconds
    payloads = [body(first + n) for n in range(total)]
    signatures = ["sha256=" + hmac.new(SECRET.encode(), p, hashlib.sha256).hexdigest() for p in payloads]
    latencies: list[float] = []
    errors = 0
    limits = httpx.Limits(max_connections=200, max_keepalive_connections=200)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=10) as client:
        start = time.perf_counter()

        async def one(n: int) -> None:
            nonlocal errors
            scheduled = start + n / rate
            await asyncio.sleep(max(0.0, scheduled - time.perf_counter()))
            try:
                r = await client.post("/webhooks/whatsapp", content=payloads[n],
                                      headers={"X-Hub-Signature-256": signatures[n],
                                               "Content-Type": "application/json"})
                if r.status_code != 200 or r.json().get("accepted") != 1:
                    errors += 1
            except httpx.HTTPError:
                errors += 1
            latencies.append(time.perf_counter() - scheduled)
            if n and n % rate == 0:
                print(f"  {n // rate}s: {n} sent", file=sys.stderr)

        await asyncio.gather(*(one(n) for n in range(total)))
        elapsed = time.perf_counter() - start
    return latencies, errors, elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rate", type=int, default=500)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--workers", type=int, default=1, help="uvicorn worker processes (1 = one gateway)")
    args = parser.parse_args()

    name = f"sb_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    db_url = PG_ADMIN.rsplit("/", 1)[0] + f"/{name}"
    server = None
    tenant_id = None
    try:
        tenant_id = setup(db_url)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        env = {**os.environ, "DATABASE_URL": db_url, "REDIS_URL": REDIS_URL, "SWITCHBOARD_GATEWAY_CHANNEL": "whatsapp"}
        server = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "--factory", "benchmarks.webhook_ack:gateway_app", "--port", str(port),
             "--workers", str(args.workers), "--log-level", "warning", "--no-access-log"], cwd=ROOT, env=env)
        url = f"http://127.0.0.1:{port}"
        for _ in range(100):
            try:
                if httpx.get(url + "/healthz").status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        # Warm-up: connections, statement caches.
        asyncio.run(load(url, 50, 1))
        print(f"sending {args.rate} req/s for {args.seconds}s ...", file=sys.stderr)
        latencies, errors, elapsed = asyncio.run(load(url, args.rate, args.seconds, first=1_000_000))
        q = statistics.quantiles(sorted(latencies), n=100)
        with psycopg.connect(db_url) as conn:
            stored = conn.execute("SELECT count(*) FROM messages WHERE direction = 'in'").fetchone()
        streamed = redis.Redis.from_url(REDIS_URL).xlen(f"sb:inbound:{tenant_id}")
        print(json.dumps({
            "benchmark": "webhook_ack", "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": f"{platform.machine()} {os.cpu_count()} cores, {platform.python_version()}",
            "target_rate": args.rate, "seconds": args.seconds, "requests": len(latencies), "errors": errors,
            "achieved_rps": round(len(latencies) / elapsed, 1), "p50_ms": round(q[49] * 1000, 2),
            "p99_ms": round(q[98] * 1000, 2), "max_ms": round(max(latencies) * 1000, 2),
            "stored_messages_incl_warmup": stored[0] if stored else None, "stream_entries": streamed,
        }, indent=2))
    finally:
        if server is not None:
            server.terminate()
            server.wait(10)
        if tenant_id:
            client = redis.Redis.from_url(REDIS_URL)
            keys = list(client.scan_iter(f"sb:*{tenant_id}*"))
            if keys:
                client.delete(*keys)
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def gateway_app():  # type: ignore[no-untyped-def]
    from gateways.server import create_gateway_app

    return create_gateway_app(os.environ.get("SWITCHBOARD_GATEWAY_CHANNEL", "whatsapp"))


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
