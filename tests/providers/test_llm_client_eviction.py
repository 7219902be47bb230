"""The LLM client's per-(base_url, api_key) cache of SDK clients, through the real `openai` SDK against fake
OpenAI-compatible servers on 127.0.0.1: a client evicted from the cache while another thread is using it is not
closed under that call (a request on a closed client is a bare RuntimeError the router cannot handle)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor

import pytest

from app.providers.llm.base import Completion, LLMConfig
from app.providers.llm.openai_client import OpenAILLMClient
from tests.fakes.openai_server import FakeOpenAIServer

MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
ANSWER = "Returns are free within 30 days [1]. Start one from your order page [2]."


def _config(server: FakeOpenAIServer) -> LLMConfig:
    return LLMConfig(base_url=server.base_url, api_key=server.api_key, model="fake-model", timeout_s=10.0,
                     max_retries=2)


@pytest.fixture
def servers() -> Iterator[tuple[FakeOpenAIServer, FakeOpenAIServer]]:
    with FakeOpenAIServer(api_key="sk-tenant-a") as a, FakeOpenAIServer(api_key="sk-tenant-b") as b:
        a.reply(ANSWER)
        b.reply("from b")
        yield a, b


def _wait_for(what: str, done: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 10
    while not done():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def _in_thread(call: Callable[[], Completion]) -> tuple[ThreadPoolExecutor, Future[Completion]]:
    pool = ThreadPoolExecutor(max_workers=1)
    return pool, pool.submit(call)


def test_a_call_keeps_its_client_while_another_tenants_call_evicts_it(
        servers: tuple[FakeOpenAIServer, FakeOpenAIServer]) -> None:
    """Tenant A's call is waiting to retry a 503 (Retry-After) when tenant B's call takes the only cache slot: the
    retry goes out on A's client all the same, and the answer arrives."""
    a, b = servers
    a.then_status(503, retry_after=3.0)  # B's call (milliseconds) evicts A's client well within this wait
    client = OpenAILLMClient(cache_size=1)
    pool, call = _in_thread(lambda: client.complete(_config(a), MESSAGES))
    try:
        _wait_for("tenant A's first attempt", lambda: len(a.completion_requests) == 1)
        assert client.complete(_config(b), MESSAGES).text == "from b"  # evicts A's client from the cache
        assert len(a.completion_requests) == 1 and not call.done()  # while A's call still holds it
        assert call.result(timeout=10).text == ANSWER
        assert len(a.completion_requests) == 2
    finally:
        pool.shutdown()
        client.close()


def test_a_stream_is_not_cut_off_when_its_client_is_evicted(
        servers: tuple[FakeOpenAIServer, FakeOpenAIServer]) -> None:
    a, b = servers
    a.pause_stream_after(2)
    client = OpenAILLMClient(cache_size=1)
    seen: list[str] = []
    pool, call = _in_thread(lambda: client.stream(_config(a), MESSAGES, seen.append))
    try:
        _wait_for("tenant A's stream to be part-way", lambda: a.streams_paused == 1)
        assert client.complete(_config(b), MESSAGES).text == "from b"  # evicts A's client from the cache
        a.resume_stream()
        assert call.result(timeout=10).text == ANSWER
        assert seen[-1] == ANSWER
    finally:
        a.resume_stream()
        pool.shutdown()
        client.close()


def test_an_evicted_client_is_closed_once_its_last_call_returns(
        servers: tuple[FakeOpenAIServer, FakeOpenAIServer]) -> None:
    """Eviction does not leave the client's connections open: A's SDK client is closed once A's call is over, and
    a later call for A gets a new one."""
    a, b = servers
    client = OpenAILLMClient(cache_size=1)
    assert client.complete(_config(a), MESSAGES).text == ANSWER
    (cached,) = client._clients.values()
    sdk_client = cached.client
    a.pause_stream_after(2)
    pool, call = _in_thread(lambda: client.stream(_config(a), MESSAGES, lambda _: None))
    try:
        _wait_for("tenant A's stream to be part-way", lambda: a.streams_paused == 1)
        client.complete(_config(b), MESSAGES)
        assert not sdk_client.is_closed()  # A's stream still holds it
        a.resume_stream()
        assert call.result(timeout=10).text == ANSWER
        assert sdk_client.is_closed()
        assert client.complete(_config(a), MESSAGES).text == ANSWER  # a new client for A
    finally:
        a.resume_stream()
        pool.shutdown()
        client.close()
