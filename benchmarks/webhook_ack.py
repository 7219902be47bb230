"""Webhook ack latency: one WhatsApp gateway process (uvicorn, `create_gateway_app("whatsapp")`) on a scratch
Postgres database and the real Redis Streams bus, receiving signed webhooks at a fixed rate.

    .venv/bin/python benchmarks/webhook_ack.py [--rate 500] [--seconds 10] [--workers 1] [--generators 2]
                                               [--sequential 300] [--py-spy FILE]

Each request is a distinct, correctly signed WhatsApp text message, so every one pays the full path:
signature check, account lookup, deduplicating insert (through the process's `InboundBatcher`), commit, XADD.

The load generator is part of this script and needs nothing beyond the venv: `--generators` processes, each
writing pre-built HTTP/1.1 requests on keep-alive connections with raw asyncio streams (uvloop when installed).
It is open loop: request k is due at t0 + k/rate whatever happened to earlier ones, latency is measured from the
due time (queueing counts), and `generator_send_lag_p99_ms` shows how late the generators themselves were.
(`wrk` cannot hold a fixed rate and Debian has no `wrk2`.) Also reported: the batch sizes the gateway saw, its CPU
use, and with `--sequential N` the per-message cost of `accept_inbound` one at a time and of `accept_many` in
batches of 16. `--py-spy FILE` profiles the gateway during the run (`.venv/bin/pip install py-spy` first).
Environment knobs for experiments: BENCH_BATCH_WAIT_MS (the batcher's collection window), BENCH_SWITCH_INTERVAL_MS.
The scratch database and the benchmark tenants' Redis keys are dropped afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import json
import multiprocessing as mp
import os
import platform
import shutil
import socket
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psycopg
import redis

PG_ADMIN = os.environ.get("SWITCHBOARD_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("SWITCHBOARD_BENCH_REDIS", "redis://127.0.0.1:6379/0")
SECRET = "bench-app-secret"
PHONE_ID = "100200300400"
ROOT = Path(__file__).resolve().parent.parent
KEEPALIVE_S = 4.0


def body(n: int) -> bytes:
    return json.dumps({"object": "whatsapp_business_account", "entry": [{"id": "1", "changes": [{"field": "messages",
        "value": {"messaging_product": "whatsapp", "metadata": {"display_phone_number": "1555", "phone_number_id":
        PHONE_ID}, "contacts": [{"profile": {"name": "Bench"}, "wa_id": f"1555{n % 200:04d}"}],
        "messages": [{"from": f"1555{n % 200:04d}", "id": f"wamid.bench{n}", "timestamp": "1700000000",
                      "type": "text", "text": {"body": f"What are your opening hours? #{n}"}}]}}]}]}).encode()


def setup(db_url: str) -> str:
    os.environ.update(DATABASE_URL=db_url, REDIS_URL=REDIS_URL)
    from app.bootstrap import container
    from app.db import migrate, session_scope
    from app.tenants.service import create_tenant
    from gateways.accounts import add_channel_account

    migrate(db_url)
    with session_scope(cross_tenant="benchmark setup") as session:
        tenant = create_tenant(session, f"bench-{uuid.uuid4().hex[:6]}").tenant
        add_channel_account(session, container().channels, tenant.id, "whatsapp", PHONE_ID, credentials={
            "app_secret": SECRET, "verify_token": "v", "access_token": "t"})
        return tenant.id


def request_bytes(port: int, payload: bytes) -> bytes:
    signature = "sha256=" + hmac.new(SECRET.encode(), payload, hashlib.sha256).hexdigest()
    return (f"POST /webhooks/whatsapp HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
            f"X-Hub-Signature-256: {signature}\r\nContent-Length: {len(payload)}\r\n\r\n").encode() + payload


async def _exchange(conn: tuple[asyncio.StreamReader, asyncio.StreamWriter], request: bytes) -> bytes | None:
    """None when the gateway accepted the message, else what it answered."""
    reader, writer = conn
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
    body = await reader.readexactly(length)
    ok = head.startswith(b"HTTP/1.1 200") and b'"accepted":1' in body
    return None if ok else head.split(b"\r\n", 1)[0] + b" " + body[:300]


async def _generate(port: int, requests: list[bytes], slots: list[int], rate: float, t0: float,
                    max_conns: int) -> tuple[list[float], list[float], int, float]:
    """Open loop: request k is due at t0 + slots[k] / rate (wall clock, shared by every generator process)
    whatever happened to earlier ones; it takes an idle keep-alive connection or opens one. Latency counts
    from the due time, so a queue anywhere (here, in the kernel, in the server) shows up in it."""
    # (reader, writer, last used): uvicorn closes keep-alive connections idle for 5 s; ours retire after 4 s.
    idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter, float]] = []
    opened = 0
    latencies: list[float] = []
    lags: list[float] = []  # how late this generator itself started each request
    errors = 0
    room = asyncio.Semaphore(max_conns)

    async def one(k: int, due: float) -> None:
        nonlocal opened, errors
        async with room:
            lags.append(time.time() - due)
            try:
                while idle and time.monotonic() - idle[0][2] > KEEPALIVE_S:
                    idle.pop(0)[1].close()
                if idle:
                    reader, writer, _ = idle.pop()
                else:
                    reader, writer = await asyncio.open_connection("127.0.0.1", port)
                    opened += 1
                failure = await _exchange((reader, writer), requests[k])
                idle.append((reader, writer, time.monotonic()))
            except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
                failure = repr(exc).encode()
            latencies.append(time.time() - due)
            if failure is not None:
                errors += 1
                if errors <= 3:
                    print(f"request {k} failed: {failure.decode(errors='replace')}", file=sys.stderr)

    tasks = []
    for k, slot in enumerate(slots):
        due = t0 + slot / rate
        delay = due - time.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(k, due)))
    await asyncio.gather(*tasks)
    finished = time.time()
    for _, writer, _ in idle:
        writer.close()
    return latencies, lags, errors, finished


def _generator_process(port: int, requests: list[bytes], slots: list[int], rate: float, t0: float,
                       max_conns: int, out: Any) -> None:
    try:
        import uvloop
    except ImportError:  # plain asyncio works too, with a little more generator overhead
        out.put(asyncio.run(_generate(port, requests, slots, rate, t0, max_conns)))
        return
    out.put(uvloop.run(_generate(port, requests, slots, rate, t0, max_conns)))


def load(port: int, rate: int, seconds: float, first: int, processes: int = 2,
         max_conns: int = 256) -> tuple[list[float], list[float], int, float]:
    """`rate` requests/s for `seconds`, spread round-robin over `processes` generator processes (one Python
    event loop cannot keep a fixed schedule at this rate on its own and measure honestly)."""
    total = int(rate * seconds)
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    t0 = time.time() + 1.5  # every process starts from the same wall-clock instant, after spawning
    procs = []
    for p in range(processes):
        slots = list(range(p, total, processes))
        requests = [request_bytes(port, body(first + n)) for n in slots]
        proc = ctx.Process(target=_generator_process, args=(port, requests, slots, rate, t0, max_conns, out))
        proc.start()
        procs.append(proc)
    latencies: list[float] = []
    lags: list[float] = []
    errors = 0
    finished = t0
    for _ in procs:
        lat, lag, err, end = out.get(timeout=seconds + 120)
        latencies += lat
        lags += lag
        errors += err
        finished = max(finished, end)
    for proc in procs:
        proc.join(10)
    return latencies, lags, errors, finished - t0  # from the first due time to the last answer


def cpu_seconds(pid: int | None = None) -> float:
    """CPU time used so far by a process (user + system), or by the whole machine when pid is None."""
    ticks = os.sysconf("SC_CLK_TCK")
    if pid is None:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
        return (sum(int(f) for f in fields) - int(fields[3]) - int(fields[4])) / ticks  # minus idle, iowait
    stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(stat[11]) + int(stat[12])) / ticks


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 2)


def sequential_cost(n: int = 300) -> dict[str, Any]:
    """In this process, on the benchmark database: ms per message for `accept_inbound` called back to back,
    and for `accept_many` in batches of 16 (the writer's work at load), both on the real Redis bus."""
    from app.bootstrap import container
    from app.conversations.service import InboundRequest, accept_inbound, accept_many
    from app.db import session_scope
    from app.tenants.service import create_tenant

    with session_scope(cross_tenant="benchmark setup") as session:
        tenant_id = create_tenant(session, f"seq-{uuid.uuid4().hex[:6]}").tenant.id
    bus = container().bus
    started = time.perf_counter()
    for i in range(n):
        accept_inbound(bus, tenant_id=tenant_id, channel="whatsapp", contact_external_id=f"c{i % 50}",
                       provider_message_id=f"seq{i}", text="hello", display_name="Bench")
    one_by_one = (time.perf_counter() - started) / n
    started = time.perf_counter()
    for b in range(0, n, 16):
        accept_many(bus, [InboundRequest(tenant_id=tenant_id, channel="whatsapp", contact_external_id=f"c{i % 50}",
                                         provider_message_id=f"batch{i}", text="hello", display_name="Bench")
                          for i in range(b, min(n, b + 16))])
    batched = (time.perf_counter() - started) / n
    return {"accept_inbound_ms_per_message": round(one_by_one * 1000, 2),
            "accept_many_16_ms_per_message": round(batched * 1000, 2), "tenant_id": tenant_id}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rate", type=int, default=500)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--workers", type=int, default=1, help="uvicorn worker processes (1 = one gateway)")
    parser.add_argument("--generators", type=int, default=2, help="load generator processes")
    parser.add_argument("--sequential", type=int, default=300, help="messages for the sequential cost (0: skip)")
    parser.add_argument("--py-spy", metavar="FILE", help="profile the gateway during the run (py-spy, raw stacks)")
    args = parser.parse_args()
    if args.py_spy and shutil.which("py-spy", path=str(Path(sys.executable).parent)) is None:
        sys.exit("--py-spy needs py-spy: .venv/bin/pip install py-spy")

    name = f"sb_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    db_url = PG_ADMIN.rsplit("/", 1)[0] + f"/{name}"
    server = None
    tenants: list[str] = []
    try:
        tenants.append(setup(db_url))
        sequential = {}
        if args.sequential:
            print(f"sequential cost over {args.sequential} messages ...", file=sys.stderr)
            sequential = sequential_cost(args.sequential)
            tenants.append(sequential.pop("tenant_id"))
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
        print("warm-up: 100 req/s for 2s ...", file=sys.stderr)
        load(port, 100, 2, first=0, processes=args.generators)
        before = httpx.get(url + "/_bench/batches").json()
        profiler = None
        if args.py_spy:
            profiler = subprocess.Popen(
                [str(Path(sys.executable).parent / "py-spy"), "record", "--pid", str(server.pid), "--format", "raw",
                 "--rate", "200", "--duration", str(int(args.seconds) + 2), "--threads", "--output", args.py_spy,
                 "--nonblocking"], stdout=subprocess.DEVNULL)
        print(f"sending {args.rate} req/s for {args.seconds}s from {args.generators} processes ...", file=sys.stderr)
        cpu_before = (cpu_seconds(server.pid), cpu_seconds())
        latencies, lags, errors, elapsed = load(port, args.rate, args.seconds, first=1_000_000,
                                                processes=args.generators)
        # Includes the generators' 1.5 s spawn-up before the first request: an upper bound for the run.
        wall = elapsed + 1.5
        gateway_cpu = round(100 * (cpu_seconds(server.pid) - cpu_before[0]) / wall, 1)
        machine_cpu = round(100 * (cpu_seconds() - cpu_before[1]) / wall / (os.cpu_count() or 1), 1)
        if profiler is not None:
            profiler.wait(60)
        after = httpx.get(url + "/_bench/batches").json()
        with psycopg.connect(db_url) as conn:
            stored = conn.execute("SELECT count(*) FROM messages WHERE direction = 'in'").fetchone()
        streamed = redis.Redis.from_url(REDIS_URL).xlen(f"sb:inbound:{tenants[0]}")
        batches = after["batches"] - before["batches"]
        sizes = {int(k): v - before["sizes"].get(k, 0) for k, v in after["sizes"].items()}
        print(json.dumps({
            "benchmark": "webhook_ack", "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": f"{platform.machine()} {os.cpu_count()} cores, {platform.python_version()}",
            "target_rate": args.rate, "seconds": args.seconds, "generators": args.generators,
            "requests": len(latencies), "errors": errors,
            "achieved_rps": round(len(latencies) / elapsed, 1), "p50_ms": pct(latencies, 0.50),
            "p90_ms": pct(latencies, 0.90), "p99_ms": pct(latencies, 0.99), "max_ms": pct(latencies, 1.0),
            "generator_send_lag_p99_ms": pct(lags, 0.99),
            "gateway_cpu_percent_of_one_core": gateway_cpu, "machine_cpu_percent": machine_cpu,
            "batches": batches, "mean_batch": round((after["requests"] - before["requests"]) / max(1, batches), 2),
            "batch_size_p50": _size_quantile(sizes, 0.5), "batch_size_p99": _size_quantile(sizes, 0.99),
            "failed_batches": after["failed_batches"] - before["failed_batches"],
            "stored_messages_incl_warmup": stored[0] if stored else None, "stream_entries_incl_warmup": streamed,
            **sequential,
        }, indent=2))
    finally:
        if server is not None:
            server.terminate()
            server.wait(10)
        client = redis.Redis.from_url(REDIS_URL)
        for tenant_id in tenants:
            keys = list(client.scan_iter(f"sb:*:{tenant_id}*"))
            if keys:
                client.delete(*keys)
            client.srem("sb:_streams:inbound", tenant_id)
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _size_quantile(sizes: dict[int, int], q: float) -> int:
    total = sum(sizes.values())
    seen = 0
    for size in sorted(sizes):
        seen += sizes[size]
        if seen >= q * total:
            return size
    return 0


def gateway_app() -> Any:
    """The gateway under test, plus a route that reports its batcher's counters to the benchmark."""
    from dataclasses import asdict

    from app.bootstrap import container
    from app.conversations import batching
    from gateways.server import create_gateway_app

    if "BENCH_BATCH_WAIT_MS" in os.environ:  # to compare collection windows
        batching.MAX_WAIT_S = float(os.environ["BENCH_BATCH_WAIT_MS"]) / 1000
    if "BENCH_SWITCH_INTERVAL_MS" in os.environ:  # to see what the GIL's hand-over interval does to the tail
        sys.setswitchinterval(float(os.environ["BENCH_SWITCH_INTERVAL_MS"]) / 1000)

    app = create_gateway_app(os.environ.get("SWITCHBOARD_GATEWAY_CHANNEL", "whatsapp"))
    if not os.environ.get("BENCH_NO_GC_TUNING"):  # as `switchboard gateway` / `serve` run it
        from app.bootstrap import tune_gc

        tune_gc()

    @app.get("/_bench/batches")
    def batches() -> dict[str, Any]:
        return asdict(container().intake.batcher.stats)

    return app


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
