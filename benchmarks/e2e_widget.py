"""End to end through the web widget: visitors start a session, send a question and wait for the bot's reply,
closed loop, against an embedded `switchboard serve` (a subprocess) with the example tenant (tenants/northwind).

    .venv/bin/python benchmarks/e2e_widget.py [--levels 1,8,32,128] [--requests 400] [--llm instant,1s]
                                              [--transport sse|poll] [--slow-requests 128] [--level-timeout 180]
                                              [--unique-questions] [--database-url postgresql+psycopg://...]
                                              [--warm-passes 2] [--restart]

Each level starts `concurrency` new visitors; each opens a session and its event stream (`GET .../events`, or
with `--transport poll` long-polls `GET .../messages?wait=`); once all of them are connected, they send the eval
questions one after another, each as soon as the previous one is answered, until the level has `--requests`
replies (`--slow-requests` with the 1 s LLM) or `--level-timeout` passed. The level's time and the server's CPU
are counted from that moment, so the first `concurrency` questions arrive together (`--slow-requests 64` at
concurrency 64 is "64 customers ask at once") and no send waits behind other visitors' sessions being opened.
Each visitor has its own HTTP client, as each browser has. Before the first level each server is asked every eval
question `--warm-passes` times, so no level pays first uses (a passage's first citation, a question's first
embedding) that later ones do not; `--restart` then starts a new server on the same home, so the levels start as
after a deploy, with only what the database keeps. Latency is send -> reply event. The LLM is the OpenAI-compatible
fake of tests/fakes/openai_server.py in its own process, answering each prompt with the first sentence of its first
passage, cited, at once (`instant`) or after one second (`1s`). Rate limits are turned off in the server: the load
comes from one IP and a few visitors. The 76 eval questions repeat, so most queries' embeddings come from the
server's query cache (app/knowledge/query_cache.py); `--unique-questions` gives each message a distinct suffix
(" (ref 5f2a1c-3-17)"), so no question is asked twice and every one is embedded.

Printed per level: req/s, p50/p95/p99 ms, errors (failed requests and replies not received within 60 s),
escalated (replies without citations: the escalation notice), server CPU ms per message (user + system of the
server process over the level) and the server's peak RSS during the level. The load generator runs on the same
machine and takes CPU from the server; the table says so.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
EXAMPLE = ROOT / "tenants" / "northwind"
REPLY_TIMEOUT_S = 60.0
RATE_LIMITS_OFF = {name: "" for name in (
    "RATE_WIDGET_SESSIONS_PER_IP", "RATE_WIDGET_SENDS_PER_IP", "RATE_WIDGET_SENDS_PER_VISITOR",
    "RATE_LLM_CALLS_PER_TENANT")}


# ---------------------------------------------------------------------------------------------------------------
# The fake LLM, in its own process so its threads do not compete with the load generator's event loop.



def _answer(body: dict[str, Any]) -> str:
    """The first sentence of answer text of passage 1 (an FAQ passage's answer, not its question), cited: a reply
    the grounding check lets go out on its own, as a faithful model's would."""
    from tests.fakes.openai_server import first_sentence, prompt_passages

    passages = prompt_passages(body)
    if not passages:
        return "I'm not sure about that one, let me get a colleague. [[ESCALATE]]"
    return f"{first_sentence(passages[0])[:300]} [1]"


def _fake_llm(delay_s: float, ready: Any, stop: Any) -> None:
    from tests.fakes.openai_server import FakeOpenAIServer

    with FakeOpenAIServer() as server:
        server.reply_with(_answer, delay_s=delay_s)
        ready.put((server.base_url, server.api_key))
        stop.wait()


class FakeLLM:
    def __init__(self, delay_s: float) -> None:
        ctx = mp.get_context("spawn")
        queue, self._stop = ctx.Queue(), ctx.Event()
        self._process = ctx.Process(target=_fake_llm, args=(delay_s, queue, self._stop), daemon=True)
        self._process.start()
        self.base_url, self.api_key = queue.get(timeout=60)

    def close(self) -> None:
        self._stop.set()
        self._process.join(10)


# ---------------------------------------------------------------------------------------------------------------
# The server under test


def setup_home(home: Path, services: dict[str, str]) -> str:
    """Create the example tenant and ingest its pack with the CLI, before the server starts. `services`: the
    database the server will use (`--database-url`); SQLite in the home when empty."""
    env = {**os.environ, "SWITCHBOARD_HOME": str(home)}
    for var in ("DATABASE_URL", "REDIS_URL", "QDRANT_URL", "S3_BUCKET", "LLM_BASE_URL", "LLM_API_KEY"):
        env.pop(var, None)
        env.pop(f"SWITCHBOARD_{var}", None)
    env.update(services)

    def cli(*args: str) -> str:
        done = subprocess.run([sys.executable, "-m", "app.cli", *args], cwd=ROOT, env=env, capture_output=True,
                              text=True)
        if done.returncode != 0:
            raise SystemExit(f"switchboard {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
        return done.stdout

    created = cli("tenant", "create", "northwind", "--from", str(EXAMPLE))
    widget = re.search(r"/widget/(\S+)", created)
    if widget is None:
        raise SystemExit(f"no widget id in the output of 'switchboard tenant create':\n{created}")
    cli("ingest", "--tenant", "northwind", str(EXAMPLE / "knowledge"))
    return widget.group(1)


def scratch_database(server_url: str) -> str:
    """Create a database of this run's own on the Postgres server `server_url` names (the database that URL names
    is only connected to, never written) and return its URL."""
    url = sqlalchemy.engine.make_url(server_url).set(database=f"sb_bench_widget_{os.getpid()}")
    _on_server(server_url, f'CREATE DATABASE "{url.database}"')
    return url.render_as_string(hide_password=False)


def drop_database(server_url: str, database_url: str) -> None:
    name = sqlalchemy.engine.make_url(database_url).database
    _on_server(server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _on_server(server_url: str, statement: str) -> None:
    engine = sqlalchemy.create_engine(server_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.exec_driver_sql(statement)
    engine.dispose()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Served:
    """A server under test in a process of its own, listening on `port`: ready when `ready_path` answers 200; its
    CPU and peak RSS read from /proc, summed over it and its children."""

    def __init__(self, command: list[str], env: dict[str, str], cwd: Path, log: Path, port: int,
                 ready_path: str) -> None:
        self.port, self.url = port, f"http://127.0.0.1:{port}"
        self.log = open(log, "wb")  # noqa: SIM115
        self.process = subprocess.Popen(command, cwd=cwd, env=env, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 180
        while True:
            if self.process.poll() is not None:
                raise SystemExit(f"the server exited: see {self.log.name}")
            try:
                if httpx.get(f"{self.url}{ready_path}", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit(f"the server did not become ready: see {self.log.name}")
            time.sleep(0.2)

    def tree(self) -> list[int]:
        """The server and its answering processes (ANSWER_PROCESSES, app/answerers.py)."""
        pids, todo = [], [self.process.pid]
        while todo:
            pid = todo.pop()
            pids.append(pid)
            for task in Path(f"/proc/{pid}/task").glob("*/children"):
                todo.extend(int(child) for child in task.read_text().split())
        return pids

    def cpu_s(self) -> float:
        total = 0.0
        for pid in self.tree():
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime
        return total

    def peak_rss_mb(self) -> float:
        """Summed over the processes (each one's peak: an upper bound of the tree's)."""
        total = 0.0
        for pid in self.tree():
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1]) / 1024
        return total

    def reset_peak_rss(self) -> None:
        for pid in self.tree():
            Path(f"/proc/{pid}/clear_refs").write_text("5")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.log.close()


class Server(Served):
    """Embedded `switchboard serve` on `home`, answering with `llm`."""

    def __init__(self, home: Path, llm: FakeLLM, services: dict[str, str]) -> None:
        env = {**os.environ, "SWITCHBOARD_HOME": str(home), "LLM_BASE_URL": llm.base_url,
               "LLM_API_KEY": llm.api_key, "LLM_MODEL": "fake", **RATE_LIMITS_OFF, **services}
        port = free_port()
        super().__init__([sys.executable, "-m", "app.cli", "serve", "--port", str(port)], env, ROOT,
                         home / f"serve-{port}.log", port, "/readyz")


# ---------------------------------------------------------------------------------------------------------------
# The load


@dataclass
class Level:
    wanted: int
    deadline: float
    run: str = ""  # tells this level's questions from other levels' (--unique-questions)
    issued: int = 0
    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    escalated: int = 0
    first_error: str | None = None

    def take(self) -> bool:
        if self.issued >= self.wanted or time.monotonic() > self.deadline:
            return False
        self.issued += 1
        return True

    def fail(self, what: str) -> None:
        self.errors += 1
        self.first_error = self.first_error or what


async def _events(client: httpx.AsyncClient, url: str, auth: dict[str, str], out: asyncio.Queue[Any]) -> None:
    """The event stream's events into `out`; its end, whatever ends it, as an ("error", why) entry, so a visitor
    waiting for an event never waits for ever (a browser's EventSource would reconnect instead)."""
    why = "event stream closed by the server"
    try:
        async with client.stream("GET", url, headers=auth, timeout=httpx.Timeout(30, read=None)) as response:
            if response.status_code != 200:
                why = f"event stream HTTP {response.status_code}"
                return
            kind, data = "message", list[str]()
            async for line in response.aiter_lines():
                if line == "":
                    if data:
                        await out.put((kind, json.loads("\n".join(data))))
                    kind, data = "message", []
                elif line.startswith("event:"):
                    kind = line[6:].strip()
                elif line.startswith("data:"):
                    data.append(line[5:].removeprefix(" "))
    except httpx.HTTPError as exc:
        why = f"event stream: {exc!r}"
    finally:
        out.put_nowait(("error", why))


async def _poll_reply(client: httpx.AsyncClient, api: str, auth: dict[str, str], cursor: str | None
                      ) -> tuple[dict[str, Any], str | None]:
    deadline = time.monotonic() + REPLY_TIMEOUT_S
    while time.monotonic() < deadline:
        params = {"wait": "20", **({"after": cursor} if cursor else {})}
        response = await client.get(f"{api}/messages", headers=auth, params=params)
        response.raise_for_status()
        body = response.json()
        cursor = body["cursor"] or cursor
        out = [m for m in body["messages"] if m["direction"] == "out"]
        if out:
            return out[0], cursor
    raise TimeoutError("no reply")


async def visitor(api: str, questions: list[str], level: Level, transport: str, index: int, unique: bool,
                  stride: int | None, connected: asyncio.Barrier) -> None:
    """`stride`: visitor `index` asks questions index, index + stride, ... (the warm-up: each question once).
    Every visitor opens its session and event stream, then waits at `connected` for the others (one that failed
    to connect passes it too), so the first questions arrive together and no send waits behind another visitor's
    session being opened. Each visitor has an HTTP client of its own, as each browser does: one client shared by
    128 visitors spent ~23 ms of the load generator's CPU per message in its connection pool (~3 ms at 8), and the
    load generator, not the server, set the pace."""
    async with httpx.AsyncClient(timeout=REPLY_TIMEOUT_S, limits=httpx.Limits(max_connections=4)) as client:
        await _visit(client, api, questions, level, transport, index, unique, stride, connected)


async def _visit(client: httpx.AsyncClient, api: str, questions: list[str], level: Level, transport: str,
                 index: int, unique: bool, stride: int | None, connected: asyncio.Barrier) -> None:
    reader: asyncio.Task[None] | None = None
    auth: dict[str, str] | None = None
    events: asyncio.Queue[Any] = asyncio.Queue()
    try:
        session = await client.post(f"{api}/sessions", json={})
        if session.status_code != 201:
            level.fail(f"session HTTP {session.status_code}: {session.text[:200]}")
            return
        auth = {"Authorization": f"Bearer {session.json()['token']}"}
        if transport == "sse":
            reader = asyncio.create_task(_events(client, f"{api}/events", auth, events))
            try:
                kind, data = await asyncio.wait_for(events.get(), REPLY_TIMEOUT_S)
            except TimeoutError:
                kind, data = "error", "no ready event"
            if kind != "ready":
                level.fail(f"event stream: expected ready, got {kind} {data}")
                auth = None
    finally:
        await connected.wait()
    try:
        if auth is not None:
            await _ask(client, api, auth, events, questions, level, transport, index, unique, stride)
    finally:
        if reader is not None:
            reader.cancel()


async def _ask(client: httpx.AsyncClient, api: str, auth: dict[str, str], events: asyncio.Queue[Any],
               questions: list[str], level: Level, transport: str, index: int, unique: bool, stride: int | None
               ) -> None:
    """A connected visitor's questions, each sent once the reply to the one before has arrived. With `stride` (the
    warm-up) exactly its own share, whatever the other visitors' pace: taking turns from the level's count let a
    visitor whose questions escalate at once (no LLM wait) ask its share again while slower ones never reached
    theirs: in one run 9 of the 76 questions went unasked, and the first level paid their first citations."""
    cursor: str | None = None
    n = 0
    while not (stride and index + n * stride >= len(questions)) and level.take():
        text = questions[index + n * stride if stride else (index * 7 + n) % len(questions)]
        n += 1
        if unique:
            text = f"{text} (ref {level.run}-{index}-{n})"
        started = time.perf_counter()
        try:
            sent = await client.post(f"{api}/messages", headers=auth,
                                     json={"text": text, "client_message_id": f"b{n}-{uuid.uuid4().hex[:8]}"})
        except httpx.HTTPError as exc:  # counted, not fatal: a dropped connection on a loaded machine
            level.fail(f"send: {exc!r}")
            continue
        if sent.status_code != 202:
            level.fail(f"send HTTP {sent.status_code}: {sent.text[:200]}")
            continue
        try:
            if transport == "sse":
                while True:
                    kind, reply = await asyncio.wait_for(events.get(), REPLY_TIMEOUT_S)
                    if kind == "error":
                        raise RuntimeError(reply)
                    if kind == "message" and reply["direction"] == "out":
                        break
            else:
                reply, cursor = await _poll_reply(client, api, auth, cursor)
        except (TimeoutError, RuntimeError, httpx.HTTPError) as exc:
            level.fail(f"reply: {exc!r}")
            return
        level.latencies.append(time.perf_counter() - started)
        if not reply.get("citations"):
            level.escalated += 1


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


async def run_level(server: Server, widget: str, questions: list[str], concurrency: int, requests: int,
                    transport: str, timeout_s: float, unique: bool = False, every_question: bool = False
                    ) -> dict[str, Any]:
    api = f"{server.url}/widget/v1/{widget}"
    level = Level(wanted=requests, deadline=time.monotonic() + timeout_s, run=uuid.uuid4().hex[:6])
    server.reset_peak_rss()

    async def progress() -> None:
        while True:
            await asyncio.sleep(5)
            print(f"    c={concurrency}: {len(level.latencies)}/{requests} replies, {level.errors} errors", flush=True)

    ticker = asyncio.create_task(progress())
    stride = concurrency if every_question else None
    connected = asyncio.Barrier(concurrency + 1)
    visitors = [asyncio.create_task(visitor(api, questions, level, transport, i, unique, stride, connected))
                for i in range(concurrency)]
    await connected.wait()  # measured from here: every visitor connected, the first questions on their way
    cpu0, t0, mine0 = server.cpu_s(), time.perf_counter(), time.process_time()
    await asyncio.gather(*visitors)
    ticker.cancel()
    elapsed, cpu, mine = time.perf_counter() - t0, server.cpu_s() - cpu0, time.process_time() - mine0
    done = len(level.latencies)
    return {
        "concurrency": concurrency, "replies": done, "seconds": round(elapsed, 1),
        "req_s": round(done / elapsed, 1) if elapsed else 0.0,
        "p50_ms": round(percentile(level.latencies, 0.50) * 1000), "p95_ms": round(percentile(level.latencies, 0.95)
                                                                                     * 1000),
        "p99_ms": round(percentile(level.latencies, 0.99) * 1000), "errors": level.errors,
        "escalated": level.escalated, "cpu_ms_per_msg": round(cpu * 1000 / done, 1) if done else None,
        "client_cpu_ms_per_msg": round(mine * 1000 / done, 1) if done else None,
        "peak_rss_mb": round(server.peak_rss_mb()), "first_error": level.first_error,
    }


def machine_speed() -> float:
    """Seconds a pure-Python loop of 20 M additions takes: these VMs' speed differs by up to ~3x between sessions
    and drifts within one, so every report carries it, taken before and after the levels."""
    started, total = time.perf_counter(), 0
    for i in range(20_000_000):
        total += i
    return round(time.perf_counter() - started, 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--levels", default="1,8,32,128")
    parser.add_argument("--requests", type=int, default=400, help="replies per level with the instant LLM")
    parser.add_argument("--slow-requests", type=int, default=128, help="replies per level with the 1 s LLM")
    parser.add_argument("--llm", default="instant,1s", help="instant and/or 1s")
    parser.add_argument("--transport", choices=["sse", "poll"], default="sse")
    parser.add_argument("--level-timeout", type=float, default=180.0, help="stop issuing after this many seconds")
    parser.add_argument("--warm-passes", type=int, default=1,
                        help="times every eval question is asked before the levels (with ANSWER_PROCESSES: more)")
    parser.add_argument("--restart", action="store_true",
                        help="restart the server after the warm-up, so the levels start as after a deploy")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--keep-home", action="store_true", help="keep the temporary home (and the server log)")
    parser.add_argument("--unique-questions", action="store_true",
                        help="no question asked twice: each gets a distinct suffix, so the query cache never hits")
    parser.add_argument("--database-url", help="a Postgres server (any database on it) on which the run creates a "
                        "database of its own, dropped at the end, for the server instead of SQLite")
    args = parser.parse_args()
    # Postgres with embedded `serve` (the in-process bus and qdrant-edge): scale-out's orchestrator replicas need a
    # Qdrant server, which this machine cannot run.
    services = {"SWITCHBOARD_DATABASE_URL": scratch_database(args.database_url)} if args.database_url else {}
    levels = [int(x) for x in args.levels.split(",")]
    questions = [json.loads(line)["question"] for line in (EXAMPLE / "eval" / "questions.jsonl").open()]

    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    speed_before = machine_speed()
    home = Path(tempfile.mkdtemp(prefix="sb-bench-widget-"))
    results: list[dict[str, Any]] = []
    try:
        print(f"setting up the example tenant in {home} ...", flush=True)
        widget = setup_home(home, services)
        for mode in args.llm.split(","):
            delay = {"instant": 0.0, "1s": 1.0}[mode]
            llm = FakeLLM(delay)
            server = Server(home, llm, services)
            try:
                print(f"LLM {mode}: server pid {server.process.pid} at {server.url}; warming up", flush=True)
                # Every eval question once, so no level pays the first use of a passage (the grounding check
                # embeds its units the first time it is cited) or of a question (the query cache).
                # Each answering process (ANSWER_PROCESSES) has caches of its own and answers whichever message it
                # reads first: `--warm-passes` asks the questions that many times.
                for _ in range(args.warm_passes):
                    asyncio.run(run_level(server, widget, questions, 8 if delay == 0 else 32, len(questions),
                                          args.transport, 180, every_question=True))
                if args.restart:  # what a deploy does: a new process on the same database, nothing in memory
                    server.stop()
                    server = Server(home, llm, services)
                    print(f"  restarted: server pid {server.process.pid}", flush=True)
                for concurrency in levels:
                    wanted = args.requests if delay == 0 else args.slow_requests
                    print(f"  LLM {mode}, concurrency {concurrency}: {wanted} replies ...", flush=True)
                    row = asyncio.run(run_level(server, widget, questions, concurrency, max(wanted, concurrency),
                                                args.transport, args.level_timeout, args.unique_questions))
                    row = {"llm": mode, "transport": args.transport, "unique_questions": args.unique_questions, **row}
                    results.append(row)
                    print("   ", json.dumps(row), flush=True)
            finally:
                server.stop()
                llm.close()
    finally:
        if args.keep_home:
            print(f"kept {home}" + (f" and {services['SWITCHBOARD_DATABASE_URL']}" if services else ""))
        else:
            shutil.rmtree(home, ignore_errors=True)
            if services:
                drop_database(args.database_url, services["SWITCHBOARD_DATABASE_URL"])

    speed_after = machine_speed()
    print(f"\n{platform.node()} {platform.machine()}, {os.cpu_count()} cores, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, "
          f"python {platform.python_version()}, transport {args.transport}, "
          f"{'every question unique' if args.unique_questions else 'the eval questions repeated'}, "
          f"{'Postgres' if args.database_url else 'SQLite'}; "
          f"load generator on the same machine; a pure-Python loop of 20 M additions took {speed_before} s before "
          f"and {speed_after} s after")
    print("| LLM | concurrency | replies | req/s | p50 ms | p95 ms | p99 ms | errors | escalated | server CPU ms/msg "
          "| server peak RSS MB |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['llm']} | {r['concurrency']} | {r['replies']} | {r['req_s']} | {r['p50_ms']} | {r['p95_ms']} "
              f"| {r['p99_ms']} | {r['errors']} | {r['escalated']} | {r['cpu_ms_per_msg']} | {r['peak_rss_mb']} |")
    errors = [r for r in results if r["first_error"]]
    for r in errors:
        print(f"  first error at LLM {r['llm']}, c={r['concurrency']}: {r['first_error']}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
