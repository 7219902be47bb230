"""Latency of one message through the embedded pipeline, LLM excluded (the offline composer answers).

Measures, per message: gateway enqueue (store + publish) -> orchestrator (guardrails, embedding the question,
hybrid retrieval, composing, writing the outcome) -> the reply row visible to the widget. Uses the example
tenant and its eval questions, plus the unanswerable ones (escalations), in a throwaway SWITCHBOARD_HOME.

    .venv/bin/python benchmarks/pipeline_latency.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

from app.bootstrap import container

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
EXAMPLE = REPO / "tenants" / "northwind"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    os.environ["SWITCHBOARD_HOME"] = tempfile.mkdtemp(prefix="sb-bench-")
    for var in ("DATABASE_URL", "REDIS_URL", "QDRANT_URL", "LLM_BASE_URL"):
        os.environ.pop(var, None)

    from app import operations
    from app.db import migrate
    from app.workers_runtime import RoleThreads

    migrate()
    operations.create_tenant("northwind", folder=EXAMPLE)
    report = operations.ingest(container(), "northwind", [EXAMPLE / "knowledge"])
    questions = [json.loads(line)["question"] for line in (EXAMPLE / "eval" / "questions.jsonl").open()]
    questions += [json.loads(line)["question"] for line in (EXAMPLE / "eval" / "unanswerable.jsonl").open()]
    roles = RoleThreads.start_all(container())
    try:
        operations.chat(container(), "northwind", "warm-up", "warmup")
        latencies: list[float] = []
        message_ids: list[str] = []
        outcomes: dict[str, int] = {}
        for round_no in range(args.rounds):
            for i, question in enumerate(questions):
                started = time.perf_counter()
                outcome = operations.chat(container(), "northwind", question, f"bench-{round_no}-{i}")
                latencies.append((time.perf_counter() - started) * 1000)
                message_ids.append(outcome["message_id"])
                outcomes[outcome["status"]] = outcomes.get(outcome["status"], 0) + 1
            print(f"round {round_no + 1}/{args.rounds} done", file=sys.stderr)
    finally:
        roles.stop()
    server_side = _server_side_ms(message_ids)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} cores, "
          f"Python {platform.python_version()}")
    print(f"pack: {report['documents']} documents, {report['chunks']} chunks; messages: {len(latencies)} {outcomes}")
    print("| metric | stored -> outcome committed | client round trip (50 ms polling) |\n|---|---|---|")
    for name, fn in (("p50", statistics.median), ("p95", lambda v: percentile(v, 0.95)),
                     ("p99", lambda v: percentile(v, 0.99)), ("mean", statistics.fmean)):
        print(f"| {name} | {fn(server_side):.1f} ms | {fn(latencies):.1f} ms |")
    print(f"| peak RSS | {peak_mb:.0f} MB |")


def _server_side_ms(message_ids: list[str]) -> list[float]:
    """From the inbound row's creation (the gateway stored it) to the orchestrator committing the outcome."""
    from app.db import session_scope
    from app.models import Message

    with session_scope(cross_tenant="benchmark setup") as session:
        rows = [session.get_one(Message, mid) for mid in message_ids]
        return [(r.processed_at - r.created_at).total_seconds() * 1000 for r in rows if r.processed_at]


if __name__ == "__main__":
    main()
