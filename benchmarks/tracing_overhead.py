"""What traces cost: off (no OTLP endpoint, the default) and on (the SDK exporting over OTLP/HTTP).

1. Off, per call: each tracing helper a message passes through (app/tracing.py `span`, `with_context`, `extract`,
   `enabled`), timed with timeit; times the number of spans one message makes when on, that is the most tracing
   can add to a message while off.
2. The embedded pipeline (in-process bus, orchestrator threads, the offline composer; the example tenant's eval
   questions, answered and escalated), in alternating rounds off / on: per message, the server-side latency
   (stored -> outcome committed) and the process's CPU time. On: the SDK's provider with a BatchSpanProcessor and
   the OTLP/HTTP exporter, sending to the fake collector of tests/fakes on 127.0.0.1 (which decodes every export).

    .venv/bin/python benchmarks/tracing_overhead.py [--rounds 2]
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
import timeit
from pathlib import Path
from typing import Any

from app.bootstrap import container

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
EXAMPLE = REPO / "tenants" / "northwind"


def off_costs() -> dict[str, float]:
    """ns per call of each helper while tracing is off."""
    from app import tracing

    assert not tracing.enabled()
    fields = {"type": "InboundMessage", "v": "1", "body": "{}"}
    attributes = {"switchboard.tenant.id": "t", "switchboard.channel": "webchat"}

    def span() -> None:
        with tracing.span("orchestrate", attributes):
            pass

    cases = {"span": span, "with_context": lambda: tracing.with_context(fields),
             "extract": lambda: tracing.extract(fields), "enabled": tracing.enabled,
             "empty call (baseline)": lambda: None}
    out = {}
    for name, fn in cases.items():
        number = 200_000
        best = min(timeit.repeat(fn, number=number, repeat=5))
        out[name] = best / number * 1e9
    return out


def cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run_round(questions: list[str], tag: str) -> tuple[list[str], float]:
    from app import operations

    started = cpu_s()
    ids = [operations.chat(container(), "northwind", q, f"{tag}-{i}")["message_id"] for i, q in enumerate(questions)]
    return ids, cpu_s() - started


def server_side_ms(message_ids: list[str]) -> list[float]:
    from app.db import session_scope
    from app.models import Message

    with session_scope(cross_tenant="benchmark setup") as session:
        rows = [session.get_one(Message, mid) for mid in message_ids]
        return [(r.processed_at - r.created_at).total_seconds() * 1000 for r in rows if r.processed_at]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=2, help="rounds per mode (alternating off, on, off, on...)")
    args = parser.parse_args()
    os.environ["SWITCHBOARD_HOME"] = tempfile.mkdtemp(prefix="sb-bench-")
    for var in ("DATABASE_URL", "REDIS_URL", "QDRANT_URL", "LLM_BASE_URL", "OTEL_EXPORTER_OTLP_ENDPOINT",
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        os.environ.pop(var, None)

    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    from app import operations, tracing
    from app.db import migrate
    from app.workers_runtime import RoleThreads
    from tests.fakes.otlp_collector import FakeCollector

    costs = off_costs()
    migrate()
    operations.create_tenant("northwind", folder=EXAMPLE)
    operations.ingest(container(), "northwind", [EXAMPLE / "knowledge"])
    questions = [json.loads(line)["question"] for line in (EXAMPLE / "eval" / "questions.jsonl").open()]
    questions += [json.loads(line)["question"] for line in (EXAMPLE / "eval" / "unanswerable.jsonl").open()]
    collector = FakeCollector()
    provider = TracerProvider(resource=Resource.create({"service.name": "switchboard-bench"}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=f"{collector.url}/v1/traces")))
    roles = RoleThreads.start_all(container())
    results: dict[str, dict[str, Any]] = {m: {"latency": [], "cpu": 0.0, "messages": 0} for m in ("off", "on")}
    try:
        operations.chat(container(), "northwind", "warm-up", "warmup")
        for round_no in range(args.rounds):
            for mode in ("off", "on"):
                tracing.install(provider if mode == "on" else None)
                ids, cpu = run_round(questions, f"{mode}{round_no}")
                tracing.install(None)
                results[mode]["latency"] += server_side_ms(ids)
                results[mode]["cpu"] += cpu
                results[mode]["messages"] += len(ids)
                print(f"round {round_no + 1}/{args.rounds} {mode} done", file=sys.stderr)
        provider.force_flush()
    finally:
        roles.stop()
        provider.shutdown()
    spans = collector.received()
    collector.close()
    per_message = len(spans) / max(results["on"]["messages"], 1)
    load = os.getloadavg()
    print(f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} cores, Python "
          f"{platform.python_version()}; load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    print("\n| helper, tracing off | ns per call |\n|---|---|")
    for name, ns in costs.items():
        print(f"| `{name}` | {ns:.0f} |")
    worst = max(v for k, v in costs.items() if k != "empty call (baseline)")
    print(f"\nspans per message when on: {per_message:.1f} (exported and decoded: {len(spans)}); off, at most "
          f"{per_message:.0f} x {worst:.0f} ns = {per_message * worst / 1000:.1f} us per message")
    print("\n| mode | messages | p50 stored -> outcome | p95 | CPU per message |\n|---|---|---|---|---|")
    for mode, r in results.items():
        lat = sorted(r["latency"])
        print(f"| {mode} | {r['messages']} | {statistics.median(lat):.1f} ms | "
              f"{lat[min(len(lat) - 1, round(0.95 * (len(lat) - 1)))]:.1f} ms | "
              f"{r['cpu'] / r['messages'] * 1000:.2f} ms |")


if __name__ == "__main__":
    main()
