"""The orchestrator role as `serve` and `switchboard orchestrator` wire it (app/workers_runtime.py), with real
retrieval and the LLM path through the `openai` SDK to the OpenAI-compatible fake server, on the embedded stack and
on Postgres + Redis: one tenant's stalled LLM does not hold up another tenant's replies, a conversation's messages
are handled one at a time and in order while other conversations go ahead. Observed through the reply events on
the outbound stream and the LLM requests, never through timings."""

from __future__ import annotations

import threading
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from sqlalchemy import select

from app.bootstrap import container
from app.bus.base import Bus
from app.bus.concurrent import ConcurrentConsumer
from app.contracts import OUTBOUND, OutboundMessage
from app.db import session_scope
from app.models import Message, Tenant
from tests.bus.conftest import wait_for
from tests.conftest import REDIS_TEST_URL, REPO, Graph
from tests.factories import sent_replies
from tests.fakes.openai_server import FakeOpenAIServer, first_sentence, prompt_passages

RETURNS = REPO / "tenants" / "northwind" / "knowledge" / "returns-and-refunds.md"
EXAMPLE = REPO / "tenants" / "northwind"


@dataclass
class LLM:
    """The fake server's side: which calls are in flight per model and per conversation marker."""

    server: FakeOpenAIServer
    gates: dict[str, threading.Event] = field(default_factory=dict)  # marker or model -> held until set
    lock: threading.Lock = field(default_factory=threading.Lock)
    inflight: Counter[str] = field(default_factory=Counter)
    peak: Counter[str] = field(default_factory=Counter)
    questions: list[str] = field(default_factory=list)  # the last user message of every call, in arrival order
    answers: set[str] = field(default_factory=set)  # what it answered: a quote of the passage it cites

    def answer(self, body: dict[str, Any]) -> str:
        question = body["messages"][-1]["content"]
        tags = [body["model"], *(word for word in ("alpha", "bravo") if word in question)]
        with self.lock:
            self.questions.append(question)
            for tag in tags:
                self.inflight[tag] += 1
                self.peak[tag] = max(self.peak[tag], self.inflight[tag])
        try:
            for tag in tags:
                if tag in self.gates:
                    assert self.gates[tag].wait(30), f"the test never released {tag}"
            # A grounded answer (app/assistant/grounding.py sends nothing else on its own): passage 1, quoted.
            answer = f"{first_sentence(prompt_passages(body)[0])} [1]"
            with self.lock:
                self.answers.add(answer)
            return answer
        finally:
            with self.lock:
                for tag in tags:
                    self.inflight[tag] -= 1


@dataclass
class Pipeline:
    bus: Bus
    consumer: ConcurrentConsumer
    llm: LLM

    def send(self, tenant_id: str, contact: str, text: str) -> str:
        from app.conversations.service import accept_inbound

        accepted = accept_inbound(self.bus, tenant_id=tenant_id, channel="webchat", contact_external_id=contact,
                                  provider_message_id=uuid.uuid4().hex, text=text)
        return accepted.message_id

    def replies(self, tenant_id: str) -> list[OutboundMessage]:
        """The tenant's replies sent so far, oldest first."""
        return sent_replies([tenant_id])


def _tenant(model: str) -> str:
    from app import operations

    slug = f"t{uuid.uuid4().hex[:8]}"
    operations.create_tenant(slug, folder=EXAMPLE)
    assert operations.ingest(container(), slug, [RETURNS])["chunks"] > 0
    with session_scope(cross_tenant="tests") as session:
        tenant = session.scalars(select(Tenant).where(Tenant.slug == slug)).one()
        # The conversation markers in the test questions ("alpha: ...") cost some relevance.
        tenant.policies = {**tenant.policies, "llm": {"model": model}, "min_relevance": 0.3}
        return tenant.id


