"""A real OpenAI-compatible HTTP server on 127.0.0.1 for tests: POST /v1/chat/completions.

It speaks the wire format the `openai` SDK expects, checks `Authorization: Bearer <key>`, records every
request and plays scripted behaviours. One-shot steps queued with `then_*` are used first, in order;
afterwards every request gets the default (`reply`, `reply_with`, or a default failure).

    def test_x(openai_server):
        openai_server.reply("Returns take 30 days [1].")
        openai_server.then_status(429, times=2, retry_after=0.05)  # two 429s, then the reply
        config = LLMConfig(base_url=openai_server.base_url, api_key=openai_server.api_key, model="m")

A request with `"stream": true` gets the reply as the real API streams it: `text/event-stream` over chunked
transfer encoding, `data: {chat.completion.chunk}` events (a role delta, the text a word at a time, a last chunk
with `finish_reason`, and when the request asks `stream_options.include_usage` one with no choices and the usage),
then `data: [DONE]`. `pause_stream_after(n)` holds streams after their n-th text chunk
until the test calls `resume_stream()` (so a test can look at what a visitor sees mid-answer without timing);
`then_stream_break(n)` drops the connection after n chunks; `then_stream_error(n)` sends an error event.

A scripted answer can read the prompt it answers: `prompt_passages(body)` gives the numbered knowledge passages
of the system message (passage 1 first), `customer_question(body)` the customer's last message:

    openai_server.reply_with(lambda body: f"{first_sentence(prompt_passages(body)[0])} [1]")

Use it from any test package: `from tests.fakes.openai_server import openai_server` in a conftest.py (the
fixture is defined here), or start `FakeOpenAIServer()` yourself as a context manager.
"""

from __future__ import annotations

import json
import re
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest


@dataclass
class RecordedRequest:
    path: str
    headers: dict[str, str]  # lower-case names
    body: dict[str, Any] | None

    @property
    def messages(self) -> list[dict[str, Any]]:
        return list((self.body or {}).get("messages", []))


@dataclass
class Step:
    """One scripted response. `reply` may be a string or a function of the request body."""

    status: int = 200
    reply: str | Callable[[dict[str, Any]], str] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0
    raw_body: bytes | None = None  # sent as-is (e.g. invalid JSON)
    error_message: str = ""
    stream_break_after: int | None = None  # streamed: drop the connection after this many text chunks
    stream_error_after: int | None = None  # streamed: send an error event after this many text chunks
    stream_odd_after: int | None = None  # streamed: send `odd_chunk` (not the API's shape) after this many
    odd_chunk: Any = None


def chat_completion(
    text: str, model: str, prompt_tokens: int = 42, completion_tokens: int = 7
) -> dict[str, Any]:
    """The JSON body of a successful /v1/chat/completions response."""
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "system_fingerprint": "fp_fake",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text, "refusal": None},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }


def chat_completion_chunk(
    completion_id: str, model: str, content: str | None, *, role: bool = False, finish_reason: str | None = None
) -> dict[str, Any]:
    """One `data:` event of a streamed /v1/chat/completions response."""
    delta: dict[str, Any] = {"role": "assistant", "content": ""} if role else {}
    if content is not None:
        delta["content"] = content
    return {
        "id": completion_id,
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "system_fingerprint": "fp_fake",
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
    }


def text_chunks(text: str) -> list[str]:
    """How the fake splits an answer into streamed pieces: a word and the space after it."""
    return re.findall(r"\S+\s*|\s+", text)


_PASSAGE = re.compile(r"<passage n=\"(\d+)\"[^>]*>\n(.*?)\n</passage>", re.S)
_CUSTOMER = re.compile(r"<customer_message>\n(.*?)\n</customer_message>", re.S)


def prompt_passages(body: dict[str, Any]) -> list[str]:
    """The knowledge passages of a chat request's system message, in their numbered order."""
    system = next((m["content"] for m in body.get("messages", []) if m.get("role") == "system"), "")
    return [text for _, text in sorted(_PASSAGE.findall(system), key=lambda found: int(found[0]))]


def customer_question(body: dict[str, Any]) -> str:
    found = _CUSTOMER.findall(body["messages"][-1]["content"])
    return str(found[-1]) if found else ""


