"""The orchestrator's handlers take turns (app/pacing.py): with one slot, no two messages' work before the LLM call
overlaps, while their LLM calls (the real `openai` SDK to the OpenAI-compatible fake) are in flight together."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

from app.bootstrap import container
from app.bus.base import Delivery
from app.bus.memory import MemoryBus
from app.contracts import INBOUND, InboundMessage
from app.db import migrate, session_scope
from tests.assistant.helpers import FakePassage
from tests.conftest import Graph
from tests.fakes.openai_server import FakeOpenAIServer

PASSAGES = [FakePassage("c1", "returns.md", "Returns", "Returns are free within 30 days.", 0.82)]
CUSTOMERS = 3


def test_with_one_slot_handlers_take_turns_and_their_llm_calls_run_together(graph: Graph) -> None:
    from app.assistant.orchestrator import Orchestrator
    from app.conversations.push import LocalPush
    from app.conversations.service import accept_inbound
    from app.tenants.service import create_tenant

    llm_gate = threading.Event()
    in_llm = threading.Semaphore(0)
    with FakeOpenAIServer() as server:
        def answer(body: dict[str, Any]) -> str:
            in_llm.release()
            assert llm_gate.wait(30), "the test never released the LLM"
            return "Returns are free within 30 days [1]."

        server.reply_with(answer)
        graph.configure(llm_base_url=server.base_url, llm_api_key=server.api_key, orchestrator_cpu_slots=1)
        migrate()
        with session_scope(cross_tenant="tests") as session:
            tenant = create_tenant(session, "paced").tenant
            tenant.live_pack_version = 1
            tenant_id = tenant.id

        lock = threading.Lock()
        retrieving, most = 0, 0
        others_arrived = threading.Event()

        def retrieve(*args: Any, **kwargs: Any) -> Sequence[FakePassage]:
            # Each handler lingers here (inside its slot) until another one arrives, or 0.3 s: unpaced, a second
            # handler would arrive at once; paced, none can while this one holds the only slot.
            nonlocal retrieving, most
            with lock:
                retrieving += 1
                most = max(most, retrieving)
                if retrieving > 1:
                    others_arrived.set()
            others_arrived.wait(0.3)
            with lock:
                retrieving -= 1
            return PASSAGES

        bus = MemoryBus()
        orchestrator = Orchestrator.of(container(), bus=bus, retrieve=retrieve, push=LocalPush())  # type: ignore[arg-type]
        deliveries = []
        for i in range(CUSTOMERS):
            accepted = accept_inbound(bus, tenant_id=tenant_id, channel="sms", contact_external_id=f"+1555000{i}",
                                      provider_message_id=f"p{i}", text="Can I return a jacket that does not fit?")
            event = InboundMessage(tenant_id=tenant_id, message_id=accepted.message_id, conversation_id="-",
                                   contact_id="-", channel="sms", provider_message_id=f"p{i}",
                                   text="Can I return a jacket that does not fit?")
            deliveries.append(Delivery(INBOUND, tenant_id, f"{i}-0", event.to_bus()))
        threads = [threading.Thread(target=orchestrator.handle, args=(d,), daemon=True) for d in deliveries]
        for thread in threads:
            thread.start()
        # Every LLM call is in flight at once: a handler waiting for the LLM holds no slot.
        for _ in range(CUSTOMERS):
            assert in_llm.acquire(timeout=30), "a handler's LLM call never started"
        llm_gate.set()
        for thread in threads:
            thread.join(30)
        assert not any(thread.is_alive() for thread in threads)

    assert most == 1
    assert len(server.completion_requests) == CUSTOMERS