@pytest.fixture(params=["embedded", "postgres+redis"])
def pipeline(request: pytest.FixtureRequest, graph: Graph) -> Iterator[Pipeline]:
    from app.bootstrap import container
    from app.db import migrate
    from app.workers_runtime import build_consumers

    if request.param == "postgres+redis":
        graph.configure(database_url=request.getfixturevalue("pg_url"), redis_url=REDIS_TEST_URL,
                        bus_namespace=request.getfixturevalue("redis_namespace"))
    with FakeOpenAIServer() as server:
        # The operator's LLM for every tenant; each tenant picks its model, which is how the server tells them apart.
        graph.configure(llm_base_url=server.base_url, llm_api_key=server.api_key, orchestrator_concurrency=8,
                        orchestrator_tenant_concurrency=4)
        migrate()
        llm = LLM(server)
        server.reply_with(llm.answer)
        bus = container().bus
        stop = threading.Event()
        inbound, dispatcher = build_consumers(container(), bus, stop)
        assert isinstance(inbound, ConcurrentConsumer) and inbound.concurrency == 8
        assert isinstance(dispatcher, ConcurrentConsumer) and dispatcher.tenant_concurrency == 4
        bus.ensure_group(OUTBOUND, "test-observer")
        threads = [threading.Thread(target=c.run, daemon=True) for c in (inbound, dispatcher)]
        for thread in threads:
            thread.start()
        try:
            yield Pipeline(bus, inbound, llm)
        finally:
            for gate in llm.gates.values():
                gate.set()
            stop.set()
            for thread in threads:
                thread.join(timeout=30)
    assert not any(thread.is_alive() for thread in threads)


def test_a_tenant_whose_llm_stalls_does_not_hold_up_another_tenants_replies(pipeline: Pipeline) -> None:
    llm = pipeline.llm
    llm.gates["stalled-model"] = threading.Event()
    stalled = _tenant("stalled-model")
    quick = _tenant("quick-model")
    # More of the stalled tenant's customers than the whole pool has workers.
    for i in range(10):
        pipeline.send(stalled, f"s{i}", "how long do I have to return my boots?")
    wait_for(lambda: llm.inflight["stalled-model"] == 4, timeout=60)  # its limit: 4 of the 8 workers
    for i in range(3):
        pipeline.send(quick, f"q{i}", "how long do I have to return a jacket?")
    wait_for(lambda: len(pipeline.replies(quick)) == 3, timeout=60)
    # The quick tenant was answered while every call of the stalled one is still blocked.
    assert llm.inflight["stalled-model"] == 4
    assert pipeline.replies(stalled) == []
    assert all(r.text in llm.answers for r in pipeline.replies(quick))
    llm.gates["stalled-model"].set()
    wait_for(lambda: len(pipeline.replies(stalled)) == 10, timeout=60)
    assert llm.peak["stalled-model"] == 4


def test_a_conversations_messages_go_one_at_a_time_in_order_while_others_go_ahead(pipeline: Pipeline) -> None:
    llm = pipeline.llm
    llm.gates["alpha"] = threading.Event()
    tenant = _tenant("model")
    first = pipeline.send(tenant, "alice", "alpha: how long do I have to return boots?")
    wait_for(lambda: llm.inflight["alpha"] == 1, timeout=60)
    second = pipeline.send(tenant, "alice", "alpha: and what about sale items, can I return those?")
    third = pipeline.send(tenant, "alice", "alpha: and can I return a gift?")
    bob = pipeline.send(tenant, "bob", "bravo: how long do I have to return a tent?")
    # Another conversation is answered while Alice's first message still waits for the LLM ...
    wait_for(lambda: len(pipeline.replies(tenant)) == 1, timeout=60)
    with session_scope(cross_tenant="tests") as session:
        assert pipeline.replies(tenant)[0].conversation_id == session.get_one(Message, bob).conversation_id
    # ... and her later messages have not started: they wait behind the first.
    assert sum("alpha" in q for q in llm.questions) == 1
    assert pipeline.consumer.held >= 3
    llm.gates["alpha"].set()
    with session_scope(cross_tenant="tests") as session:
        conversation_id = session.get_one(Message, first).conversation_id

    def alice_settled() -> bool:
        with session_scope(cross_tenant="tests") as session:
            return session.get_one(Message, third).status == "answered"

    wait_for(alice_settled, timeout=60)
    with session_scope(cross_tenant="tests") as session:
        statuses = [session.get_one(Message, m).status for m in (first, second, third)]
    # The first message's answer was superseded by the messages that came in meanwhile; the second was merged at
    # once (no LLM call of its own); the third answers all three as one turn.
    assert statuses == ["merged", "merged", "answered"]
    alpha_calls = [q for q in llm.questions if "alpha" in q]
    assert len(alpha_calls) == 2 and llm.peak["alpha"] == 1
    assert all(part in alpha_calls[1] for part in ("boots", "sale items", "gift"))
    wait_for(lambda: len(pipeline.replies(tenant)) == 2)
    alice = [r for r in pipeline.replies(tenant) if r.conversation_id == conversation_id]
    assert len(alice) == 1