def first_sentence(passage: str) -> str:
    """A passage's first sentence of answer text (an FAQ passage's answer, not its question)."""
    answer = re.split(r"\n\s*A:\s*", passage, maxsplit=1)[-1].strip()
    for line in answer.splitlines():  # the first line of prose: not a heading, a table row or a list label
        line = re.sub(r"^\s*(?:#+|[-*>]|\d+[.)])\s*|\*\*", "", line).strip()
        if len(line.split()) >= 5 and "|" not in line:
            return re.split(r"(?<=[.!?])\s+", line, maxsplit=1)[0]
    return answer.splitlines()[0]


def _error_body(status: int, message: str) -> dict[str, Any]:
    kinds = {
        400: "invalid_request_error",
        401: "invalid_request_error",
        403: "permission_denied",
        429: "rate_limit_exceeded",
        500: "server_error",
        503: "server_error",
    }
    return {
        "error": {
            "message": message or f"HTTP {status}",
            "type": kinds.get(status, "api_error"),
            "param": None,
            "code": None,
        }
    }


class FakeOpenAIServer:
    def __init__(self, api_key: str = "sk-test-fake", model_suffix: str = "") -> None:
        self.api_key = api_key
        self.model_suffix = model_suffix
        self.requests: list[RecordedRequest] = []
        self._steps: deque[Step] = deque()
        self._default = Step(reply="OK")
        self._lock = threading.Lock()
        self._pauses: set[int] = set()
        self._resume = threading.Semaphore(0)
        self.streams_paused = 0  # how many times a stream reached a pause point
        self.connections = 0  # TCP connections accepted (a client that reuses its connection opens one)
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, args=(0.05,), name="fake-openai", daemon=True
        )

    # ------------------------------------------------------------------ lifecycle
    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> FakeOpenAIServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self) -> FakeOpenAIServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ scripting
    def reply(self, text: str) -> None:
        """Every later request (after queued steps) answers `text`."""
        self._default = Step(reply=text)

    def reply_with(self, fn: Callable[[dict[str, Any]], str], delay_s: float = 0.0) -> None:
        """Every later request answers `fn(request_body)`, after `delay_s` (a slow model)."""
        self._default = Step(reply=fn, delay_s=delay_s)

    def fail_always(self, status: int, retry_after: float | None = None) -> None:
        headers = {"retry-after": str(retry_after)} if retry_after is not None else {}
        self._default = Step(status=status, headers=headers, error_message="scripted failure")

    def then_status(
        self, status: int, times: int = 1, retry_after: float | None = None, message: str = ""
    ) -> None:
        headers = {"retry-after": str(retry_after)} if retry_after is not None else {}
        for _ in range(times):
            self._steps.append(Step(status=status, headers=headers, error_message=message))

    def then_delay(self, seconds: float, times: int = 1, text: str = "late") -> None:
        for _ in range(times):
            self._steps.append(Step(reply=text, delay_s=seconds))

    def then_invalid_json(self, times: int = 1) -> None:
        for _ in range(times):
            self._steps.append(Step(raw_body=b'{"id": "chatcmpl-broken", "choices": [ {"mess'))

    def then_reply(self, text: str) -> None:
        self._steps.append(Step(reply=text))

    def pause_stream_after(self, *chunk_counts: int) -> None:
        """Streamed answers stop after each of these numbers of text chunks until `resume_stream()`."""
        self._pauses = set(chunk_counts)

    def resume_stream(self) -> None:
        """Let one paused stream go on (a later pause point stops it again)."""
        self._resume.release()

    def then_stream_break(self, after_chunks: int, text: str) -> None:
        """The next streamed answer stops after `after_chunks` chunks of `text`: the connection is dropped."""
        self._steps.append(Step(reply=text, stream_break_after=after_chunks))

    def then_stream_odd_chunk(self, after_chunks: int, text: str, chunk: Any) -> None:
        """The next streamed answer sends `after_chunks` chunks of `text`, then `chunk` as a `data:` event (JSON,
        but not shaped like the API's chunks: what a broken OpenAI-compatible server might send), then goes on."""
        self._steps.append(Step(reply=text, stream_odd_after=after_chunks, odd_chunk=chunk))

    def then_stream_error(self, after_chunks: int, text: str, message: str = "The server had an error") -> None:
        """The next streamed answer sends `after_chunks` chunks of `text`, then an error event (as the API does
        when it fails mid-answer) and ends."""
        self._steps.append(Step(reply=text, stream_error_after=after_chunks, error_message=message))

    @property
    def completion_requests(self) -> list[RecordedRequest]:
        return [r for r in self.requests if r.path.endswith("/chat/completions")]

    def _next_step(self) -> Step:
        with self._lock:
            return self._steps.popleft() if self._steps else self._default

    # ------------------------------------------------------------------ HTTP
    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # Headers and body go out in two writes: with Nagle on, the body waits for the client's delayed ACK of
            # the headers, 40 ms added to every answer of an "instant" LLM (a real server does not do that).
            disable_nagle_algorithm = True

            def log_message(self, format: str, *args: Any) -> None:  # keep test output clean
                return

            def setup(self) -> None:
                with server._lock:
                    server.connections += 1
                super().setup()

            def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    for k, v in (headers or {}).items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout test): nothing to do

            def _json(
                self, status: int, payload: dict[str, Any], headers: dict[str, str] | None = None
            ) -> None:
                self._send(status, json.dumps(payload).encode(), headers)

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                try:
                    body = json.loads(raw) if raw else None
                except ValueError:
                    body = None
                with server._lock:
                    server.requests.append(
                        RecordedRequest(self.path, {k.lower(): v for k, v in self.headers.items()}, body)
                    )
                if self.path.rstrip("/") != "/v1/chat/completions":
                    self._json(404, _error_body(404, f"unknown path {self.path}"))
                    return
                if self.headers.get("Authorization") != f"Bearer {server.api_key}":
                    self._json(401, _error_body(401, "Incorrect API key provided."))
                    return
                if not isinstance(body, dict) or not body.get("model") or not body.get("messages"):
                    self._json(400, _error_body(400, "'model' and 'messages' are required"))
                    return
                step = server._next_step()
                if step.delay_s:
                    time.sleep(step.delay_s)
                if step.raw_body is not None:
                    self._send(step.status, step.raw_body, step.headers)
                    return
                if step.status != 200:
                    self._json(step.status, _error_body(step.status, step.error_message), step.headers)
                    return
                text = step.reply(body) if callable(step.reply) else (step.reply or "")
                if body.get("stream") is True:
                    self._stream(step, text, body["model"] + server.model_suffix, body)
                    return
                self._json(200, chat_completion(text, body["model"] + server.model_suffix), step.headers)

            def _stream(self, step: Step, text: str, model: str, step_body: dict[str, Any]) -> None:
                completion_id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
                try:
                    self.send_response(200)
                    self.send_header("Content-Type", "text/event-stream; charset=utf-8")
                    self.send_header("Transfer-Encoding", "chunked")
                    for k, v in step.headers.items():
                        self.send_header(k, v)
                    self.end_headers()
                    self._event(chat_completion_chunk(completion_id, model, None, role=True))
                    pieces = text_chunks(text)
                    for sent in range(len(pieces) + 1):
                        if sent:
                            self._event(chat_completion_chunk(completion_id, model, pieces[sent - 1]))
                        if sent == step.stream_break_after:
                            self.close_connection = True
                            return  # no terminating chunk: the client sees the connection end mid-body
                        if sent == step.stream_odd_after:
                            self._write_chunk(f"data: {json.dumps(step.odd_chunk)}\n\n".encode())
                        if sent == step.stream_error_after:
                            self._event({"error": {"message": step.error_message, "type": "server_error",
                                                   "param": None, "code": None}})
                            self._write_chunk(b"")
                            return
                        if sent in server._pauses:
                            with server._lock:
                                server.streams_paused += 1
                            server._resume.acquire(timeout=60)
                    self._event(chat_completion_chunk(completion_id, model, None, finish_reason="stop"))
                    if (step_body.get("stream_options") or {}).get("include_usage"):
                        # As the API does: one more chunk with no choices and the usage of the whole answer.
                        self._event({**chat_completion_chunk(completion_id, model, None), "choices": [],
                                     "usage": chat_completion("", model)["usage"]})
                    self._write_chunk(b"data: [DONE]\n\n")
                    self._write_chunk(b"")
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up

            def _event(self, payload: dict[str, Any]) -> None:
                self._write_chunk(f"data: {json.dumps(payload)}\n\n".encode())

            def _write_chunk(self, data: bytes) -> None:
                self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
                self.wfile.flush()

        return Handler


@pytest.fixture
def openai_server() -> Iterator[FakeOpenAIServer]:
    """A fresh fake OpenAI-compatible server per test (127.0.0.1, free port)."""
    with FakeOpenAIServer() as server:
        yield server
