"""Which LLM endpoints answer a tenant's message, in which order: the plan the router follows.

A tenant's `policies.llm` may hold:
- `providers`: its ordered list, each `{"name", "base_url"?, "model", "timeout_s"?, "max_retries"?,
  "input_per_1m"?, "output_per_1m"?}`. An entry with a `base_url` is the tenant's own endpoint: it is reached
  through the outbound URL policy (app/netguard.py) and gets the key stored for that entry's name, else the
  tenant's own key, else none, never the operator's. An entry without one is the operator's `LLM_BASE_URL` with
  that model (and the entry's key, the tenant's key, or the operator's).
- the older one-endpoint form, `base_url` / `model` / `timeout_s` / `max_retries`: a list of one. With no own
  `base_url` the operator's list follows (LLM_BASE_URL with the tenant's model, then LLM_FALLBACKS).
- `deadline_s`: the whole answer's time budget (default LLM_DEADLINE_S);
- `route`: `{"max_words": 12, "use": "<name>", "min_score"?: 0.6}`: a question of at most `max_words` words (and,
  with `min_score`, whose best passage scores at least that: a question the knowledge answers directly, like an
  FAQ) goes first to the provider named `use`, the rest of the list after it; other questions follow the list.
With nothing set, the operator's list answers: LLM_BASE_URL / LLM_MODEL, then LLM_FALLBACKS.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from app.config import Price, Settings
from app.providers.llm.base import LLMConfig


@dataclass(frozen=True)
class Provider:
    name: str
    config: LLMConfig
    price: Price | None = None

    @property
    def key(self) -> str:
        """Identifies the endpoint as called (URL, key, model, timeout, guard): breakers and Retry-After holds are
        kept per key, so a tenant whose own settings fail never opens the breaker of an endpoint others use."""
        c = self.config
        raw = "\0".join((c.base_url, c.api_key, c.model, repr(c.timeout_s), repr(c.guarded)))
        return hashlib.sha256(raw.encode()).hexdigest()[:32]

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float | None:
        if self.price is None:
            return None
        return (prompt_tokens * self.price.input_per_1m + completion_tokens * self.price.output_per_1m) / 1_000_000


@dataclass(frozen=True)
class RouteRule:
    max_words: int
    use: str
    min_score: float | None = None

    def matches(self, question: str, passages: Sequence[Any]) -> bool:
        if len(question.split()) > self.max_words:
            return False
        if self.min_score is None:
            return True
        return bool(passages) and float(passages[0].score) >= self.min_score


@dataclass(frozen=True)
class LLMPlan:
    providers: tuple[Provider, ...]
    deadline_s: float
    rule: RouteRule | None = None

    def for_question(self, question: str, passages: Sequence[Any] = ()) -> LLMPlan:
        """The order for this question: the routing rule's provider first when the rule matches."""
        if self.rule is None or not self.rule.matches(question, passages):
            return self
        chosen = [p for p in self.providers if p.name == self.rule.use]
        if not chosen:
            return self
        return replace(self, providers=(chosen[0], *(p for p in self.providers if p is not chosen[0])))


def single(config: LLMConfig, name: str = "default", deadline_s: float | None = None) -> LLMPlan:
    """A plan of one endpoint (a caller that holds an `LLMConfig`)."""
    budget = deadline_s or config.timeout_s * (config.max_retries + 1) + 5
    return LLMPlan((Provider(name, config),), deadline_s=budget)


def tenant_plan(
    settings: Settings,
    policies: Mapping[str, Any] | None,
    own_key: str | None,
    provider_keys: Mapping[str, str] | None = None,
) -> LLMPlan | None:
    """The tenant's plan, or None when no LLM is configured anywhere (the offline composer answers)."""
    llm: dict[str, Any] = dict((policies or {}).get("llm") or {})
    keys = dict(provider_keys or {})
    timeout = float(llm.get("timeout_s") or settings.llm_timeout_s)
    retries = int(llm.get("max_retries", settings.llm_max_retries))

    def price(entry: Mapping[str, Any], model: str) -> Price | None:
        if entry.get("input_per_1m") is not None and entry.get("output_per_1m") is not None:
            return Price(input_per_1m=entry["input_per_1m"], output_per_1m=entry["output_per_1m"])
        return settings.llm_prices.get(model)

    def operator_entry(name: str, model: str, key: str | None, entry: Mapping[str, Any]) -> Provider | None:
        if not settings.llm_base_url:
            return None
        config = LLMConfig(base_url=settings.llm_base_url, api_key=key or settings.llm_api_key or "unused",
                           model=model, timeout_s=float(entry.get("timeout_s") or timeout),
                           max_retries=int(entry.get("max_retries", retries)), guarded=False)
        return Provider(name, config, price(entry, model))

    def tenant_entry(name: str, base_url: str, model: str, key: str | None, entry: Mapping[str, Any]) -> Provider:
        # A tenant URL: its own key or none, never the operator's; reached through the outbound URL policy.
        config = LLMConfig(base_url=base_url, api_key=key or "unused", model=model,
                           timeout_s=float(entry.get("timeout_s") or timeout),
                           max_retries=int(entry.get("max_retries", retries)), guarded=True)
        return Provider(name, config, price(entry, model))

    providers: list[Provider | None] = []
    if llm.get("providers"):
        for entry in llm["providers"]:
            name, model = str(entry["name"]), str(entry["model"])
            key = keys.get(name) or own_key
            if entry.get("base_url"):
                providers.append(tenant_entry(name, str(entry["base_url"]), model, key, entry))
            else:
                providers.append(operator_entry(name, model, key, entry))
    elif llm.get("base_url"):
        providers.append(tenant_entry("tenant", str(llm["base_url"]), str(llm.get("model") or settings.llm_model),
                                      own_key, {}))
    else:
        providers.append(operator_entry("default", str(llm.get("model") or settings.llm_model), own_key, {}))
        for fallback in settings.llm_fallbacks:
            config = LLMConfig(base_url=fallback.base_url, api_key=fallback.api_key or "unused",
                               model=fallback.model, timeout_s=fallback.timeout_s or settings.llm_timeout_s,
                               max_retries=(fallback.max_retries if fallback.max_retries is not None
                                            else settings.llm_max_retries), guarded=False)
            providers.append(Provider(fallback.name, config, price(fallback.model_dump(), fallback.model)))
    usable = tuple(p for p in providers if p is not None)
    if not usable:
        return None
    rule = None
    if route := llm.get("route"):
        rule = RouteRule(max_words=int(route["max_words"]), use=str(route["use"]),
                         min_score=float(route["min_score"]) if route.get("min_score") is not None else None)
    return LLMPlan(usable, deadline_s=float(llm.get("deadline_s") or settings.llm_deadline_s), rule=rule)
