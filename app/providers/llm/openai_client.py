"""LLMClient over the official `openai` SDK, for any OpenAI-compatible chat-completions API.

The SDK does the retrying: 408/409/429/5xx and timeouts are retried `max_retries` times with exponential
backoff, honouring `Retry-After`/`retry-after-ms`. What still fails afterwards becomes one `LLMError` with a
small, flat reason the orchestrator can act on: timeout, rate_limited, unavailable, auth, bad_request,
empty_response.

`stream` is the same call with `stream=True` (the web widget shows the answer as it is written); a stream
that fails part-way raises the same `LLMError`.

A tenant's own base URL (`config.guarded`) is reached through the outbound URL policy (app/netguard.py).
Clients are cached per (base_url, api_key, guarded) so tenants never share credentials and a tenant's connection
pool is reused across messages; nothing tenant-specific lives on a module-level client. The timeout and the number
of retries go with each request (the router in app/providers/llm/router.py shortens the timeout to what is left of
a call's deadline and does its own retrying).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, cast

import httpx2
import openai
from openai import Stream
from openai._streaming import ServerSentEvent
from openai.types.chat import ChatCompletion

from app.netguard import blocked_reason, guarded_client2
from app.providers.llm.base import Completion, LLMConfig, LLMError

CONNECT_TIMEOUT_S = 5.0
DRAIN_TIMEOUT_S = 0.1  # the longest wait for the body's end after [DONE] (as the SDK's async stream)
_CACHE_SIZE = 64
log = logging.getLogger(__name__)

_ClientKey = tuple[str, str, bool]


@dataclass
class _Cached:
    client: openai.OpenAI
    users: int = 0  # calls using the client now
    evicted: bool = False  # out of the cache: closed when its last user returns


class OpenAILLMClient:
    def __init__(self, cache_size: int = _CACHE_SIZE) -> None:
        self._clients: OrderedDict[_ClientKey, _Cached] = OrderedDict()
        self._lock = threading.Lock()
        self._cache_size = cache_size

    @contextmanager
    def _client(self, config: LLMConfig) -> Iterator[openai.OpenAI]:
        """The cached client of this (base_url, api_key, guarded), held for the block.

        A client is closed only once it is out of the cache AND no call holds it: each call counts itself in and
        out under the lock, and whoever sees the count reach zero on an evicted client closes it. Closing it at
        eviction would cut off another thread's call on it (a request on a closed client raises a bare
        RuntimeError that is no LLMError, so the router neither falls back nor escalates). Not closing it at all
        and leaving it to the garbage collector would be correct too, but its pooled connections would then close
        whenever the collector gets to them (a guarded httpx2 client has no finalizer of its own)."""
        key = (config.base_url, config.api_key, config.guarded)
        idle: list[openai.OpenAI] = []
        with self._lock:
            entry = self._clients.get(key)
            if entry is not None:
                self._clients.move_to_end(key)
            else:
                entry = self._clients[key] = _Cached(openai.OpenAI(
                    base_url=config.base_url,
                    api_key=config.api_key or "unused",  # local servers often need none; the SDK insists on one
                    http_client=guarded_client2() if config.guarded else None,
                ))
                while len(self._clients) > self._cache_size:
                    idle += self._evict(self._clients.popitem(last=False)[1])
            entry.users += 1
        _close(idle)
        try:
            yield entry.client
        finally:
            with self._lock:
                entry.users -= 1
                done = entry.evicted and entry.users == 0
            _close([entry.client] if done else [])

    @staticmethod
    def _evict(entry: _Cached) -> list[openai.OpenAI]:
        """Marks `entry` evicted (under the lock); its client when no call holds it, for the caller to close."""
        entry.evicted = True
        return [entry.client] if entry.users == 0 else []

    def complete(self, config: LLMConfig, messages: list[dict[str, str]]) -> Completion:
        """One chat completion; raises LLMError once the SDK's own retries are exhausted."""
        with self._client(config) as client:
            return self._complete(client, config, messages)

    def _complete(self, client: openai.OpenAI, config: LLMConfig, messages: list[dict[str, str]]) -> Completion:
        body = {"model": config.model, "messages": messages, "temperature": config.temperature,
                "max_tokens": config.max_tokens}
        try:
            # The SDK's own request path (auth, retries, timeouts, error types, response parsing) without
            # `chat.completions.create`'s walk of the body against its TypedDicts: a no-op for plain role/content
            # strings that cost 3-5 ms of held GIL per call (tests/assistant/test_llm_client.py checks the body
            # is the one `create` sends).
            response = client.post("/chat/completions", cast_to=ChatCompletion, body=body,
                                   options=_options(config))
        except (openai.OpenAIError, ValueError) as exc:
            raise _llm_error(exc, config) from exc

        choices = getattr(response, "choices", None) or []
        text = (choices[0].message.content or "").strip() if choices and choices[0].message else ""
        if not text:
            raise LLMError("empty_response", f"model {config.model} returned no text")
        usage = response.usage
        return Completion(
            text=text,
            model=response.model or config.model,
            prompt_tokens=usage.prompt_tokens if usage else 0,
            completion_tokens=usage.completion_tokens if usage else 0,
        )

    def stream(self, config: LLMConfig, messages: list[dict[str, str]], on_text: Callable[[str], None]) -> Completion:
        """One chat completion with `stream=True`: `on_text` gets the answer so far as it grows.

        Opening the stream goes through the SDK's retries as `complete` does. A stream that breaks before its
        first token is opened again, at most `max_retries` times; once text has arrived a failure raises
        `LLMError` (the caller shows nothing more and escalates, as for a failed call). The answer must be
        complete within `timeout_s` of each opening, as a one-shot answer must arrive within it.
        """
        with self._client(config) as client:
            return self._stream(client, config, messages, on_text)

    def _stream(self, client: openai.OpenAI, config: LLMConfig, messages: list[dict[str, str]],
                on_text: Callable[[str], None]) -> Completion:
        body = {"model": config.model, "messages": messages, "temperature": config.temperature,
                "max_tokens": config.max_tokens, "stream": True,
                "stream_options": {"include_usage": True}}  # the last chunk then carries the token usage
        for attempt in range(config.max_retries + 1):
            started = time.monotonic()
            try:
                # Chunks as the decoded JSON (`Stream[object]`): the SDK still reads the SSE and raises its errors,
                # but builds no `ChatCompletionChunk` per chunk (a quarter of the call's held GIL, docs/benchmarks.md).
                chunks = client.post("/chat/completions", cast_to=ChatCompletion, body=body,
                                     options=_options(config), stream=True, stream_cls=_Chunks)
            except (openai.OpenAIError, ValueError) as exc:
                raise _llm_error(exc, config) from exc  # the SDK has retried already
            text, model, usage, finished = "", config.model, None, False
            try:
                with chunks:
                    for chunk in chunks:
                        chunk_model, chunk_usage, piece, done = _chunk_parts(chunk)
                        model, usage = chunk_model or model, chunk_usage or usage
                        if piece:
                            text += piece
                            on_text(text)
                        finished = finished or done
                        if time.monotonic() - started > config.timeout_s:
                            raise LLMError("timeout", f"the answer was not complete within {config.timeout_s}s")
                if not finished:
                    raise LLMError("unavailable", "the stream ended before the answer was complete")
            except (openai.OpenAIError, ValueError, LLMError) as exc:
                error = exc if isinstance(exc, LLMError) else _llm_error(exc, config)
                if text or attempt == config.max_retries or error.reason not in _RETRY_BEFORE_TEXT:
                    raise error from exc
                log.debug("LLM stream broke before its first token (%s): opening it again", error.reason)
                continue
            if not text.strip():
                raise LLMError("empty_response", f"model {config.model} returned no text")
            return Completion(
                text=text.strip(),
                model=model,
                prompt_tokens=int(usage.get("prompt_tokens") or 0) if usage else 0,
                completion_tokens=int(usage.get("completion_tokens") or 0) if usage else 0,
            )
        raise AssertionError("unreachable: the last attempt returns or raises")

    def close(self) -> None:
        """Closes every cached client; one a call still holds is closed when that call returns."""
        idle: list[openai.OpenAI] = []
        with self._lock:
            for entry in self._clients.values():
                idle += self._evict(entry)
            self._clients.clear()
        _close(idle)


