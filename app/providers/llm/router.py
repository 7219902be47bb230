"""The LLM router: one answer from the first provider of a plan that can give it, within a deadline.

For each call (`complete`, or `stream` for the web widget):
- the plan's providers are tried in order, in rounds: a failure moves on to the next provider at once, and a
  provider is tried again only in a later round, after a backoff with full jitter, at most `max_retries` more
  times. One endpoint alone therefore behaves as before (retried with backoff), and with several a failure
  costs one attempt, not a series of retries, before the next one answers;
- every attempt gets what is left of the plan's deadline as its timeout (never more than the provider's own
  `timeout_s`); no attempt starts, and no backoff sleeps, past the deadline;
- a provider whose breaker is open (app/providers/llm/breaker.py) is skipped; so is one that answered 429 until
  its `Retry-After` has passed (capped at MAX_HOLD_S), for every call of this process, not only this one;
- a stream that fails before its first token may go on to the next provider; once text has reached the visitor it
  cannot (the text would change under their eyes): it fails as today;
- auth, bad request and refused-URL failures are not retried on that provider (they would fail the same way), and
  do not count against its health; timeouts, connection failures and 5xx do.
When every provider failed, one `LLMError` is raised (the orchestrator escalates with the offline draft): the
last failure's reason, and in its detail what each provider said.

Each attempt is recorded (tokens, cost, latency, outcome; never prompt text) through `recorder`, by default into
the `llm_calls` table (app/providers/llm/usage.py). Breakers and holds are this process's own.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import cast

from app import metrics, pacing, tracing
from app.config import Settings, get_settings
from app.providers.llm.base import Completion, LLMClient, LLMConfig, LLMError, StreamingLLMClient
from app.providers.llm.breaker import CircuitBreaker
from app.providers.llm.plan import LLMPlan, Provider, single

log = logging.getLogger(__name__)

MAX_HOLD_S = 600.0  # a Retry-After longer than this is taken as this
BACKOFF_BASE_S = 0.25
BACKOFF_CAP_S = 4.0
_TRACKED = 4096  # providers whose breaker and hold are kept (least recently used forgotten first)
# Failures that say something about the provider's health (count in its breaker) and may pass with a retry.
_UNHEALTHY = frozenset({"timeout", "unavailable"})
_RETRYABLE = _UNHEALTHY | {"rate_limited", "empty_response"}


@dataclass(frozen=True)
class CallRecord:
    """One attempt at one provider, as stored in `llm_calls`."""

    tenant_id: str
    message_id: str | None
    provider: str
    model: str
    outcome: str  # ok, or the LLMError reason
    latency_ms: int
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float | None = None
    streamed: bool = False


Recorder = Callable[[Sequence[CallRecord]], None]


@dataclass(frozen=True)
class CallTag:
    """Whose call this is, for the usage records."""

    tenant_id: str = ""
    message_id: str | None = None


@dataclass
class _Tracked:
    breaker: CircuitBreaker
    held_until: float = 0.0


class _FirstToken(Exception):
    """The stream failed after text was shown: no other provider may take over."""

    def __init__(self, error: LLMError) -> None:
        super().__init__(str(error))
        self.error = error


class LLMRouter:
    def __init__(
        self,
        transport: LLMClient,
        *,
        recorder: Recorder | None = None,
        breaker: Callable[[], CircuitBreaker] | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        jitter: Callable[[float, float], float] = random.uniform,
    ) -> None:
        self.transport = transport
        # Checked once: isinstance against a runtime-checkable Protocol walks its attributes (a quarter of the
        # router's own CPU per call when it was checked on every call); the transport does not change.
        self._streams = isinstance(transport, StreamingLLMClient)
        self._recorder = recorder
        self._new_breaker = breaker or (lambda: CircuitBreaker(clock=clock))
        self._clock = clock
        self._sleep = sleep
        self._jitter = jitter
        self._tracked: OrderedDict[str, _Tracked] = OrderedDict()
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, transport: LLMClient, settings: Settings | None = None) -> LLMRouter:
        s = settings or get_settings()
        return cls(transport, breaker=lambda: CircuitBreaker(
            failures=s.llm_breaker_failures, failure_rate=s.llm_breaker_failure_rate,
            cooldown_s=s.llm_breaker_cooldown_s))

    @property
    def can_stream(self) -> bool:
        return self._streams

    # -- the two entry points ----------------------------------------------------------------------------
    def complete(self, plan: LLMPlan | LLMConfig, messages: list[dict[str, str]], *,
                 tag: CallTag = CallTag()) -> Completion:
        return self._route(_plan(plan), tag, False, lambda config: self.transport.complete(config, messages))

    def stream(self, plan: LLMPlan | LLMConfig, messages: list[dict[str, str]], on_text: Callable[[str], None], *,
               tag: CallTag = CallTag()) -> Completion:
        """As `complete`, the answer passed to `on_text` as it grows. A provider that fails before its first token
        hands over to the next; after it, the call fails."""
        if not self._streams:
            completion = self.complete(plan, messages, tag=tag)
            on_text(completion.text)
            return completion
        transport = cast(StreamingLLMClient, self.transport)

        def attempt(config: LLMConfig) -> Completion:
            shown = False

            def seen(text: str) -> None:
                nonlocal shown
                shown = True
                on_text(text)

            try:
                return transport.stream(config, messages, seen)
            except LLMError as exc:
                if shown:
                    raise _FirstToken(exc) from exc
                raise

        return self._route(_plan(plan), tag, True, attempt)

    def state(self, provider: Provider) -> str:
        """The provider's breaker state here: closed, open or half_open (for tests and operators)."""
        return self._track(provider).breaker.state

    # -- the loop ------------------------------------------------------------------------------------------
    def _route(self, plan: LLMPlan, tag: CallTag, streamed: bool,
               attempt: Callable[[LLMConfig], Completion]) -> Completion:
        deadline = self._clock() + plan.deadline_s
        tries = dict.fromkeys(range(len(plan.providers)), 0)
        errors: list[tuple[Provider, LLMError]] = []  # what each provider said, skips included
        tried: list[LLMError] = []  # failures of attempts actually made
        records: list[CallRecord] = []
        try:
            for round_no in range(1 + max(p.config.max_retries for p in plan.providers)):
                for index, provider in enumerate(plan.providers):
                    if tries[index] > provider.config.max_retries:
                        continue
                    tracked = self._track(provider)
                    remaining = deadline - self._clock()
                    if remaining <= 0:
                        break
                    if tracked.held_until > self._clock():
                        errors.append((provider, LLMError("rate_limited", "waiting for its Retry-After")))
                        tracing.event("llm provider skipped", {"switchboard.llm.provider": provider.name,
                                                               "switchboard.llm.skipped": "retry_after"})
                        continue
                    if not tracked.breaker.allow():
                        tries[index] = provider.config.max_retries + 1  # open for this whole call
                        errors.append((provider, LLMError("unavailable", "circuit open after repeated failures")))
                        tracing.event("llm provider skipped", {"switchboard.llm.provider": provider.name,
                                                               "switchboard.llm.skipped": "circuit_open"})
                        continue
                    tries[index] += 1
                    config = replace(provider.config, timeout_s=min(provider.config.timeout_s, remaining),
                                     max_retries=0)
                    started = self._clock()
                    span = tracing.start("llm attempt", {
                        "gen_ai.operation.name": "chat", "gen_ai.request.model": provider.config.model,
                        "switchboard.llm.provider": provider.name, "switchboard.llm.round": round_no,
                    }, kind=tracing.SpanKind.CLIENT) if tracing.enabled() else None
                    try:
                        with pacing.waiting():  # the process's other messages run meanwhile
                            completion = attempt(config)
                    except (LLMError, _FirstToken) as exc:
                        error = exc.error if isinstance(exc, _FirstToken) else exc
                        tracing.failed(span, error, error.reason)
                        self._failed(provider, tracked, error)
                        records.append(self._record(tag, provider, error.reason, started, streamed))
                        if isinstance(exc, _FirstToken):
                            raise error from exc
                        errors.append((provider, error))
                        tried.append(error)
                        if error.reason not in _RETRYABLE:
                            tries[index] = provider.config.max_retries + 1
                        continue
                    except Exception as exc:
                        # Not the provider's doing (a draft that could not be published, a bug): no verdict on
                        # its health, but a half-open breaker must not wait forever for its probe's outcome.
                        tracing.failed(span, exc)
                        tracked.breaker.release()
                        records.append(self._record(tag, provider, "error", started, streamed))
                        raise
                    else:
                        tracing.annotate(span, {"gen_ai.usage.input_tokens": completion.prompt_tokens,
                                                "gen_ai.usage.output_tokens": completion.completion_tokens})
                    finally:
                        if span is not None:
                            span.end()
                    tracked.breaker.record(failed=False)
                    records.append(self._record(tag, provider, "ok", started, streamed, completion))
                    log.debug("LLM %s answered (%s, %d+%d tokens)", provider.name, provider.config.model,
                              completion.prompt_tokens, completion.completion_tokens)
                    return completion
                # The next round: after a jittered backoff, and not before some provider left is free again.
                left = [self._track(p) for i, p in enumerate(plan.providers) if tries[i] <= p.config.max_retries]
                free_at = [t.held_until for t in left if t.breaker.state != "open"]
                if not free_at:
                    break
                now = self._clock()
                backoff = max(self._jitter(0, min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2**round_no)),
                              min(free_at) - now)
                if now + backoff >= deadline:
                    break
                with pacing.waiting():
                    self._sleep(backoff)
            raise _all_failed(plan, errors, tried)
        finally:
            if records:
                self._save(records)

    def _failed(self, provider: Provider, tracked: _Tracked, error: LLMError) -> None:
        tracked.breaker.record(failed=error.reason in _UNHEALTHY)
        if error.reason == "rate_limited":
            hold = min(MAX_HOLD_S, error.retry_after if error.retry_after is not None else BACKOFF_BASE_S)
            with self._lock:
                tracked.held_until = max(tracked.held_until, self._clock() + hold)
        log.warning("LLM provider %s (model %s) failed: %s", provider.name, provider.config.model, error)

    def _track(self, provider: Provider) -> _Tracked:
        key = provider.key
        with self._lock:
            tracked = self._tracked.get(key)
            if tracked is None:
                tracked = self._tracked[key] = _Tracked(self._new_breaker())
                if len(self._tracked) > _TRACKED:
                    self._tracked.popitem(last=False)
            else:
                self._tracked.move_to_end(key)
            return tracked

    def _record(self, tag: CallTag, provider: Provider, outcome: str, started: float, streamed: bool,
                completion: Completion | None = None) -> CallRecord:
        prompt = completion.prompt_tokens if completion else 0
        output = completion.completion_tokens if completion else 0
        return CallRecord(
            tenant_id=tag.tenant_id, message_id=tag.message_id, provider=provider.name, model=provider.config.model,
            outcome=outcome, latency_ms=max(0, round((self._clock() - started) * 1000)), prompt_tokens=prompt,
            completion_tokens=output, cost=provider.cost(prompt, output) if completion else None, streamed=streamed)

    def _save(self, records: list[CallRecord]) -> None:
        metrics.llm_calls(records)
        if not records[0].tenant_id:
            return  # an untagged call (a tool, a benchmark): nobody to bill
        recorder = self._recorder
        if recorder is None:
            from app.providers.llm.usage import record_calls

            recorder = record_calls
        try:
            recorder(records)
        except Exception as exc:  # the answer matters more than its bookkeeping
            log.warning("could not record %d LLM call(s) for tenant %s: %s", len(records), records[0].tenant_id,
                        type(exc).__name__)

    def close(self) -> None:
        close = getattr(self.transport, "close", None)
        if close is not None:
            close()


def _plan(plan: LLMPlan | LLMConfig) -> LLMPlan:
    return single(plan) if isinstance(plan, LLMConfig) else plan


def _all_failed(plan: LLMPlan, errors: list[tuple[Provider, LLMError]], tried: list[LLMError]) -> LLMError:
    if not errors:
        return LLMError("timeout", f"no provider could be tried within the {plan.deadline_s}s deadline")
    last = tried[-1] if tried else errors[-1][1]
    if len(plan.providers) == 1:
        return LLMError(last.reason, last.detail, retry_after=last.retry_after)
    seen: dict[str, str] = {}
    for provider, error in errors:  # the last word of each provider
        seen[provider.name] = f"{error.reason}" + (f" ({error.detail})" if error.detail else "")
    detail = "; ".join(f"{name}: {said}" for name, said in seen.items())
    return LLMError(last.reason, f"every provider failed: {detail}"[:2000])
