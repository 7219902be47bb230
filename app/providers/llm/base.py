from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable


class LLMError(Exception):
    """The LLM could not answer (timeout, rate limit after retries, server error). The orchestrator escalates."""

    def __init__(self, reason: str, detail: str = "", *, retry_after: float | None = None) -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail
        # Seconds the provider asked us to wait (a 429's `Retry-After`), when it said.
        self.retry_after = retry_after


@dataclass(frozen=True)
class LLMConfig:
    base_url: str
    api_key: str
    model: str
    timeout_s: float = 30.0
    max_retries: int = 2
    temperature: float = 0.2
    max_tokens: int = 600
    # The base URL came from the tenant: connect only to public addresses (app/netguard.py).
    guarded: bool = False


@dataclass(frozen=True)
class Completion:
    text: str
    model: str
    prompt_tokens: int = 0
    completion_tokens: int = 0


class LLMClient(Protocol):
    def complete(self, config: LLMConfig, messages: list[dict[str, str]]) -> Completion: ...


@runtime_checkable
class StreamingLLMClient(LLMClient, Protocol):
    def stream(self, config: LLMConfig, messages: list[dict[str, str]], on_text: Callable[[str], None]) -> Completion:
        """The same completion, streamed: `on_text` gets the answer so far (the whole text, not a delta) each
        time it grows. Raises `LLMError` as `complete` does, also when the stream breaks after some text."""
        ...