def _close(clients: list[openai.OpenAI]) -> None:
    for client in clients:  # outside the lock: closing waits for the pool's connections to shut
        client.close()


_RETRY_BEFORE_TEXT = frozenset({"timeout", "unavailable"})


class _Chunks(Stream[object]):
    """The SDK's stream of decoded chunks, which reads the body to its end once `[DONE]` has arrived.

    The SDK's sync stream stops reading at `[DONE]` and closes the response with the body's last (empty) chunk
    still unread, so an HTTP/1.1 connection cannot go back to the pool: every streamed answer opened a new TCP (and,
    to a real provider, TLS) connection (a third of a short answer's CPU against the local fake). Its async stream
    drains the body there, for at most 0.1 s; this does the same. Only what follows `[DONE]` is read (the API ends
    the body right after it); a failure or the time limit while draining is ignored: the answer is complete, the
    connection is simply not reused."""

    def _iter_events(self) -> Iterator[ServerSentEvent]:
        events = super()._iter_events()
        for sse in events:
            if sse.data.startswith("[DONE]") and self.response.http_version == "HTTP/1.1":
                self._drain(events)
            yield sse

    def _drain(self, events: Iterator[ServerSentEvent]) -> None:
        # The body's reads wait up to the request's read timeout (fixed when the body started): the drain's reads
        # end DRAIN_TIMEOUT_S from now at the latest, through the connection's network stream (httpcore's
        # `network_stream` response extension), so a server that holds the body open cannot hold the answer.
        network: Any = self.response.extensions.get("network_stream")
        read = getattr(network, "read", None)
        if read is None:
            return
        deadline = time.monotonic() + DRAIN_TIMEOUT_S

        def quick_read(max_bytes: int, timeout: float | None = None) -> bytes:
            left = max(0.0, deadline - time.monotonic())  # 0: a read that does not wait (a ReadError if no data)
            return cast(bytes, read(max_bytes, left if timeout is None else min(timeout, left)))

        try:
            network.read = quick_read
        except (AttributeError, TypeError):
            return  # a stream that takes no attribute: not drained, its connection not reused (as before)
        try:
            for _ in events:
                pass  # nothing is expected after [DONE]; the SDK would not read it either
        except (openai.APIError, httpx2.HTTPError, httpx2.StreamError):
            pass
        finally:
            del network.read  # the stream's own method again


