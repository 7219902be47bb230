"""The LLM client through the real `openai` SDK against a real HTTP server on 127.0.0.1."""

from __future__ import annotations

from itertools import pairwise
from typing import Any

import pytest

from app.providers.llm.base import LLMConfig, LLMError
from app.providers.llm.openai_client import OpenAILLMClient
from tests.fakes.openai_server import FakeOpenAIServer

MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]


def _config(server: FakeOpenAIServer, **overrides: Any) -> LLMConfig:
    values: dict[str, Any] = {
        "base_url": server.base_url,
        "api_key": server.api_key,
        "model": "fake-model",
        "timeout_s": 2.0,
        "max_retries": 2,
    }
    values.update(overrides)
    return LLMConfig(**values)


def test_success_returns_text_model_and_usage(openai_server: FakeOpenAIServer) -> None:
    openai_server.reply("Returns are free within 30 days [1].")
    completion = OpenAILLMClient().complete(_config(openai_server), MESSAGES)
    assert completion.text == "Returns are free within 30 days [1]."
    assert completion.model == "fake-model"
    assert (completion.prompt_tokens, completion.completion_tokens) == (42, 7)
    (request,) = openai_server.completion_requests
    assert request.headers["authorization"] == f"Bearer {openai_server.api_key}"
    assert request.body is not None and request.body["model"] == "fake-model"
    assert request.messages == MESSAGES
    assert request.body["max_tokens"] == 600 and request.body["temperature"] == 0.2


def test_request_is_the_one_the_sdks_create_sends(openai_server: FakeOpenAIServer) -> None:
    """The client posts its body without `create`'s type walk: same path, JSON body, auth and SDK headers."""
    import openai

    openai_server.reply("ok [1]")
    config = _config(openai_server)
    history = [*MESSAGES, {"role": "assistant", "content": "Hello! [1]"}, {"role": "user", "content": "Thé? 🙂"}]
    OpenAILLMClient().complete(config, history)
    sdk = openai.OpenAI(base_url=config.base_url, api_key=config.api_key, max_retries=0)
    sdk.chat.completions.create(model=config.model, messages=history,  # type: ignore[arg-type]
                                temperature=config.temperature, max_tokens=config.max_tokens)
    ours, theirs = openai_server.completion_requests
    assert ours.path == theirs.path
    assert ours.body == theirs.body and ours.messages == history
    volatile = {"x-stainless-retry-count", "x-stainless-read-timeout", "x-stainless-timeout",
                "idempotency-key"}
    assert {k: v for k, v in ours.headers.items() if k not in volatile} == \
        {k: v for k, v in theirs.headers.items() if k not in volatile}


def test_reply_built_from_the_request(openai_server: FakeOpenAIServer) -> None:
    openai_server.reply_with(lambda body: f"You said: {body['messages'][-1]['content']} [1]")
    assert OpenAILLMClient().complete(_config(openai_server), MESSAGES).text == "You said: Hi [1]"


def test_429_then_success_is_retried_by_the_sdk(openai_server: FakeOpenAIServer) -> None:
    openai_server.reply("finally")
    openai_server.then_status(429, times=2, retry_after=0.05)
    completion = OpenAILLMClient().complete(_config(openai_server, max_retries=2), MESSAGES)
    assert completion.text == "finally"
    assert len(openai_server.completion_requests) == 3


def test_429_forever_is_rate_limited_after_bounded_retries(openai_server: FakeOpenAIServer) -> None:
    openai_server.fail_always(429, retry_after=0.05)
    with pytest.raises(LLMError) as err:
        OpenAILLMClient().complete(_config(openai_server, max_retries=2), MESSAGES)
    assert err.value.reason == "rate_limited"
    assert len(openai_server.completion_requests) == 3  # the first try and two retries, no more


def test_server_errors_are_unavailable(openai_server: FakeOpenAIServer) -> None:
    openai_server.fail_always(500, retry_after=0.05)
    with pytest.raises(LLMError) as err:
        OpenAILLMClient().complete(_config(openai_server, max_retries=1), MESSAGES)
    assert err.value.reason == "unavailable"
    assert len(openai_server.completion_requests) == 2


