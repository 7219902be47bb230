"""Analytics on a large generated tenant: how long `app.analytics.figures.compute` takes for 7, 30 and 90 days,
against the time to merely load the same range's message rows into Python (what the SQL aggregates avoid).

The data: `--days` days of `--per-day` conversations each for the measured tenant (two customer turns per
conversation, each answered by the bot with one LLM call, or escalated, 10%: a fifth of the escalations taken over
and released, the rest decided), and a second tenant with half the volume in the same tables. Written with bulk
inserts straight into the tables (the pipeline's own speed is measured elsewhere).

    .venv/bin/python benchmarks/analytics_queries.py --backend sqlite
    .venv/bin/python benchmarks/analytics_queries.py --backend postgres   # a throwaway database on 127.0.0.1
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
import uuid
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
PG_ADMIN = os.environ.get("SWITCHBOARD_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
REASONS = ["no_knowledge", "low_confidence", "human_requested", "prompt_injection", "llm_timeout", "ungrounded"]
LAST_DAY = date(2026, 10, 31)


def _id() -> str:
    return uuid.uuid4().hex


def generate(tenant_id: str, days: int, per_day: int, rng: random.Random) -> dict[str, list[dict]]:
    rows: dict[str, list[dict]] = {k: [] for k in ("contacts", "conversations", "messages", "escalations",
                                                   "handoffs", "llm_calls")}
    for d in range(days):
        day = LAST_DAY - timedelta(days=days - 1 - d)
        base = datetime(day.year, day.month, day.day, tzinfo=UTC)
        for n in range(per_day):
            at = base + timedelta(seconds=rng.uniform(0, 80_000))
            contact, conversation = _id(), _id()
            rows["contacts"].append({"id": contact, "created_at": at, "tenant_id": tenant_id, "channel": "webchat",
                                     "external_id": f"v{d}-{n}-{contact[:6]}"})
            rows["conversations"].append({"id": conversation, "created_at": at, "tenant_id": tenant_id,
                                          "contact_id": contact, "channel": "webchat", "mode": "bot"})
            for turn in range(2):
                asked = at + timedelta(minutes=3 * turn)
                inbound = _id()
                escalated = rng.random() < 0.10
                rows["messages"].append({
                    "id": inbound, "created_at": asked, "tenant_id": tenant_id, "conversation_id": conversation,
                    "channel": "webchat", "direction": "in", "provider_message_id": inbound, "text": "question",
                    "status": "escalated" if escalated else "answered", "meta": {}})
                reply = asked + timedelta(seconds=rng.uniform(0.5, 4))
                rows["messages"].append({
                    "id": _id(), "created_at": reply, "tenant_id": tenant_id, "conversation_id": conversation,
                    "channel": "webchat", "direction": "out", "provider_message_id": f"reply:{inbound}",
                    "text": "answer", "status": "delivered", "author": "bot", "in_reply_to_id": inbound, "meta": {}})
                if not escalated:
                    rows["llm_calls"].append({
                        "id": _id(), "created_at": reply, "tenant_id": tenant_id, "message_id": inbound,
                        "day": reply.date(), "provider": "full", "model": rng.choice(["big-model", "small-model"]),
                        "outcome": "ok", "attempt": 1, "streamed": True, "prompt_tokens": rng.randint(800, 2400),
                        "completion_tokens": rng.randint(40, 200), "cost": 0.002, "latency_ms": 900})
                    continue
                escalation = _id()
                decided = reply + timedelta(minutes=rng.uniform(2, 240))
                takeover = rng.random() < 0.2
                rows["escalations"].append({
                    "id": escalation, "created_at": reply, "tenant_id": tenant_id, "conversation_id": conversation,
                    "message_id": inbound, "status": "taken_over" if takeover else "approved",
                    "reason": rng.choice(REASONS), "decision": "takeover" if takeover else "edit",
                    "decided_at": decided, "reviewer": "agent"})
                if takeover:
                    rows["handoffs"].append({
                        "id": _id(), "created_at": decided, "tenant_id": tenant_id, "conversation_id": conversation,
                        "escalation_id": escalation, "agent": "agent", "started_at": decided,
                        "ended_at": decided + timedelta(minutes=rng.uniform(3, 45)), "ended_by": "agent"})
                rows["messages"].append({
                    "id": _id(), "created_at": decided + timedelta(seconds=30 if takeover else 0),
                    "tenant_id": tenant_id, "conversation_id": conversation, "channel": "webchat",
                    "direction": "out", "provider_message_id": f"review:{escalation}", "text": "agent reply",
                    "status": "delivered", "author": "agent:sam", "meta": {}})
    return rows


def load(engine, rows: dict[str, list[dict]]) -> None:  # type: ignore[no-untyped-def]
    from sqlalchemy import insert

    from app.models import Contact, Conversation, Escalation, Handoff, LLMCall, Message

    tables = {"contacts": Contact, "conversations": Conversation, "messages": Message, "escalations": Escalation,
              "handoffs": Handoff, "llm_calls": LLMCall}
    with engine.begin() as conn:
        for name, model in tables.items():
            batch = rows[name]
            keys = {k for row in batch for k in row}  # one statement for all: every row names every column
            batch = [{k: row.get(k) for k in keys} for row in batch]
            for i in range(0, len(batch), 20_000):
                conn.execute(insert(model), batch[i:i + 20_000])


def timed(fn, repeat: int = 3) -> float:  # type: ignore[no-untyped-def]
    runs = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - started)
    return statistics.median(runs)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--backend", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--days", type=int, default=90)
    parser.add_argument("--per-day", type=int, default=500)
    args = parser.parse_args()
    rng = random.Random(7)
    with tempfile.TemporaryDirectory(prefix="sb-bench-") as tmp:
        os.environ["SWITCHBOARD_HOME"] = str(Path(tmp, "home"))
        pg_name = None
        if args.backend == "postgres":
            import psycopg

            pg_name = f"sb_bench_{uuid.uuid4().hex[:8]}"
            with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
                conn.execute(f'CREATE DATABASE "{pg_name}"')
            os.environ["DATABASE_URL"] = PG_ADMIN.rsplit("/", 1)[0] + f"/{pg_name}"
        try:
            run(args, rng)
        finally:
            from app.bootstrap import reset

            reset()  # closes the database's connections before it is dropped
            if pg_name:
                import psycopg

                with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
                    conn.execute(f'DROP DATABASE IF EXISTS "{pg_name}" WITH (FORCE)')


def run(args: argparse.Namespace, rng: random.Random) -> None:
    from sqlalchemy import select, text

    from app.analytics.figures import compute
    from app.db import get_engine, get_sessionmaker, migrate
    from app.models import Message, Tenant

    migrate()
    engine = get_engine()
    with get_sessionmaker()(info={"cross_tenant": "benchmark setup"}) as db:
        db.add_all([Tenant(id="bench", slug="bench", name="Bench"), Tenant(id="noise", slug="noise", name="Noise")])
        db.commit()
    started = time.perf_counter()
    counts = {}
    for tenant, per_day in (("bench", args.per_day), ("noise", args.per_day // 2)):
        rows = generate(tenant, args.days, per_day, rng)
        counts[tenant] = {k: len(v) for k, v in rows.items()}
        load(engine, rows)
        del rows
    if args.backend == "postgres":
        with engine.begin() as conn:
            conn.execute(text("ANALYZE"))
    generated_s = time.perf_counter() - started

    results: dict[str, object] = {}
    session_factory = get_sessionmaker()
    for span in (7, 30, args.days):
        since = LAST_DAY - timedelta(days=span - 1)

        def figures(since: date = since) -> None:
            with session_factory() as db:
                report = compute(db, "bench", since, LAST_DAY)
                assert report.total.messages_in > 0

        def rows_only(since: date = since) -> None:
            start = datetime(since.year, since.month, since.day, tzinfo=UTC)
            with session_factory() as db:
                fetched = db.execute(select(Message).where(Message.tenant_id == "bench",
                                                           Message.created_at >= start)).all()
                assert fetched

        results[f"{span} days"] = {"compute_s": round(timed(figures), 3),
                                   "load_messages_s": round(timed(rows_only, 1), 3)}
    with session_factory() as db:
        total = compute(db, "bench", LAST_DAY - timedelta(days=args.days - 1), LAST_DAY).total
    print(json.dumps({
        "backend": args.backend, "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python "
                                            f"{platform.python_version()}",
        "date": datetime.now(UTC).date().isoformat(), "loadavg": [round(x, 2) for x in os.getloadavg()],
        "rows": counts, "generated_s": round(generated_s, 1),
        "checks": {"messages_in": total.messages_in, "escalations": total.escalations,
                   "handoffs": total.agent_handling.count, "deflection": round(total.deflection or 0, 4)},
        "timings (median of 3; loading rows: 1 run)": results,
    }, indent=1))


if __name__ == "__main__":
    main()