def _options(config: LLMConfig) -> Any:
    """Per-request options: the SDK's bearer auth, this call's timeout and retries."""
    return {"security": {"bearer_auth": True}, "max_retries": config.max_retries,
            "timeout": openai.Timeout(config.timeout_s, connect=min(CONNECT_TIMEOUT_S, config.timeout_s))}


def _llm_error(exc: Exception, config: LLMConfig) -> LLMError:
    """The SDK's exceptions, mapped to the small set of reasons the orchestrator acts on."""
    if isinstance(exc, openai.APITimeoutError):
        return LLMError("timeout", f"no answer within {config.timeout_s}s")
    if isinstance(exc, openai.RateLimitError):
        return LLMError("rate_limited", _detail(exc), retry_after=retry_after(exc.response.headers))
    if isinstance(exc, openai.AuthenticationError | openai.PermissionDeniedError):
        return LLMError("auth", _detail(exc))
    if isinstance(exc, openai.InternalServerError):
        return LLMError("unavailable", _detail(exc))
    if isinstance(exc, openai.APIStatusError):
        return LLMError("unavailable" if exc.status_code >= 500 else "bad_request", _detail(exc))
    if isinstance(exc, openai.APIConnectionError):
        if blocked := blocked_reason(exc):
            return LLMError("blocked_url", blocked)
        return LLMError("unavailable", f"cannot reach {config.base_url}: {exc}")
    if isinstance(exc, openai.APIResponseValidationError | ValueError):
        # A 200 whose body is not a chat completion (a proxy's HTML page, truncated JSON).
        return LLMError("unavailable", f"unreadable response: {exc}")
    # openai.APIError: an error event inside a stream.
    return LLMError("unavailable", f"the model stream reported an error: {exc}"[:500])


def _detail(exc: openai.APIStatusError) -> str:
    return f"HTTP {exc.status_code}: {exc.message}"[:500]


def retry_after(headers: Any) -> float | None:
    """Seconds a 429 asks to wait: `retry-after-ms`, `retry-after` in seconds, or `retry-after` as an HTTP date."""
    try:
        if ms := headers.get("retry-after-ms"):
            return max(0.0, float(ms) / 1000)
        value = headers.get("retry-after")
        if not value:
            return None
        try:
            return max(0.0, float(value))
        except ValueError:
            when = parsedate_to_datetime(value)
            return max(0.0, (when - datetime.now(UTC)).total_seconds())
    except (TypeError, ValueError, OverflowError):
        return None  # unreadable: as if the provider had not said


def _chunk_parts(chunk: object) -> tuple[str | None, dict[str, Any] | None, str, bool]:
    """(model, usage, text, finished) of one streamed chunk (choice 0). A chunk not shaped like the API's is the
    provider's fault: `LLMError("unavailable")`, as a broken stream is, never a `TypeError` in the handler."""
    try:
        if not isinstance(chunk, dict):
            raise TypeError(f"{type(chunk).__name__}, not a JSON object")
        model, usage = chunk.get("model"), chunk.get("usage")
        if not isinstance(model, str | None) or not isinstance(usage, dict | None):
            raise TypeError("model or usage of the wrong type")
        text, finished = "", False
        for choice in chunk.get("choices") or ():
            if choice.get("index", 0) != 0:
                continue
            content = (choice.get("delta") or {}).get("content")
            if not isinstance(content, str | None):
                raise TypeError("delta.content is not a string")
            text += content or ""
            finished = finished or choice.get("finish_reason") is not None
        return model, usage, text, finished
    except (AttributeError, TypeError) as exc:
        raise LLMError("unavailable", f"the stream sent a chunk not shaped like the API's ({exc})") from exc
