"""How long customers wait when many write at once and the LLM takes a second to answer.

The embedded pipeline (SQLite, in-process bus, qdrant-edge, the example tenant's knowledge) with the orchestrator
as `serve` runs it, and the OpenAI-compatible fake server (tests/fakes/openai_server.py) answering every chat
completion after `--llm-s` seconds, through the real `openai` SDK. For each burst size, that many customers (each
in a conversation of their own) send one eval question at the same moment (the fake LLM runs in a process of its
own); a customer's wait runs from their
message being stored (what the gateway does before answering the webhook) to their reply event on the outbound
stream. Reported: every wait, p50, p95 and max, process CPU per message, and the query-embedding batches.

    .venv/bin/python benchmarks/orchestrator_concurrency.py [--customers 16 64] [--llm-s 1.0]
        [--workers N] [--tenant-workers N] [--paraphrase] [--warm-all]

`--workers 1` is the one-message-at-a-time consumer this replaced (a conversation per message, no batching gain).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
EXAMPLE = REPO / "tenants" / "northwind"
ANSWER = "You can return unused items within 30 days of delivery for a refund [1]."


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def serve_llm(delay_s: float, paraphrase: bool = False) -> None:
    """The OpenAI-compatible fake, answering every completion after `delay_s`; prints its URL and key."""
    import random

    from benchmarks.grounding_cases import paraphrase as reword
    from tests.fakes.openai_server import FakeOpenAIServer, first_sentence, prompt_passages

    def slow_answer(body: dict[str, Any]) -> str:
        """The first sentence of passage 1's answer, cited (as benchmarks/e2e_widget.py's fake): a reply the
        grounding check lets go out, so the burst measures answers, not escalations of an off-topic reply.
        With `paraphrase`, that sentence reworded (benchmarks/grounding_cases.paraphrase, the same rewording
        for the same sentence), as a model that does not quote writes it: the check embeds it."""
        time.sleep(delay_s)
        passages = prompt_passages(body)
        if not passages:
            return ANSWER
        sentence = first_sentence(passages[0])[:300]
        if paraphrase:
            sentence = reword(sentence, random.Random(sentence)) or sentence
        return f"{sentence} [1]"

    server = FakeOpenAIServer().start()
    server.reply_with(slow_answer)
    print(server.base_url, server.api_key, flush=True)
    sys.stdin.read()  # until the benchmark ends (or dies)


def main() -> None:
    if sys.argv[1:2] == ["--serve-llm"]:
        return serve_llm(float(sys.argv[2]), sys.argv[3:4] == ["paraphrase"])
    parser = argparse.ArgumentParser()
    parser.add_argument("--customers", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--llm-s", type=float, default=1.0, help="seconds the fake LLM takes per answer")
    parser.add_argument("--workers", type=int, default=None, help="ORCHESTRATOR_CONCURRENCY (default: setting)")
    parser.add_argument("--tenant-workers", type=int, default=None, help="ORCHESTRATOR_TENANT_CONCURRENCY")
    parser.add_argument("--paraphrase", action="store_true", help="the fake LLM rewords what it quotes")
    parser.add_argument("--warm-all", action="store_true",
                        help="warm up with every eval question at once (caches warm: the grounding check's passages, "
                             "the query cache) instead of one message")
    args = parser.parse_args()

    # The fake LLM runs in a process of its own, as a real one would: its CPU is not the orchestrator's.
    reply = ["paraphrase"] if args.paraphrase else []
    server = subprocess.Popen([sys.executable, __file__, "--serve-llm", str(args.llm_s), *reply], cwd=REPO,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert server.stdout is not None
    base_url, api_key = server.stdout.readline().split()
    os.environ["SWITCHBOARD_HOME"] = tempfile.mkdtemp(prefix="sb-bench-")
    for var in ("DATABASE_URL", "REDIS_URL", "QDRANT_URL"):
        os.environ.pop(var, None)
    os.environ.update({"LLM_BASE_URL": base_url, "LLM_API_KEY": api_key,
                       "RATE_LLM_CALLS_PER_TENANT": ""})  # the per-tenant LLM limit would escalate the burst
    if args.workers:
        os.environ["ORCHESTRATOR_CONCURRENCY"] = str(args.workers)
    if args.tenant_workers:
        os.environ["ORCHESTRATOR_TENANT_CONCURRENCY"] = str(args.tenant_workers)

    from app import operations
    from app.bootstrap import container
    from app.bus.concurrent import ConcurrentConsumer
    from app.contracts import OUTBOUND, Event, OutboundMessage
    from app.conversations.service import InboundRequest, accept_many
    from app.db import migrate
    from app.tenants.service import get_by_slug
    from app.workers_runtime import RoleThreads

    migrate()
    operations.create_tenant("northwind", folder=EXAMPLE)
    print("ingesting the example tenant's knowledge ...", file=sys.stderr)
    operations.ingest(container(), "northwind", [EXAMPLE / "knowledge"])
    from app.db import session_scope

    with session_scope(cross_tenant="benchmark setup") as session:
        tenant_id = get_by_slug(session, "northwind").id
    questions = [json.loads(line)["question"] for line in (EXAMPLE / "eval" / "questions.jsonl").open()]
    bus = container().bus
    bus.ensure_group(OUTBOUND, "bench")
    roles = RoleThreads.start_all(container(), bus=bus)
    inbound = roles.consumers[0]
    workers = inbound.concurrency if isinstance(inbound, ConcurrentConsumer) else 1
    tenant_workers = inbound.tenant_concurrency if isinstance(inbound, ConcurrentConsumer) else 1
    embedder: Any = container().embedder
    replied: dict[str, float] = {}  # conversation id -> when its reply event was seen
    watching = threading.Event()

    def watch() -> None:
        while not watching.is_set():
            for delivery in bus.read(OUTBOUND, "bench", "w", count=256, block_ms=100):
                event = Event.from_bus(delivery.fields)
                if isinstance(event, OutboundMessage):
                    replied.setdefault(event.conversation_id, time.perf_counter())

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    print(f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} cores, Python "
          f"{platform.python_version()}; LLM {args.llm_s:.1f} s; workers {workers}, per tenant {tenant_workers}")
    try:
        warm = len(questions) if args.warm_all else 1
        _burst(warm, "warm-up", tenant_id, questions, replied, accept_many, InboundRequest, bus)
        for round_no, n in enumerate(args.customers):
            calls_before = embedder.queries.stats.calls if hasattr(embedder, "queries") else 0
            items_before = embedder.queries.stats.items if hasattr(embedder, "queries") else 0
            cpu_before = cpu_s()
            tag = f"r{round_no}c{n}"
            waits, statuses = _burst(n, tag, tenant_id, questions, replied, accept_many, InboundRequest, bus)
            cpu_ms = (cpu_s() - cpu_before) * 1000 / n
            calls = (embedder.queries.stats.calls - calls_before) if hasattr(embedder, "queries") else 0
            items = (embedder.queries.stats.items - items_before) if hasattr(embedder, "queries") else 0
            print(f"\n{n} customers at once: p50 {statistics.median(waits):.2f} s, "
                  f"p95 {percentile(waits, 0.95):.2f} s, max {max(waits):.2f} s; CPU {cpu_ms:.0f} ms/message; "
                  f"{calls} query-batcher calls for {items} requests (queries, replies' sentences); {statuses}")
            print("waits (s): " + " ".join(f"{w:.2f}" for w in waits))
    finally:
        watching.set()
        roles.stop()
        server.terminate()
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


def _burst(n: int, tag: str, tenant_id: str, questions: list[str], replied: dict[str, float], accept_many: Any,
           request_type: Any, bus: Any) -> tuple[list[float], dict[str, int]]:
    """`n` customers send at once (one gateway batch, as a loaded gateway stores them); waits in seconds, sorted."""
    requests = [request_type(tenant_id=tenant_id, channel="webchat", contact_external_id=f"{tag}-{i}",
                             provider_message_id=f"{tag}-{i}", text=questions[i % len(questions)])
                for i in range(n)]
    accepted = accept_many(bus, requests)
    stored = time.perf_counter()
    conversations = [a.conversation_id for a in accepted]
    deadline = stored + 600
    while not all(c in replied for c in conversations):
        if time.perf_counter() > deadline:
            raise SystemExit(f"{sum(c in replied for c in conversations)}/{n} replies after 600 s")
        time.sleep(0.005)
    from app.db import session_scope
    from app.models import Message

    with session_scope(cross_tenant="benchmark setup") as session:
        statuses: dict[str, int] = {}
        for a in accepted:
            status = session.get_one(Message, a.message_id).status
            statuses[status] = statuses.get(status, 0) + 1
    return sorted(replied[c] - stored for c in conversations), statuses


if __name__ == "__main__":
    main()
