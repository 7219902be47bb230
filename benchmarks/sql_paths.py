"""The SQL paths of one answered message, alone, on the thread that runs them: the gateway's store
(`store_inbound`), the orchestrator's context read (`Orchestrator._load`), the outcome's write
(`outcomes.answer`, a fixed draft: no retrieval, no LLM) and the web chat delivery (`Dispatcher.deliver`).
Embedded SQLite, in-memory bus; each step timed with `time.thread_time()`. Less noise than
benchmarks/orchestrator_cpu.py (no model, no LLM server), so a cut of a tenth of a millisecond shows.

    .venv/bin/python benchmarks/sql_paths.py [--messages 2000] [--rounds 3] [--contacts 8]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--contacts", type=int, default=8, help="messages cycle through this many visitors")
    args = parser.parse_args()
    os.environ["SWITCHBOARD_HOME"] = tempfile.mkdtemp(prefix="sb-bench-")
    for var in ("DATABASE_URL", "REDIS_URL", "QDRANT_URL"):
        os.environ.pop(var, None)

    from app.assistant import outcomes
    from app.assistant.orchestrator import Orchestrator
    from app.assistant.prompts import Draft
    from app.bootstrap import container
    from app.contracts import OUTBOUND, Event, OutboundMessage
    from app.conversations import service
    from app.conversations.dispatcher import Dispatcher
    from app.db import migrate, session_scope
    from app.tenants.service import create_tenant

    migrate()
    with session_scope(cross_tenant="benchmark") as session:
        tenant = create_tenant(session, "bench").tenant.id
    bus = container().bus
    bus.ensure_group(OUTBOUND, "bench")
    # Only the SQL paths run: the answer path's services are stand-ins that are never called.
    orchestrator = Orchestrator.of(container(), bus=bus, retrieve=lambda *a, **k: [], llm=container().settings,
                                   pii_ner=None, grounding=None)
    dispatcher = Dispatcher(container().senders, container().push)
    draft = Draft("Returns are free within 30 days [1].", [{"chunk_id": "c1", "source": "returns.md"}], 0.9)
    cpu: Counter[str] = Counter()

    def one(i: int, tag: str) -> None:
        t0 = time.thread_time()
        [stored] = service.store_inbound([service.InboundRequest(
            tenant_id=tenant, channel="webchat", contact_external_id=f"{tag}-{i % args.contacts}",
            provider_message_id=f"{tag}-{i}", text="Can I return a jacket I bought last week?")])
        t1 = time.thread_time()
        assert stored.event is not None
        ctx, done = orchestrator._load(stored.event)
        assert ctx is not None and done is None
        t2 = time.thread_time()
        outcome = outcomes.answer(orchestrator.publisher, orchestrator.clock, ctx, draft)
        assert outcome.status == "answered", outcome
        t3 = time.thread_time()
        for delivery in bus.read(OUTBOUND, "bench", "bench", count=16, block_ms=0):
            event = Event.from_bus(delivery.fields)
            if isinstance(event, OutboundMessage):
                dispatcher.deliver(event)
            bus.ack("bench", [delivery])
        t4 = time.thread_time()
        cpu["gateway: store the message"] += t1 - t0
        cpu["orchestrator: read the context"] += t2 - t1
        cpu["orchestrator: write the outcome"] += t3 - t2
        cpu["dispatcher: deliver (+ bus read)"] += t4 - t3

    for i in range(200):
        one(i, "warm-up")
    for round_ in range(1, args.rounds + 1):
        cpu.clear()
        for i in range(args.messages):
            one(i, f"round{round_}")
        total = sum(cpu.values())
        steps = "  ".join(f"{label} {seconds / args.messages * 1000:.3f}" for label, seconds in cpu.items())
        print(f"round {round_}: {total / args.messages * 1000:.3f} ms of CPU per message  ({steps})")


if __name__ == "__main__":
    main()
