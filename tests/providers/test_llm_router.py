"""The LLM router through the real `openai` SDK against two fake OpenAI-compatible servers on 127.0.0.1: fallback
when the first provider is down, slow or rate-limited, the breaker, the routing rule, streams, usage records.

Time that the router waits for (backoff, Retry-After, breaker cool-down) runs on an injected clock: tests move it
instead of sleeping, and assert on what the servers received, never on how long anything took."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from app.config import Price
from app.providers.llm.base import LLMConfig, LLMError
from app.providers.llm.breaker import CLOSED, HALF_OPEN, OPEN, CircuitBreaker
from app.providers.llm.openai_client import OpenAILLMClient
from app.providers.llm.plan import LLMPlan, Provider, RouteRule
from app.providers.llm.router import CallRecord, CallTag, LLMRouter
from tests.fakes.openai_server import FakeOpenAIServer

MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
TAG = CallTag("tenant-1", "message-1")


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


@pytest.fixture
def servers() -> Iterator[tuple[FakeOpenAIServer, FakeOpenAIServer]]:
    with FakeOpenAIServer(api_key="sk-first") as first, FakeOpenAIServer(api_key="sk-second") as second:
        first.reply("from the first")
        second.reply("from the second")
        yield first, second


def _provider(server: FakeOpenAIServer, name: str, model: str = "model", **config: Any) -> Provider:
    values: dict[str, Any] = {"timeout_s": 5.0, "max_retries": 0}
    values.update(config)
    price = Price(input_per_1m=2.0, output_per_1m=8.0)
    return Provider(name, LLMConfig(base_url=server.base_url, api_key=server.api_key, model=model, **values), price)


def _plan(*providers: Provider, deadline_s: float = 30.0, rule: RouteRule | None = None) -> LLMPlan:
    return LLMPlan(tuple(providers), deadline_s=deadline_s, rule=rule)


class Harness:
    def __init__(self, failures: int = 3, cooldown_s: float = 30.0) -> None:
        self.clock = Clock()
        self.records: list[CallRecord] = []
        self.router = LLMRouter(
            OpenAILLMClient(), recorder=self.records.extend, clock=self.clock, sleep=self.clock.sleep,
            breaker=lambda: CircuitBreaker(failures=failures, cooldown_s=cooldown_s, clock=self.clock),
            jitter=lambda low, high: high,  # the longest backoff the jitter could draw
        )

    def outcomes(self) -> list[tuple[str, str]]:
        return [(r.provider, r.outcome) for r in self.records]


def test_first_provider_down_the_second_answers(servers) -> None:
    first, second = servers
    plan = _plan(_provider(first, "first"), _provider(second, "second"))
    first.stop()  # connection refused from now on
    h = Harness()
    completion = h.router.complete(plan, MESSAGES, tag=TAG)
    assert completion.text == "from the second"
    assert h.outcomes() == [("first", "unavailable"), ("second", "ok")]
    assert second.completion_requests[-1].headers["authorization"] == "Bearer sk-second"


def test_first_provider_slower_than_its_timeout_the_second_answers(servers) -> None:
    first, second = servers
    first.then_delay(3.0, text="too late")
    plan = _plan(_provider(first, "first", timeout_s=0.3), _provider(second, "second"))
    router = LLMRouter(OpenAILLMClient(), recorder=lambda _: None)  # the real clock: the timeout is real
    assert router.complete(plan, MESSAGES, tag=TAG).text == "from the second"
    assert len(first.completion_requests) == 1  # given up on, not retried while the second was free


def test_rate_limited_provider_is_skipped_until_its_retry_after_passed(servers) -> None:
    first, second = servers
    first.then_status(429, retry_after=30)
    plan = _plan(_provider(first, "first"), _provider(second, "second"))
    h = Harness()

    assert h.router.complete(plan, MESSAGES, tag=TAG).text == "from the second"
    assert h.outcomes() == [("first", "rate_limited"), ("second", "ok")]

    h.clock.now += 29  # still inside Retry-After: the first is not even asked
    assert h.router.complete(plan, MESSAGES, tag=TAG).text == "from the second"
    assert len(first.completion_requests) == 1

    h.clock.now += 2  # past it: the first answers again
    assert h.router.complete(plan, MESSAGES, tag=TAG).text == "from the first"
    assert len(first.completion_requests) == 2 and len(second.completion_requests) == 2


def test_a_lone_provider_waits_for_a_short_retry_after_then_answers(servers) -> None:
    first, _ = servers
    first.then_status(429, retry_after=2)
    h = Harness()
    assert h.router.complete(_plan(_provider(first, "first", max_retries=2)), MESSAGES).text == "from the first"
    assert h.clock.slept and h.clock.slept[0] >= 2  # not before Retry-After
    assert len(first.completion_requests) == 2


def test_every_provider_down_raises_one_error_naming_each(servers) -> None:
    first, second = servers
    first.fail_always(503)
    second.fail_always(500)
    h = Harness()
    with pytest.raises(LLMError) as err:
        h.router.complete(_plan(_provider(first, "first", max_retries=1), _provider(second, "second")), MESSAGES,
                          tag=TAG)
    assert err.value.reason == "unavailable"
    assert "first: unavailable" in err.value.detail and "second: unavailable" in err.value.detail
    # Rounds: first, second, then the first again after a backoff (the second has no retries left).
    assert h.outcomes() == [("first", "unavailable"), ("second", "unavailable"), ("first", "unavailable")]
    assert len(h.clock.slept) == 1


def test_retries_never_run_past_the_deadline(servers) -> None:
    first, _ = servers
    first.fail_always(500)
    h = Harness(failures=100)
    with pytest.raises(LLMError):
        h.router.complete(_plan(_provider(first, "first", max_retries=10), deadline_s=1.0), MESSAGES)
    # Backoffs of 0.25 and 0.5 fit in one second; the next (1.0) would end past the deadline, so it is not slept.
    assert h.clock.slept == [0.25, 0.5]
    assert len(first.completion_requests) == 3
    assert h.clock.now - 1_000.0 < 1.0


def test_auth_failure_moves_on_without_retrying_that_provider(servers) -> None:
    first, second = servers
    bad = Provider("first", LLMConfig(base_url=first.base_url, api_key="sk-wrong", model="m", max_retries=3))
    h = Harness()
    assert h.router.complete(_plan(bad, _provider(second, "second")), MESSAGES, tag=TAG).text == "from the second"
    assert len(first.completion_requests) == 1
    assert h.router.state(bad) == CLOSED  # the server answered: its health is not in question


def test_breaker_opens_after_repeated_failures_then_half_opens_and_closes(servers) -> None:
    first, second = servers
    first.fail_always(500)
    primary = _provider(first, "first")
    plan = _plan(primary, _provider(second, "second"))
    h = Harness(failures=3, cooldown_s=30)

    for _ in range(3):
        assert h.router.complete(plan, MESSAGES, tag=TAG).text == "from the second"
    assert len(first.completion_requests) == 3
    assert h.router.state(primary) == OPEN

    assert h.router.complete(plan, MESSAGES, tag=TAG).text == "from the second"
    assert len(first.completion_requests) == 3  # open: not asked at all

    h.clock.now += 31
    assert h.router.state(primary) == HALF_OPEN
    first.reply("first is back")
    assert h.router.complete(plan, MESSAGES, tag=TAG).text == "first is back"  # the probe
    assert h.router.state(primary) == CLOSED
    assert len(first.completion_requests) == 4


def test_a_failed_probe_opens_the_breaker_again(servers) -> None:
    first, second = servers
    first.fail_always(500)
    primary = _provider(first, "first")
    plan = _plan(primary, _provider(second, "second"))
    h = Harness(failures=2, cooldown_s=10)
    for _ in range(2):
        h.router.complete(plan, MESSAGES)
    h.clock.now += 11
    h.router.complete(plan, MESSAGES)  # the probe fails
    assert h.router.state(primary) == OPEN and len(first.completion_requests) == 3
    h.router.complete(plan, MESSAGES)
    assert len(first.completion_requests) == 3


def test_breaker_is_per_endpoint_configuration(servers) -> None:
    """A tenant whose own settings fail (here: a timeout far too short) does not open the breaker of the same
    endpoint called with other settings."""
    first, _ = servers
    h = Harness(failures=1)
    tight = _provider(first, "first", timeout_s=0.001)
    normal = _provider(first, "first")
    h.router.state(tight)  # both tracked
    assert tight.key != normal.key
    first.then_status(500)
    with pytest.raises(LLMError):
        h.router.complete(_plan(tight), MESSAGES)
    assert h.router.state(tight) == OPEN and h.router.state(normal) == CLOSED


def test_routing_rule_sends_a_short_question_to_the_cheap_model(servers) -> None:
    first, second = servers
    full, cheap = _provider(first, "full", model="big-model"), _provider(second, "cheap", model="small-model")
    plan = _plan(full, cheap, rule=RouteRule(max_words=6, use="cheap"))
    h = Harness()

    short = plan.for_question("do gift cards expire?")
    assert [p.name for p in short.providers] == ["cheap", "full"]  # the full one stays as the fallback
    assert h.router.complete(short, MESSAGES).text == "from the second"
    assert second.completion_requests[-1].body["model"] == "small-model"  # type: ignore[index]

    long = plan.for_question("I ordered two jackets last week and one arrived torn, what are my options?")
    assert [p.name for p in long.providers] == ["full", "cheap"]
    assert h.router.complete(long, MESSAGES).text == "from the first"
    assert first.completion_requests[-1].body["model"] == "big-model"  # type: ignore[index]


def test_routing_rule_with_a_minimum_score_needs_a_close_passage() -> None:
    class Passage:
        def __init__(self, score: float) -> None:
            self.score = score

    rule = RouteRule(max_words=10, use="cheap", min_score=0.7)
    assert rule.matches("do gift cards expire?", [Passage(0.82)])
    assert not rule.matches("do gift cards expire?", [Passage(0.5)])
    assert not rule.matches("do gift cards expire?", [])


def test_usage_records_carry_tokens_cost_and_no_text(servers) -> None:
    first, _ = servers
    h = Harness()
    h.router.complete(_plan(_provider(first, "first", model="big-model")), MESSAGES, tag=TAG)
    (record,) = h.records
    assert (record.tenant_id, record.message_id, record.provider, record.model, record.outcome) == (
        "tenant-1", "message-1", "first", "big-model", "ok")
    assert (record.prompt_tokens, record.completion_tokens) == (42, 7)  # the fake's `usage`
    assert record.cost == pytest.approx((42 * 2.0 + 7 * 8.0) / 1_000_000)
    assert "Hi" not in repr(record) and "from the first" not in repr(record)


# --- streams ----------------------------------------------------------------------------------------------------

ANSWER = "Returns are free within 30 days [1]. Start one from your order page [2]."


def test_a_stream_that_fails_before_its_first_token_falls_over_to_the_next(servers) -> None:
    first, second = servers
    first.then_stream_break(0, ANSWER)
    second.reply(ANSWER)
    seen: list[str] = []
    h = Harness()
    completion = h.router.stream(_plan(_provider(first, "first"), _provider(second, "second")), MESSAGES,
                                 seen.append, tag=TAG)
    assert completion.text == ANSWER and seen[-1] == ANSWER
    assert h.outcomes() == [("first", "unavailable"), ("second", "ok")]
    ok = h.records[-1]
    assert ok.streamed and (ok.prompt_tokens, ok.completion_tokens) == (42, 7)  # from the usage chunk


def test_a_stream_that_fails_after_its_first_token_does_not_fall_over(servers) -> None:
    first, second = servers
    first.then_stream_break(3, ANSWER)
    seen: list[str] = []
    h = Harness()
    with pytest.raises(LLMError) as err:
        h.router.stream(_plan(_provider(first, "first"), _provider(second, "second")), MESSAGES, seen.append)
    assert err.value.reason == "unavailable"
    assert seen  # the visitor saw text: another model's answer must not replace it
    assert second.completion_requests == []


def test_breaker_counts_consecutive_failures_and_failure_rate() -> None:
    clock = Clock()
    consecutive = CircuitBreaker(failures=3, min_calls=100, clock=clock)
    for failed in (True, True, False, True, True):
        consecutive.record(failed)
    assert consecutive.state == CLOSED  # never three in a row
    consecutive.record(True)
    assert consecutive.state == OPEN

    rate = CircuitBreaker(failures=100, failure_rate=0.5, window=10, min_calls=10, clock=clock)
    for i in range(10):
        rate.record(i % 2 == 0)  # every other call fails: 50%
    assert rate.state == OPEN


def test_half_open_lets_one_probe_through_at_a_time() -> None:
    clock = Clock()
    breaker = CircuitBreaker(failures=1, cooldown_s=5, clock=clock)
    breaker.record(True)
    assert not breaker.allow()
    clock.now += 5
    assert breaker.allow() and not breaker.allow()  # the probe, and nobody else meanwhile
    breaker.record(False)
    assert breaker.state == CLOSED and breaker.allow() and breaker.allow()


def test_an_error_outside_the_provider_propagates_and_releases_a_half_open_probe(servers) -> None:
    first, _ = servers
    first.reply(ANSWER)
    primary = _provider(first, "first")
    h = Harness(failures=1, cooldown_s=5)
    first.then_status(500)
    with pytest.raises(LLMError):
        h.router.complete(_plan(primary), MESSAGES)
    h.clock.now += 5

    def broken_push(text: str) -> None:
        raise ConnectionError("the draft could not be published")

    with pytest.raises(ConnectionError):
        h.router.stream(_plan(primary), MESSAGES, broken_push, tag=TAG)  # the half-open probe
    assert h.router.state(primary) == HALF_OPEN  # no verdict, and not stuck waiting for that probe
    assert h.router.complete(_plan(primary), MESSAGES).text == ANSWER  # the next call probes
    assert h.router.state(primary) == CLOSED
    assert ("first", "error") in h.outcomes()


def test_each_attempt_is_a_span_under_the_callers_and_a_skipped_provider_an_event(servers, traced) -> None:
    from app import tracing
    from tests.traces import one

    first, second = servers
    first.then_status(429, retry_after=30)
    plan = _plan(_provider(first, "first", model="small"), _provider(second, "second", model="large"))
    h = Harness()
    with tracing.span("llm"):
        h.router.complete(plan, MESSAGES, tag=TAG)  # the first is rate-limited, the second answers
    with tracing.span("llm again"):
        h.router.complete(plan, MESSAGES, tag=TAG)  # inside the Retry-After: the first is skipped
    spans = traced.spans()
    llm = one(spans, "llm")
    failed = one(spans, "llm attempt", **{"switchboard.llm.provider": "first"})
    assert failed.parent_id == llm.span_id and failed.kind == "client" and failed.error
    assert failed.attributes["gen_ai.request.model"] == "small" and failed.attributes["error.type"] == "LLMError"
    answered = [s for s in spans if s.name == "llm attempt" and s.attributes["switchboard.llm.provider"] == "second"]
    assert len(answered) == 2 and not any(s.error for s in answered)
    assert all(s.attributes["gen_ai.usage.output_tokens"] > 0 for s in answered)
    (skipped,) = [e for e in traced.exporter.get_finished_spans() if e.name == "llm again"]
    assert [(e.name, dict(e.attributes or {})) for e in skipped.events] == [
        ("llm provider skipped", {"switchboard.llm.provider": "first", "switchboard.llm.skipped": "retry_after"})]


def test_a_transport_without_stream_answers_in_one_piece_and_one_with_it_streams(servers) -> None:
    """Whether the transport streams is checked once, when the router is built: the same answer as the per-call
    check gave (a one-shot transport's whole answer in one `on_text`, a streaming one's piece by piece)."""
    from app.providers.llm.base import Completion, StreamingLLMClient

    class OneShot:
        def complete(self, config: LLMConfig, messages: list[dict[str, str]]) -> Completion:
            return Completion(text="all at once", model=config.model, prompt_tokens=3, completion_tokens=3)

    first, _ = servers
    first.reply("piece by piece here")
    plan = _plan(_provider(first, "first"))
    for transport, pieces in ((OneShot(), ["all at once"]), (OpenAILLMClient(), ["piece ", "piece by ",
                                                                                    "piece by piece ",
                                                                                    "piece by piece here"])):
        router, seen = LLMRouter(transport, recorder=lambda records: None), []
        assert router.can_stream is isinstance(transport, StreamingLLMClient)
        completion = router.stream(plan, MESSAGES, seen.append, tag=TAG)
        assert seen == pieces and completion.text == pieces[-1]
