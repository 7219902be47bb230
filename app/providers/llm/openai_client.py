"""LLMClient over the official `openai` SDK, for any OpenAI-compatible chat-completions API.

The SDK does the retrying: 408/409/429/5xx and timeouts are retried `max_retries` times with exponential
backoff, honouring `Retry-After`/`retry-after-ms`. What still fails afterwards becomes one `LLMError` with a
small, flat reason the orchestrator can act on: timeout, rate_limited, unavailable, auth, bad_request,
empty_response.

A tenant's own base URL (`config.guarded`) is reached through the outbound URL policy (app/netguard.py).
Clients are cached per (base_url, api_key, timeout, retries, guarded) so tenants never share credentials and a tenant's
connection pool is reused across messages; nothing tenant-specific lives on a module-level client.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

import openai
from openai.types.chat import ChatCompletion

from app.netguard import blocked_reason, guarded_client2
from app.providers.llm.base import Completion, LLMConfig, LLMError

CONNECT_TIMEOUT_S = 5.0
_CACHE_SIZE = 64

_ClientKey = tuple[str, str, float, int, bool]


class OpenAILLMClient:
    def __init__(self, cache_size: int = _CACHE_SIZE) -> None:
        self._clients: OrderedDict[_ClientKey, openai.OpenAI] = OrderedDict()
        self._lock = threading.Lock()
        self._cache_size = cache_size

    def _client(self, config: LLMConfig) -> openai.OpenAI:
        key = (config.base_url, config.api_key, config.timeout_s, config.max_retries, config.guarded)
        with self._lock:
            client = self._clients.get(key)
            if client is not None:
                self._clients.move_to_end(key)
                return client
            client = openai.OpenAI(
                base_url=config.base_url,
                api_key=config.api_key or "unused",  # local servers often need none; the SDK insists on one
                timeout=openai.Timeout(config.timeout_s, connect=min(CONNECT_TIMEOUT_S, config.timeout_s)),
                max_retries=config.max_retries,
                http_client=guarded_client2() if config.guarded else None,
            )
            self._clients[key] = client
            if len(self._clients) > self._cache_size:
                _, evicted = self._clients.popitem(last=False)
                evicted.close()
            return client

    def complete(self, config: LLMConfig, messages: list[dict[str, str]]) -> Completion:
        """One chat completion; raises LLMError once the SDK's own retries are exhausted."""
        client = self._client(config)
        body = {"model": config.model, "messages": messages, "temperature": config.temperature,
                "max_tokens": config.max_tokens}
        try:
            # The SDK's own request path (auth, retries, timeouts, error types, response parsing) without
            # `chat.completions.create`'s walk of the body against its TypedDicts: a no-op for plain role/content
            # strings that cost 3-5 ms of held GIL per call (tests/assistant/test_llm_client.py checks the body
            # is the one `create` sends).
            response = client.post("/chat/completions", cast_to=ChatCompletion, body=body,
                                   options={"security": {"bearer_auth": True}})
        except openai.APITimeoutError as exc:
            raise LLMError("timeout", f"no answer within {config.timeout_s}s") from exc
        except openai.RateLimitError as exc:
            raise LLMError("rate_limited", _detail(exc)) from exc
        except (openai.AuthenticationError, openai.PermissionDeniedError) as exc:
            raise LLMError("auth", _detail(exc)) from exc
        except openai.InternalServerError as exc:
            raise LLMError("unavailable", _detail(exc)) from exc
        except openai.APIStatusError as exc:
            reason = "unavailable" if exc.status_code >= 500 else "bad_request"
            raise LLMError(reason, _detail(exc)) from exc
        except openai.APIConnectionError as exc:
            if blocked := blocked_reason(exc):
                raise LLMError("blocked_url", blocked) from exc
            raise LLMError("unavailable", f"cannot reach {config.base_url}: {exc}") from exc
        except (openai.APIResponseValidationError, ValueError) as exc:
            # A 200 whose body is not a chat completion (a proxy's HTML page, truncated JSON).
            raise LLMError("unavailable", f"unreadable response: {exc}") from exc

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

    def close(self) -> None:
        with self._lock:
            for client in self._clients.values():
                client.close()
            self._clients.clear()


def _detail(exc: openai.APIStatusError) -> str:
    return f"HTTP {exc.status_code}: {exc.message}"[:500]
