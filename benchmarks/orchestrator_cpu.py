"""Where one message's CPU goes on the answering side: each step's CPU time on the thread that runs it.

The embedded pipeline with the example tenant's knowledge and the OpenAI-compatible fake (its own process,
answering at once, through the real `openai` SDK). One message at a time on this thread: stored as the gateway
stores it, orchestrated, its reply delivered by the dispatcher; each step is timed with `time.thread_time()`
(CPU of this thread; onnxruntime runs the model on it too, with its default of one thread). Concurrency adds
GIL hand-offs and lock waits on top (see benchmarks/orchestrator_concurrency.py for a burst).

    .venv/bin/python benchmarks/orchestrator_cpu.py [--messages 300] [--unique] [--paraphrase]

The example tenant's 96 eval questions repeat, so past the first 96 messages each question's embedding comes
from the query cache (app/knowledge/query_cache.py; EMBED_QUERY_CACHE=0 turns it off); `--unique` makes every
message a question never asked before (a distinct suffix, " (ref 123)"), so every one is embedded. The fake LLM
quotes the first sentence of the top passage, which the grounding check finds among the passage's units (no model
call); `--paraphrase` rewords it (benchmarks/grounding_cases.paraphrase), so the check embeds it.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
EXAMPLE = REPO / "tenants" / "northwind"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=300)
    parser.add_argument("--unique", action="store_true", help="no question asked twice (each gets a distinct suffix)")
    parser.add_argument("--paraphrase", action="store_true", help="the fake LLM rewords the sentence it quotes")
    args = parser.parse_args()
    reply = ["paraphrase"] if args.paraphrase else []
    server = subprocess.Popen([sys.executable, str(REPO / "benchmarks" / "orchestrator_concurrency.py"),
                               "--serve-llm", "0", *reply], cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True)
    assert server.stdout is not None
    base_url, api_key = server.stdout.readline().split()
    os.environ["SWITCHBOARD_HOME"] = tempfile.mkdtemp(prefix="sb-bench-")
    for var in ("DATABASE_URL", "REDIS_URL", "QDRANT_URL"):
        os.environ.pop(var, None)
    os.environ.update({"LLM_BASE_URL": base_url, "LLM_API_KEY": api_key, "RATE_LLM_CALLS_PER_TENANT": ""})
    try:
        run(args.messages, args.unique)
    finally:
        server.terminate()


def run(n: int, unique: bool) -> None:
    from app import operations
    from app.assistant import answering, outcomes, pii_restore
    from app.assistant.orchestrator import Orchestrator
    from app.bootstrap import container
    from app.contracts import OUTBOUND, Event, OutboundMessage
    from app.conversations import service
    from app.conversations.dispatcher import Dispatcher
    from app.db import migrate, session_scope
    from app.knowledge import termstats
    from app.knowledge.query_cache import QueryCache
    from app.providers.vectors.edge import EdgeVectorStore
    from app.tenants.service import get_by_slug

    migrate()
    operations.create_tenant("northwind", folder=EXAMPLE)
    print("ingesting the example tenant's knowledge ...", file=sys.stderr)
    operations.ingest(container(), "northwind", [EXAMPLE / "knowledge"])
    with session_scope(cross_tenant="benchmark setup") as session:
        tenant_id = get_by_slug(session, "northwind").id
    questions = [json.loads(line)["question"] for line in (EXAMPLE / "eval" / "questions.jsonl").open()]
    bus = container().bus
    bus.ensure_group(OUTBOUND, "bench")
    orchestrator, dispatcher = Orchestrator.of(container(), bus=bus), Dispatcher(container().senders, container().push)

    cpu: Counter[str] = Counter()
    calls: Counter[str] = Counter()
    inside: set[str] = set()  # labels being timed now: a step calling another of the same label counts once

    def timed(owner: Any, name: str, label: str) -> None:
        inner: Callable[..., Any] = getattr(owner, name)

        @functools.wraps(inner)
        def wrapper(*a: Any, **kw: Any) -> Any:
            if label in inside:
                return inner(*a, **kw)
            inside.add(label)
            start = time.thread_time()
            try:
                return inner(*a, **kw)
            finally:
                cpu[label] += time.thread_time() - start
                calls[label] += 1
                inside.discard(label)

        setattr(owner, name, wrapper)

    timed(service, "store_inbound", "gateway: store the message")
    timed(Orchestrator, "_load", "orchestrator: read the context")
    timed(answering.guardrails, "wants_human", "guardrails")
    timed(answering.guardrails, "detect_injection", "guardrails")
    timed(pii_restore, "find_pii", "guardrails")  # PII masking before the LLM (PiiVault.mask)
    timed(answering.guardrails, "find_banned", "guardrails")
    timed(termstats, "query_vectors", "embed the question")
    timed(QueryCache, "query_vectors", "embed the question")  # a hit: tokenize, look up, copy out
    timed(EdgeVectorStore, "search", "hybrid search (qdrant-edge)")
    timed(answering, "compose_offline", "offline composer")
    timed(answering, "render_messages", "prompt (Jinja)")
    timed(type(orchestrator.llm), "complete", "LLM call (openai SDK)")
    timed(type(orchestrator.llm), "stream", "LLM call (openai SDK)")  # the widget's replies stream
    timed(answering, "vet_llm_draft", "grounding check")
    timed(outcomes, "answer", "orchestrator: write the outcome")
    timed(outcomes, "escalate", "orchestrator: write the outcome")
    timed(Dispatcher, "deliver", "dispatcher: deliver")

    def question(i: int, tag: str) -> str:
        text = questions[i % len(questions)]
        return f"{text} (ref {tag}-{i})" if unique else text

    def one(i: int, tag: str) -> None:
        stored = service.store_inbound([service.InboundRequest(
            tenant_id=tenant_id, channel="webchat", contact_external_id=f"{tag}-{i % 8}",
            provider_message_id=f"{tag}-{i}", text=question(i, tag))])
        assert stored[0].event is not None
        orchestrator.process(stored[0].event)
        for delivery in bus.read(OUTBOUND, "bench", "bench", count=16, block_ms=0):
            event = Event.from_bus(delivery.fields)
            if isinstance(event, OutboundMessage):
                dispatcher.deliver(event)
            bus.ack("bench", [delivery])

    for i in range(len(questions)):  # every question once: the grounding check's passage cache is warm
        one(i, "warm-up")
    cpu.clear()
    calls.clear()
    start_cpu, start_process, start_wall = time.thread_time(), time.process_time(), time.perf_counter()
    for i in range(n):
        one(i, "run")
    total = time.thread_time() - start_cpu
    print(f"{n} messages, one at a time: {total / n * 1000:.1f} ms of CPU per message on this thread, "
          f"{(time.process_time() - start_process) / n * 1000:.1f} ms in the whole process (model threads too), "
          f"{(time.perf_counter() - start_wall) / n * 1000:.1f} ms wall")
    for label, seconds in sorted(cpu.items(), key=lambda kv: -kv[1]):
        print(f"  {label:34s} {seconds / n * 1000:6.2f} ms  {seconds / total:5.1%}  ({calls[label]} calls)")
    rest = total - sum(cpu.values())
    print(f"  {'the rest (bus, events, loop)':34s} {rest / n * 1000:6.2f} ms  {rest / total:5.1%}")
    cache = container().retriever.query_cache
    if cache is not None:
        print(f"query cache (EMBED_QUERY_CACHE={cache.size}): {cache.hits} hits, {cache.misses} misses "
              f"over warm-up and run")


if __name__ == "__main__":
    main()
