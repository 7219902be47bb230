"""Chaos run: scale-out Switchboard under load while a nemesis kills its processes, then count what came out.

    .venv/bin/python benchmarks/chaos.py [--duration 1200] [--rate 2] [--customers 8] [--kill-interval 8]
                                         [--redis-interval 90] [--llm-failure 0.3] [--seed 1] [--quick]

What runs (every process on this machine, every address 127.0.0.1):
- Postgres: the local server, in a database of the run's own (`--db`, default `switchboard_chaos`, dropped and
  created anew). Redis: a private `redis-server` on `--redis-port` (default 6431) with AOF
  (`--appendonly yes --appendfsync everysec`, `noeviction`: the settings of infra/docker-compose.yml), its data
  folder in the run's temporary folder; never the shared Redis.
- The roles, each its own process started as infra/README.md runs them: `switchboard serve` (API and every
  gateway; the WhatsApp webhooks go to it), `switchboard gateway telegram` (the Telegram webhooks go to this
  one) and `switchboard orchestrator` (orchestrator, dispatcher, outbox relay and redrive sweep).
- Vector store: scale-out wants a Qdrant server, which cannot be installed here. As tests/e2e/test_scale_out.py
  does, the vectors stay in the embedded store (qdrant-edge) in SWITCHBOARD_HOME, opened only by the one
  orchestrator process (the API and gateway processes never touch vectors). So there is one orchestrator, not
  replicas: a killed one is replaced by a new process, and the consumer group hands it what the dead one held.
- The fakes of tests/fakes, in this process: the Graph API (WhatsApp sends) and the Telegram Bot API receive the
  replies; an OpenAI-compatible LLM (the server's default LLM, `LLM_BASE_URL`) answers with the first sentence of
  its first passage, cited, and names the messages it answers in a closing question (`... about chaos3x17?`),
  but fails (503) or hangs (longer than the deadline) `--llm-failure` of the time, half each.

The load: `--customers` simulated customers (even ones on WhatsApp, odd ones on Telegram), each one conversation,
send signed webhooks at a steady total `--rate`; each text carries its customer and sequence number. Like the real
providers, a customer's webhook is retried (same provider message id) until the gateway answers 2xx.

The nemesis: every `--kill-interval` seconds (jittered) it SIGKILLs a random role among those that have served for
`--min-up` seconds (a role still starting is left to start), which a supervisor starts again after
`--restart-delay`; every `--redis-interval` seconds it kills Redis with SIGKILL and starts it again on
the same AOF folder after 1-3 s.

Then it drains: load and nemesis stop, every role and Redis run, and it waits until no inbound message is
`received`, no reply `pending` and the fakes received nothing new for 15 s (at most `--drain-timeout`). The
checker reads the fakes' received messages and the database and counts: sent (accepted by a gateway), lost (no
reply reached the customer and no escalation), duplicated (one reply delivered twice, or one message answered by
two replies), unexpected (a delivered message the database has no reply for, or a reply naming a message that
was not sent), and neither answered nor escalated (final state of each message, merged ones followed to the
message that answered their turn). Exit status 1 when any of those is above 0.

`--quick` is a one-minute run for developers (fewer kills; the figures in docs/reliability.md come from a long
run). Progress goes to stdout every 10 s; the roles' logs stay in the printed folder with `--keep`.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import platform
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.chaos_check import Report, count, name_all, named, tag  # noqa: E402
from tests.fakes.fake_meta import FakeGraph  # noqa: E402
from tests.fakes.fake_telegram import FakeTelegram  # noqa: E402
from tests.fakes.openai_server import FakeOpenAIServer, Step, first_sentence, prompt_passages  # noqa: E402
from tests.gateways.conftest import meta_signature  # noqa: E402

EXAMPLE = ROOT / "tenants" / "northwind"
PG_ADMIN_URL = os.environ.get("SWITCHBOARD_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
WA_PHONE_ID, WA_SECRET, TG_TOKEN = "109876543210", "chaos-app-secret", "777000:chaos-bot-token"
READY_LINE = b"orchestrator running"  # what `switchboard orchestrator` logs once its consumers run
TELEGRAM_CHAT_BASE = 900_000  # customer c writes on Telegram from chat TELEGRAM_CHAT_BASE + c


# ---------------------------------------------------------------------------------------------------------------
# The fake LLM: answers faithfully, or fails, or hangs


class ChaosLLM(FakeOpenAIServer):
    def __init__(self, rng: random.Random, failure: float, hang_s: float) -> None:
        super().__init__()
        self.rng, self.failure, self.hang_s = rng, failure, hang_s
        self.counts: Counter[str] = Counter()

    def _next_step(self) -> Step:
        with self._lock:
            draw = self.rng.random()
            kind = "fail" if draw < self.failure / 2 else "hang" if draw < self.failure else "ok"
            self.counts[kind] += 1
        if kind == "fail":
            return Step(status=503, error_message="chaos: the model is overloaded")
        if kind == "hang":
            return Step(reply=_answer, delay_s=self.hang_s)
        return Step(reply=_answer)


def _answer(body: dict[str, Any]) -> str:
    """Passage 1's first sentence, cited (the grounding check lets it out), and a question naming the messages of
    the turn: the checker reads from it which messages a delivered reply answers."""
    turn = body["messages"][-1]["content"]
    passages = prompt_passages(body)
    if not passages:
        return "I'm not sure about that one, let me get a colleague. [[ESCALATE]]"
    return f"{first_sentence(passages[0])[:300]} [1] Anything else about {name_all(named(turn))}?"


# ---------------------------------------------------------------------------------------------------------------
# Processes: Redis and the roles


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    def __init__(self, port: int, folder: Path) -> None:
        self.port, self.folder = port, folder
        folder.mkdir(parents=True, exist_ok=True)
        self.proc: subprocess.Popen[bytes] | None = None
        self.restarts = 0
        self.log = open(folder / "redis.log", "ab")  # noqa: SIM115

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.folder),
             "--appendonly", "yes", "--appendfsync", "everysec", "--save", "", "--maxmemory-policy", "noeviction"],
            stdout=self.log, stderr=subprocess.STDOUT)
        import redis

        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(redis.RedisError):
                if redis.Redis(port=self.port, socket_timeout=1).ping():
                    return
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"redis-server on port {self.port} did not start: see {self.folder}/redis.log")
            time.sleep(0.1)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()


@dataclass
class Role:
    name: str
    args: list[str]
    env: dict[str, str]
    log_dir: Path
    ready_url: str | None = None  # answers 200 once ready; else the log line READY_LINE says so
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0
    kills: int = 0
    died_at: float | None = None
    ready_at: float | None = None
    log_offset: int = 0

    @property
    def log_path(self) -> Path:
        return self.log_dir / f"{self.name}.log"

    def start(self) -> None:
        log = open(self.log_path, "ab")  # noqa: SIM115
        log.write(f"\n==== start {self.starts + 1} at {datetime.now(UTC):%H:%M:%S}\n".encode())
        log.flush()
        self.log_offset, self.ready_at = log.tell(), None
        self.proc = subprocess.Popen([sys.executable, "-m", "app.cli", *self.args], cwd=ROOT, env=self.env,
                                     stdout=log, stderr=subprocess.STDOUT)
        log.close()
        self.starts += 1
        self.died_at = None

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def probe(self) -> bool:
        """Is this start of the role serving yet (remembered in `ready_at`)?"""
        if self.ready_at is None and self.alive:
            if self.ready_url is not None:
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(self.ready_url, timeout=1).status_code == 200:
                        self.ready_at = time.monotonic()
            else:
                with open(self.log_path, "rb") as log:
                    log.seek(self.log_offset)
                    if READY_LINE in log.read():
                        self.ready_at = time.monotonic()
        return self.ready_at is not None and self.alive

    def kill(self) -> bool:
        if not self.alive:
            return False
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        self.kills += 1
        return True

    def stop(self) -> None:
        if self.alive:
            assert self.proc is not None
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class Supervisor:
    """Starts a role again once it is dead (as Kubernetes would), `delay_s` after it was seen dead."""

    def __init__(self, roles: list[Role], delay_s: float) -> None:
        self.roles, self.delay_s = roles, delay_s
        self.lock = threading.Lock()
        self.stop_event = threading.Event()
        self.unexpected_exits = 0
        self.thread = threading.Thread(target=self._run, name="supervisor", daemon=True)

    def _run(self) -> None:
        while not self.stop_event.wait(0.2):
            now = time.monotonic()
            with self.lock:
                for role in self.roles:
                    if role.alive:
                        role.probe()
                        continue
                    if role.died_at is None:
                        role.died_at = now
                    elif now - role.died_at >= self.delay_s:
                        role.start()


def wait_http(url: str, timeout: float, role: Role) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=2).status_code == 200:
                return
        time.sleep(0.3)
    raise SystemExit(f"{role.name} did not answer {url} within {timeout:.0f} s: see {role.log_dir}/{role.name}.log")


# ---------------------------------------------------------------------------------------------------------------
# Setup: the database, the tenant, its channels


def create_database(name: str) -> str:
    import psycopg

    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    return PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"


def cli(env: dict[str, str], *args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "app.cli", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True)
    if done.returncode != 0:
        raise SystemExit(f"switchboard {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
    return done.stdout


def add_channels(api: str, admin_key: str, graph: FakeGraph, telegram: FakeTelegram) -> tuple[str, str]:
    """The WhatsApp and Telegram accounts through the admin API, pointed at the fakes; returns the Telegram
    webhook path and its secret token."""
    headers = {"Authorization": f"Bearer {admin_key}"}
    wa = httpx.post(f"{api}/admin/v1/channels", headers=headers, timeout=30, json={
        "channel": "whatsapp", "external_id": WA_PHONE_ID,
        "credentials": {"access_token": "chaos-token", "app_secret": WA_SECRET, "verify_token": "chaos-verify"},
        "config": {"api_base_url": graph.url}})
    tg = httpx.post(f"{api}/admin/v1/channels", headers=headers, timeout=30, json={
        "channel": "telegram", "credentials": {"bot_token": TG_TOKEN}, "config": {"api_base_url": telegram.url}})
    for response in (wa, tg):
        if response.status_code != 201:
            raise SystemExit(f"adding a channel failed: {response.status_code} {response.text}")
    body = tg.json()
    path = "/" + str(body["webhook_url"]).split("/", 3)[3]
    return path, str(body["setup"]["secret_token"])


# ---------------------------------------------------------------------------------------------------------------
# The load: customers sending signed webhooks, retried until accepted


@dataclass
class Traffic:
    whatsapp_url: str
    telegram_url: str
    telegram_secret: str
    questions: list[str]
    rng: random.Random
    give_up_at: float = float("inf")
    accepted: dict[tuple[int, int], float] = field(default_factory=dict)
    refused: set[tuple[int, int]] = field(default_factory=set)
    attempts: int = 0
    failed_attempts: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    update_ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def text(self, customer: int, seq: int) -> str:
        return f"{self.rng.choice(self.questions)} ({tag(customer, seq)})"

    def request(self, customer: int, seq: int, text: str) -> tuple[str, bytes, dict[str, str]]:
        if customer % 2 == 0:
            wa_id = f"1555{customer:07d}"
            body = {"object": "whatsapp_business_account", "entry": [{"id": "WABA1", "changes": [{
                "field": "messages", "value": {
                    "messaging_product": "whatsapp",
                    "metadata": {"display_phone_number": "15550001111", "phone_number_id": WA_PHONE_ID},
                    "contacts": [{"profile": {"name": f"Customer {customer}"}, "wa_id": wa_id}],
                    "messages": [{"from": wa_id, "id": f"wamid.{tag(customer, seq)}", "type": "text",
                                  "timestamp": str(int(time.time())), "text": {"body": text}}]}}]}]}
            raw = json.dumps(body).encode()
            return self.whatsapp_url, raw, {"X-Hub-Signature-256": meta_signature(WA_SECRET, raw),
                                            "Content-Type": "application/json"}
        chat = TELEGRAM_CHAT_BASE + customer
        update = {"update_id": next(self.update_ids), "message": {
            "message_id": seq, "date": int(time.time()), "text": text,
            "chat": {"id": chat, "type": "private"}, "from": {"id": chat, "is_bot": False, "first_name": "C"}}}
        return self.telegram_url, json.dumps(update).encode(), {
            "X-Telegram-Bot-Api-Secret-Token": self.telegram_secret, "Content-Type": "application/json"}

    def send(self, customer: int, seq: int) -> None:
        """One message, retried as a provider does (same message id) until a gateway accepts it."""
        url, raw, headers = self.request(customer, seq, self.text(customer, seq))
        backoff = 0.5
        with httpx.Client(timeout=10) as client:
            while time.monotonic() < self.give_up_at:
                with self.lock:
                    self.attempts += 1
                try:
                    if client.post(url, content=raw, headers=headers).status_code == 200:
                        with self.lock:
                            self.accepted[customer, seq] = time.monotonic()
                        return
                except httpx.HTTPError:
                    pass
                with self.lock:
                    self.failed_attempts += 1
                time.sleep(backoff)
                backoff = min(backoff * 2, 4.0)
        with self.lock:
            self.refused.add((customer, seq))


# ---------------------------------------------------------------------------------------------------------------
# The nemesis


class Nemesis:
    def __init__(self, roles: list[Role], supervisor: Supervisor, redis_server: RedisServer, rng: random.Random,
                 kill_interval: float, redis_interval: float, min_up_s: float) -> None:
        self.roles, self.supervisor, self.redis = roles, supervisor, redis_server
        self.min_up_s = min_up_s
        self.rng, self.kill_interval, self.redis_interval = rng, kill_interval, redis_interval
        self.stop_event = threading.Event()
        self.kills = 0
        self.thread = threading.Thread(target=self._run, name="nemesis", daemon=True)

    def _run(self) -> None:
        next_redis = time.monotonic() + self.redis_interval
        while not self.stop_event.wait(self.kill_interval * self.rng.uniform(0.6, 1.4)):
            if time.monotonic() >= next_redis:
                self.redis.kill()
                time.sleep(self.rng.uniform(1, 3))
                self.redis.start()
                self.redis.restarts += 1
                next_redis = time.monotonic() + self.redis_interval
                continue
            # A role that has not finished starting is left to start: killing it before it serves would test
            # nothing but the start-up. So the kill waits for a role that serves (and has for `min_up_s`).
            while not self.stop_event.is_set():
                with self.supervisor.lock:
                    now = time.monotonic()
                    ready = [r for r in self.roles if r.alive and r.ready_at and now - r.ready_at >= self.min_up_s]
                    if ready and self.rng.choice(ready).kill():
                        self.kills += 1
                        break
                self.stop_event.wait(0.2)


# ---------------------------------------------------------------------------------------------------------------
# The checker


def received(graph: FakeGraph, telegram: FakeTelegram) -> list[tuple[int, str]]:
    """(customer, text) of every message the fake providers were asked to send, in order."""
    out: list[tuple[int, str]] = []
    for rec in list(graph.sends()):
        body = rec.json()
        if body.get("type") == "text":
            out.append((int(body["to"][4:]), str(body["text"]["body"])))
    for chat, text in telegram.texts():
        out.append((int(chat) - TELEGRAM_CHAT_BASE, text))
    return out


def database_rows(db_url: str) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """Every message with the customer of its conversation, and the escalations (message id -> reason)."""
    import psycopg
    from psycopg.rows import dict_row

    with psycopg.connect(db_url, row_factory=dict_row) as conn:
        rows = conn.execute(
            "SELECT m.id, m.direction, m.status, m.text, m.meta, m.channel, c.external_id AS contact "
            "FROM messages m JOIN conversations v ON v.id = m.conversation_id "
            "JOIN contacts c ON c.id = v.contact_id").fetchall()
        escalations = {r["message_id"]: r["reason"] for r in conn.execute(
            "SELECT message_id, reason FROM escalations").fetchall()}
    for r in rows:  # WhatsApp contacts are 1555 + the customer; Telegram chats TELEGRAM_CHAT_BASE + the customer
        contact = str(r["contact"])
        r["customer"] = int(contact[4:]) if r["channel"] == "whatsapp" else int(contact) - TELEGRAM_CHAT_BASE
    return rows, escalations


def check(traffic: Traffic, graph: FakeGraph, telegram: FakeTelegram, db_url: str) -> Report:
    rows, escalations = database_rows(db_url)
    return count(traffic.accepted, rows, escalations, received(graph, telegram), refused=len(traffic.refused))


# ---------------------------------------------------------------------------------------------------------------
# The run


def pending_counts(db_url: str) -> tuple[int, int]:
    import psycopg

    with psycopg.connect(db_url) as conn:
        row = conn.execute(
            "SELECT count(*) FILTER (WHERE direction = 'in' AND status = 'received'), "
            "count(*) FILTER (WHERE direction = 'out' AND status = 'pending') FROM messages").fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=float, default=1200, help="seconds of load and nemesis")
    p.add_argument("--rate", type=float, default=2.0, help="webhooks per second, all customers together")
    p.add_argument("--customers", type=int, default=8, help="simulated customers (one conversation each)")
    p.add_argument("--kill-interval", type=float, default=8.0, help="mean seconds between role kills")
    p.add_argument("--redis-interval", type=float, default=90.0, help="seconds between Redis kills")
    p.add_argument("--min-up", type=float, default=2.0, help="seconds a role serves before it may be killed")
    p.add_argument("--restart-delay", type=float, default=1.0, help="seconds before a dead role is started again")
    p.add_argument("--llm-failure", type=float, default=0.3, help="share of LLM calls that fail or hang")
    p.add_argument("--llm-deadline", type=float, default=6.0, help="LLM_DEADLINE_S of the roles; a hang lasts 2x")
    p.add_argument("--claim-idle-ms", type=int, default=10_000, help="SWITCHBOARD_BUS_CLAIM_IDLE_MS of the roles")
    p.add_argument("--drain-timeout", type=float, default=420.0, help="most seconds to wait for the drain")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--redis-port", type=int, default=6431, help="the run's own Redis (6400-6499)")
    p.add_argument("--db", default="switchboard_chaos", help="the run's own Postgres database (dropped first)")
    p.add_argument("--json", type=Path, help="also write the figures to this file")
    p.add_argument("--keep", action="store_true", help="keep the run's folder (logs, Redis AOF)")
    p.add_argument("--quick", action="store_true", help="~1 minute: --duration 45 --kill-interval 4 "
                   "--redis-interval 20")
    args = p.parse_args(argv)
    if args.quick:
        args.duration, args.kill_interval, args.redis_interval = 45.0, 4.0, 20.0
    if not 6400 <= args.redis_port <= 6499:
        p.error("--redis-port must be in 6400-6499 (the shared Redis on 6379 is never touched)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    rng = random.Random(args.seed)
    work = Path(tempfile.mkdtemp(prefix="switchboard-chaos-"))
    print(f"chaos run: folder {work}", flush=True)
    started_at = datetime.now(UTC)
    redis_server = RedisServer(args.redis_port, work / "redis")
    llm = ChaosLLM(random.Random(args.seed + 1), args.llm_failure, hang_s=args.llm_deadline * 2)
    llm.start()
    graph, telegram = FakeGraph(), FakeTelegram()
    roles: list[Role] = []
    supervisor: Supervisor | None = None
    nemesis: Nemesis | None = None
    traffic: Traffic | None = None
    pool = ThreadPoolExecutor(max_workers=32, thread_name_prefix="customer")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop as on Ctrl-C: the finally below cleans up
    try:
        redis_server.start()
        db_url = create_database(args.db)
        serve_port, gateway_port = free_port(), free_port()
        from cryptography.fernet import Fernet

        env = {k: v for k, v in os.environ.items() if not k.startswith(("SWITCHBOARD_", "LLM_", "QDRANT", "S3_"))}
        env.update({
            "SWITCHBOARD_HOME": str(work / "home"), "DATABASE_URL": db_url, "REDIS_URL": redis_server.url,
            "SWITCHBOARD_SECRET_KEY": Fernet.generate_key().decode(),
            "SWITCHBOARD_PUBLIC_BASE_URL": f"http://127.0.0.1:{serve_port}",
            "OUTBOUND_ALLOW_HOSTS": "127.0.0.1",  # the fake providers and LLM listen on loopback
            "LLM_BASE_URL": llm.base_url, "LLM_API_KEY": llm.api_key, "LLM_MODEL": "chaos",
            "LLM_TIMEOUT_S": str(args.llm_deadline / 2), "LLM_MAX_RETRIES": "1",
            "LLM_DEADLINE_S": str(args.llm_deadline),
            "SWITCHBOARD_BUS_CLAIM_IDLE_MS": str(args.claim_idle_ms),
            "SWITCHBOARD_ORCHESTRATOR_CONCURRENCY": "16",
            "SWITCHBOARD_LOG_FORMAT": "json",
        })
        print("setup: migrate, tenant, ingest (embedded vectors in the run's home)", flush=True)
        cli(env, "migrate")
        created = json.loads(cli(env, "tenant", "create", "northwind", "--from", str(EXAMPLE), "--json"))
        cli(env, "ingest", "--tenant", "northwind", str(EXAMPLE / "knowledge"))
        logs = work / "logs"
        logs.mkdir()
        roles = [
            Role("serve", ["serve", "--port", str(serve_port)], env, logs,
                 ready_url=f"http://127.0.0.1:{serve_port}/healthz"),
            Role("gateway-telegram", ["gateway", "telegram", "--port", str(gateway_port)], env, logs,
                 ready_url=f"http://127.0.0.1:{gateway_port}/healthz"),
            Role("orchestrator", ["orchestrator"], env, logs),
        ]
        for role in roles:
            role.start()
        wait_http(f"http://127.0.0.1:{serve_port}/readyz", 180, roles[0])
        wait_http(f"http://127.0.0.1:{gateway_port}/readyz", 180, roles[1])
        tg_path, tg_secret = add_channels(f"http://127.0.0.1:{serve_port}", created["admin_api_key"], graph,
                                          telegram)
        questions = [json.loads(line)["question"] for line in (EXAMPLE / "eval" / "questions.jsonl").open()]
        traffic = Traffic(f"http://127.0.0.1:{serve_port}/webhooks/whatsapp",
                          f"http://127.0.0.1:{gateway_port}{tg_path}", tg_secret, questions, random.Random(args.seed))
        supervisor = Supervisor(roles, args.restart_delay)
        supervisor.thread.start()
        nemesis = Nemesis(roles, supervisor, redis_server, rng, args.kill_interval, args.redis_interval,
                          args.min_up)
        nemesis.thread.start()

        print(f"load: {args.rate}/s from {args.customers} customers for {args.duration:.0f} s; nemesis every "
              f"~{args.kill_interval} s, Redis every {args.redis_interval} s; LLM fails or hangs "
              f"{args.llm_failure:.0%}", flush=True)
        seqs = [0] * args.customers
        start = time.monotonic()
        end = start + args.duration
        next_report = start + 10
        sent_total = 0
        while (now := time.monotonic()) < end:
            due = int((now - start) * args.rate) + 1
            while sent_total < due:
                customer = sent_total % args.customers
                seqs[customer] += 1
                pool.submit(traffic.send, customer, seqs[customer])
                sent_total += 1
            if now >= next_report:
                next_report += 10
                print(f"[{now - start:5.0f}s] webhooks {sent_total} accepted {len(traffic.accepted)} "
                      f"(failed attempts {traffic.failed_attempts}) delivered {len(received(graph, telegram))} "
                      f"kills {nemesis.kills} redis restarts {redis_server.restarts} llm {dict(llm.counts)} "
                      f"load {os.getloadavg()[0]:.2f}", flush=True)
            time.sleep(min(0.05, max(0.0, end - now)))

        nemesis.stop_event.set()
        nemesis.thread.join()
        if redis_server.proc is None or redis_server.proc.poll() is not None:
            redis_server.start()
        print(f"drain: nemesis stopped after {nemesis.kills} kills and {redis_server.restarts} Redis restarts; "
              "waiting for every message to end", flush=True)
        drain_start = time.monotonic()
        traffic.give_up_at = drain_start + args.drain_timeout / 2
        pool.shutdown(wait=True)
        quiet_since, last_delivered = time.monotonic(), -1
        while True:
            waiting_in, waiting_out = pending_counts(db_url)
            delivered = len(received(graph, telegram))
            now = time.monotonic()
            if delivered != last_delivered:
                quiet_since, last_delivered = now, delivered
            if waiting_in == waiting_out == 0 and now - quiet_since >= 15:
                break
            if now - drain_start > args.drain_timeout:
                print("drain: timed out", flush=True)
                break
            print(f"[drain {now - drain_start:4.0f}s] inbound received {waiting_in}, replies pending {waiting_out}, "
                  f"delivered {delivered}", flush=True)
            time.sleep(5)
        drain_s = time.monotonic() - drain_start
        report = check(traffic, graph, telegram, db_url)
        figures = {
            "command": "python benchmarks/chaos.py " + " ".join(argv if argv is not None else sys.argv[1:]),
            "machine": f"{platform.node()} {platform.machine()}, {os.cpu_count()} cores",
            "started": f"{started_at:%Y-%m-%d %H:%M} UTC", "load_average_end": os.getloadavg(),
            "duration_s": args.duration, "drain_s": round(drain_s), "webhooks_generated": sent_total,
            "webhook_attempts": traffic.attempts, "webhook_failed_attempts": traffic.failed_attempts,
            "kills": nemesis.kills, "kills_by_role": {r.name: r.kills for r in roles},
            "starts_by_role": {r.name: r.starts for r in roles}, "redis_restarts": redis_server.restarts,
            "llm_calls": dict(llm.counts), "seed": args.seed,
            **{k: v for k, v in report.__dict__.items()},
        }
        print(json.dumps(figures, indent=2), flush=True)
        if args.json:
            args.json.write_text(json.dumps(figures, indent=2) + "\n")
        verdict = "PASS" if report.failures == 0 else "FAIL"
        print(f"{verdict}: sent {report.sent}, lost {report.lost}, duplicated {report.duplicated_deliveries} "
              f"deliveries + {report.duplicated_answers} answers, unexpected {report.unexpected}, neither answered "
              f"nor escalated {report.unanswered_unescalated}; {nemesis.kills} kills, {redis_server.restarts} "
              "Redis restarts", flush=True)
        return 0 if report.failures == 0 else 1
    finally:
        if nemesis is not None:
            nemesis.stop_event.set()
            if nemesis.thread.is_alive():
                nemesis.thread.join(10)
        if traffic is not None:
            traffic.give_up_at = 0
        pool.shutdown(wait=False, cancel_futures=True)
        if supervisor is not None:
            supervisor.stop_event.set()
            supervisor.thread.join()
        for role in roles:
            role.stop()
        redis_server.stop()
        llm.stop()
        graph.close()
        telegram.close()
        if args.keep:
            print(f"kept {work}", flush=True)
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
