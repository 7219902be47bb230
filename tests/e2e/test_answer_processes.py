"""Embedded `serve` answering in child processes (ANSWER_PROCESSES, app/answerers.py): a real child process answers
through the LLM with `serve`'s bus, push hub, vector store and limits; the reply reaches a connected widget; a
child killed in the middle of an answer loses nothing (another takes the message over) and is replaced."""

from __future__ import annotations

import os
import pickle
import signal
from collections.abc import Iterator
from typing import Any

import pytest

from app.ratelimit import LLM_CALLS_PER_TENANT, RateLimited, RateLimiter
from tests.e2e.conftest import Stack, replies, wait
from tests.e2e.sse import EventStream, serve_http
from tests.fakes.openai_server import FakeOpenAIServer, first_sentence, prompt_passages


@pytest.fixture(scope="module")
def llm() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer() as server:
        server.reply_with(lambda body: f"{first_sentence(prompt_passages(body)[0])} [1]")
        yield server


@pytest.fixture(scope="module")
def stack_settings(llm: FakeOpenAIServer) -> dict[str, Any]:
    return {"answer_processes": 1, "bus_claim_idle_ms": 1500, "llm_base_url": llm.base_url,
            "llm_api_key": llm.api_key, "llm_model": "fake"}


@pytest.fixture(scope="module")
def server(stack: Stack) -> Iterator[str]:
    from app.main import create_app

    with serve_http(create_app(run_workers=False)) as url:  # the stack's app runs the roles and the children
        yield url


def _app_state(stack: Stack) -> Any:
    return stack.client.app.state  # type: ignore[attr-defined]


def _next_message(events: EventStream) -> Any:
    """The next stored message, past the drafts of a reply being streamed."""
    while (event := events.next()).event != "message":
        assert event.event == "draft", event
    return event


def test_serve_itself_does_not_answer(stack: Stack) -> None:
    from app.contracts import INBOUND

    state = _app_state(stack)
    assert [c for c in state.workers.consumers if c.topic == INBOUND] == []
    [pid] = state.answerers.pids()
    assert pid != os.getpid()
    os.kill(pid, 0)  # alive


def test_a_child_answers_through_the_llm_and_the_reply_is_pushed(stack: Stack, server: str,
                                                                  llm: FakeOpenAIServer) -> None:
    before = len(llm.completion_requests)
    visitor = stack.visitor(stack.northwind)
    with EventStream(f"{server}/widget/v1/{visitor.widget}/events", headers=visitor.auth) as events:
        assert events.next("ready").data == {"cursor": None}
        visitor.send("What is your return policy?", "child-1")
        assert _next_message(events).data["direction"] == "in"
        reply = _next_message(events)
    assert reply.data["direction"] == "out"
    assert reply.data["citations"], reply.data  # grounded in the pack the child searched through `serve`
    assert len(llm.completion_requests) == before + 1


def test_a_child_killed_mid_answer_loses_nothing_and_is_replaced(stack: Stack, llm: FakeOpenAIServer) -> None:
    state = _app_state(stack)
    [first] = state.answerers.pids()
    paused = llm.streams_paused
    llm.pause_stream_after(1)  # the child is holding the message, in the middle of the LLM's answer
    try:
        visitor = stack.visitor(stack.northwind)
        visitor.send("Do you ship to Canada?", "child-2")
        wait("start of the streamed answer", lambda: llm.streams_paused > paused)
        os.kill(first, signal.SIGKILL)
    finally:
        llm.pause_stream_after()
        llm.resume_stream()  # let the dead child's stream end
    second = wait("new answering process", lambda: [p for p in state.answerers.pids() if p != first])
    messages = visitor.wait_for(lambda m: bool(replies(m)), timeout=60)
    assert len(replies(messages)) == 1 and replies(messages)[0]["citations"]
    assert second != [first]
    # The first attempt died with its process; the second was the new child's after the message's lease lapsed.
    asked = [r for r in llm.completion_requests if "Do you ship to Canada?" in str(r.body)]
    assert len(asked) == 2


def test_a_rate_limit_raised_in_serve_reaches_the_child_whole() -> None:
    # Limits live in `serve` (one count for every process); its refusal crosses the process boundary pickled.
    limiter = RateLimiter.from_settings(_settings(rate_llm_calls_per_tenant="1/minute"))
    limiter.hit(LLM_CALLS_PER_TENANT, "t1")
    with pytest.raises(RateLimited) as refused:
        limiter.hit(LLM_CALLS_PER_TENANT, "t1")
    again = pickle.loads(pickle.dumps(refused.value))
    assert (again.rule, again.retry_after, again.detail) == (refused.value.rule, refused.value.retry_after,
                                                            refused.value.detail)


def _settings(**values: Any) -> Any:
    from pathlib import Path

    from tests.conftest import settings_for

    return settings_for(Path("/nonexistent"), **values)


def test_a_stopped_lender_leaves_no_thread_behind(services: Any) -> None:
    # The manager server's own accept loop retries a closed listener forever; ours ends with it.
    from app.answerers import AnswerProcesses

    lent = AnswerProcesses.start(services, 0)
    assert lent._acceptor is not None and lent._acceptor.is_alive()
    lent.stop()
    assert not lent._acceptor.is_alive()
    assert not lent.folder.exists()  # the socket's private folder is gone too


# `serve` as far as its children see it: it lends its services, waits until its child reads the bus (the child is
# answering), prints the child's pid and lives on until killed.
SERVE_STAND_IN = """
import sys, threading, time
from pathlib import Path
from app.answerers import AnswerProcesses
from app.bootstrap import Container, install
from app.bus.memory import MemoryBus
from app.db import migrate
from tests.conftest import settings_for

reading = threading.Event()

class Bus(MemoryBus):
    def read(self, *args, **kwargs):
        reading.set()
        return super().read(*args, **kwargs)

container = Container(settings_for(Path(sys.argv[1])), bus=Bus())
install(container)
migrate()
lent = AnswerProcesses.start(container, 1)
assert reading.wait(120), "the answering process never read the bus"
print(lent.pids()[0], flush=True)
time.sleep(600)
"""


def test_a_child_whose_serve_is_gone_stops(tmp_path: Any) -> None:
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    serve = subprocess.Popen([sys.executable, "-c", SERVE_STAND_IN, str(tmp_path / "home")], cwd=repo,
                             stdout=subprocess.PIPE, text=True)
    try:
        assert serve.stdout is not None
        child = int(serve.stdout.readline())
        os.kill(child, 0)  # running
    finally:
        serve.kill()  # no chance to stop its children
        serve.wait()

    def gone() -> bool:
        try:
            state = Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            return True
        return state == "Z"  # exited, not yet reaped by whoever adopted it

    wait("stop of the orphaned answering process", gone, timeout=90)