def test_500_then_success(openai_server: FakeOpenAIServer) -> None:
    openai_server.reply("recovered")
    openai_server.then_status(503, retry_after=0.05)
    assert OpenAILLMClient().complete(_config(openai_server), MESSAGES).text == "recovered"
    assert len(openai_server.completion_requests) == 2


def test_timeout_is_bounded(openai_server: FakeOpenAIServer) -> None:
    openai_server.then_delay(1.5, times=2)
    with pytest.raises(LLMError) as err:
        OpenAILLMClient().complete(_config(openai_server, timeout_s=0.3, max_retries=1), MESSAGES)
    assert err.value.reason == "timeout"
    assert len(openai_server.completion_requests) == 2


def test_wrong_key_is_auth_and_not_retried(openai_server: FakeOpenAIServer) -> None:
    with pytest.raises(LLMError) as err:
        OpenAILLMClient().complete(_config(openai_server, api_key="sk-wrong"), MESSAGES)
    assert err.value.reason == "auth"
    assert "401" in err.value.detail
    assert len(openai_server.completion_requests) == 1


def test_bad_request_and_unknown_path(openai_server: FakeOpenAIServer) -> None:
    openai_server.then_status(400, message="max_tokens is too large")
    with pytest.raises(LLMError) as err:
        OpenAILLMClient().complete(_config(openai_server), MESSAGES)
    assert err.value.reason == "bad_request" and "max_tokens" in err.value.detail
    with pytest.raises(LLMError) as err:
        OpenAILLMClient().complete(
            _config(openai_server, base_url=openai_server.base_url + "/nope"), MESSAGES
        )
    assert err.value.reason == "bad_request"


def test_empty_and_invalid_responses(openai_server: FakeOpenAIServer) -> None:
    openai_server.reply("")
    with pytest.raises(LLMError) as err:
        OpenAILLMClient().complete(_config(openai_server), MESSAGES)
    assert err.value.reason == "empty_response"
    openai_server.then_invalid_json()
    with pytest.raises(LLMError) as err:
        OpenAILLMClient().complete(_config(openai_server, max_retries=0), MESSAGES)
    assert err.value.reason == "unavailable"


def test_connection_refused_is_unavailable() -> None:
    server = FakeOpenAIServer().start()
    config = _config(server, max_retries=0)
    server.stop()
    with pytest.raises(LLMError) as err:
        OpenAILLMClient().complete(config, MESSAGES)
    assert err.value.reason == "unavailable"


def test_each_tenant_key_reaches_the_server_with_its_own_client() -> None:
    with FakeOpenAIServer(api_key="sk-tenant-a") as a, FakeOpenAIServer(api_key="sk-tenant-b") as b:
        a.reply("from a")
        b.reply("from b")
        client = OpenAILLMClient(cache_size=1)  # eviction must not break later calls
        for _ in range(2):
            assert client.complete(_config(a), MESSAGES).text == "from a"
            assert client.complete(_config(b), MESSAGES).text == "from b"
        assert {r.headers["authorization"] for r in a.completion_requests} == {"Bearer sk-tenant-a"}
        assert {r.headers["authorization"] for r in b.completion_requests} == {"Bearer sk-tenant-b"}
        client.close()


# ---------------------------------------------------------------------------------------------------------------
# Streamed answers (`stream=True`): the fake sends SSE chunks as the real API does.

ANSWER = "Returns are free within 30 days [1]. Start one from your order page [2]."


def _stream(server: FakeOpenAIServer, **overrides: Any) -> tuple[Any, list[str]]:
    seen: list[str] = []
    return OpenAILLMClient().stream(_config(server, **overrides), MESSAGES, seen.append), seen


def test_a_streamed_answer_arrives_piece_by_piece(openai_server: FakeOpenAIServer) -> None:
    from tests.fakes.openai_server import text_chunks

    openai_server.reply(ANSWER)
    completion, seen = _stream(openai_server)
    assert completion.text == ANSWER and completion.model == "fake-model"
    assert len(seen) == len(text_chunks(ANSWER)) > 5  # one call per text chunk, each the whole text so far
    assert all(later.startswith(earlier) for earlier, later in pairwise(seen))
    assert seen[-1] == ANSWER
    assert (completion.prompt_tokens, completion.completion_tokens) == (42, 7)  # the usage chunk, asked for
    (request,) = openai_server.completion_requests
    assert request.body is not None and request.body["stream_options"] == {"include_usage": True}
    assert request.body is not None and request.body["stream"] is True and request.messages == MESSAGES


def test_streamed_answers_reuse_one_connection(openai_server: FakeOpenAIServer) -> None:
    """The body is read to its end after `[DONE]`, so the next answer goes over the same connection, and the
    answers are the same as the SDK's own stream gives."""
    import openai

    openai_server.reply(ANSWER)
    config, client = _config(openai_server), OpenAILLMClient()
    for _ in range(3):
        seen: list[str] = []
        completion = client.stream(config, MESSAGES, seen.append)
        assert completion.text == ANSWER and seen[-1] == ANSWER
        assert (completion.prompt_tokens, completion.completion_tokens) == (42, 7)
    assert openai_server.connections == 1
    sdk = openai.OpenAI(base_url=config.base_url, api_key=config.api_key, max_retries=0)
    chunks = sdk.chat.completions.create(model=config.model, messages=MESSAGES,  # type: ignore[arg-type]
                                         stream=True, stream_options={"include_usage": True})
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == ANSWER
    client.close()


def test_a_server_holding_the_body_open_after_done_does_not_hold_the_answer() -> None:
    """The body is drained after `[DONE]` for at most DRAIN_TIMEOUT_S, not the request's read timeout."""
    import json
    import socket
    import threading
    import time

    from app.providers.llm.openai_client import DRAIN_TIMEOUT_S

    listener = socket.create_server(("127.0.0.1", 0))
    done = threading.Event()

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
            chunk = {"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "m",
                     "choices": [{"index": 0, "delta": {"content": "held open"}, "finish_reason": "stop"}]}
            for data in (f"data: {json.dumps(chunk)}\n\n".encode(), b"data: [DONE]\n\n"):
                conn.sendall(f"{len(data):x}\r\n".encode() + data + b"\r\n")
            done.wait(10)  # the body never ends

    threading.Thread(target=serve, daemon=True).start()
    config = LLMConfig(base_url=f"http://127.0.0.1:{listener.getsockname()[1]}/v1", api_key="k", model="m",
                       timeout_s=5.0, max_retries=0)
    started = time.monotonic()
    try:
        assert OpenAILLMClient().stream(config, MESSAGES, lambda _: None).text == "held open"
        assert time.monotonic() - started < DRAIN_TIMEOUT_S + 1.0  # not the 5 s read timeout
    finally:
        done.set()
        listener.close()


def test_the_streamed_request_is_the_one_the_sdks_create_sends(openai_server: FakeOpenAIServer) -> None:
    import openai

    openai_server.reply("ok [1]")
    config = _config(openai_server)
    OpenAILLMClient().stream(config, MESSAGES, lambda _: None)
    sdk = openai.OpenAI(base_url=config.base_url, api_key=config.api_key, max_retries=0)
    chunks = sdk.chat.completions.create(model=config.model, messages=MESSAGES,  # type: ignore[arg-type]
                                         temperature=config.temperature, max_tokens=config.max_tokens, stream=True,
                                         stream_options={"include_usage": True})
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "ok [1]"
    ours, theirs = openai_server.completion_requests
    assert ours.body == theirs.body
    volatile = {"x-stainless-retry-count", "x-stainless-read-timeout", "x-stainless-timeout", "idempotency-key"}
    assert {k: v for k, v in ours.headers.items() if k not in volatile} == \
        {k: v for k, v in theirs.headers.items() if k not in volatile}


def test_a_stream_is_opened_after_the_sdk_retried_a_429(openai_server: FakeOpenAIServer) -> None:
    openai_server.reply(ANSWER)
    openai_server.then_status(429, times=2, retry_after=0.05)
    completion, _ = _stream(openai_server, max_retries=2)
    assert completion.text == ANSWER
    assert len(openai_server.completion_requests) == 3


def test_a_stream_that_breaks_before_its_first_token_is_opened_again(openai_server: FakeOpenAIServer) -> None:
    openai_server.reply(ANSWER)
    openai_server.then_stream_break(0, ANSWER)
    openai_server.then_stream_error(0, ANSWER)
    completion, seen = _stream(openai_server, max_retries=2)
    assert completion.text == ANSWER and seen[-1] == ANSWER
    assert len(openai_server.completion_requests) == 3


def test_retries_before_the_first_token_are_bounded(openai_server: FakeOpenAIServer) -> None:
    for _ in range(5):
        openai_server.then_stream_break(0, ANSWER)
    with pytest.raises(LLMError) as err:
        _stream(openai_server, max_retries=1)
    assert err.value.reason == "unavailable"
    assert len(openai_server.completion_requests) == 2  # the first try + max_retries


@pytest.mark.parametrize("failure", ["break", "error"])
def test_a_stream_that_fails_after_some_text_is_an_error_and_not_retried(
    openai_server: FakeOpenAIServer, failure: str
) -> None:
    openai_server.reply(ANSWER)
    if failure == "break":
        openai_server.then_stream_break(3, ANSWER)
    else:
        openai_server.then_stream_error(3, ANSWER, message="overloaded")
    with pytest.raises(LLMError) as err:
        _stream(openai_server, max_retries=2)
    assert err.value.reason == "unavailable"
    if failure == "error":
        assert "overloaded" in err.value.detail
    assert len(openai_server.completion_requests) == 1  # text was shown: a retry would repeat it


def test_a_stalled_stream_times_out(openai_server: FakeOpenAIServer) -> None:
    openai_server.reply(ANSWER)
    openai_server.pause_stream_after(2)
    try:
        with pytest.raises(LLMError) as err:
            _stream(openai_server, timeout_s=0.5, max_retries=0)
        assert err.value.reason == "timeout"
    finally:
        openai_server.resume_stream()


def test_a_streamed_error_status_and_an_empty_stream(openai_server: FakeOpenAIServer) -> None:
    openai_server.then_status(400, message="max_tokens is too large")
    with pytest.raises(LLMError) as err:
        _stream(openai_server)
    assert err.value.reason == "bad_request" and "max_tokens" in err.value.detail
    openai_server.reply("")
    with pytest.raises(LLMError) as err:
        _stream(openai_server)
    assert err.value.reason == "empty_response"


def test_a_guarded_stream_cannot_reach_a_private_address(openai_server: FakeOpenAIServer) -> None:
    openai_server.reply(ANSWER)
    with pytest.raises(LLMError) as err:
        _stream(openai_server, guarded=True, max_retries=0)
    assert err.value.reason == "blocked_url"
    assert openai_server.completion_requests == []


@pytest.mark.parametrize("odd", [
    "not an object",
    {"choices": ["not an object"]},
    {"choices": [{"index": 0, "delta": "a string"}]},
    {"choices": [{"index": 0, "delta": {"content": 42}}]},
    {"choices": [], "usage": "lots"},
])
def test_a_chunk_not_shaped_like_the_apis_is_an_llm_error(openai_server: FakeOpenAIServer, odd: object) -> None:
    # A broken OpenAI-compatible server: the handler gets an LLMError (the router falls over, the orchestrator
    # escalates), never a TypeError that would redeliver the message until it is dead-lettered.
    openai_server.reply(ANSWER)
    openai_server.then_stream_odd_chunk(3, ANSWER, odd)  # after text: an error, not retried
    with pytest.raises(LLMError) as err:
        _stream(openai_server, max_retries=2)
    assert err.value.reason == "unavailable" and "not shaped like the API's" in err.value.detail
    assert len(openai_server.completion_requests) == 1
    openai_server.then_stream_odd_chunk(0, ANSWER, odd)  # before the first token: opened again, then answered
    completion, _ = _stream(openai_server, max_retries=2)
    assert completion.text == ANSWER and len(openai_server.completion_requests) == 3
