"""Plans: what a tenant may use. The named plans and their figures live here and nowhere else.

A tenant has a plan name (`tenants.plan`; none: the operator's DEFAULT_PLAN) and may have per-figure overrides
(`tenants.plan_overrides`, set by the operator: `switchboard tenant plan SLUG --plan standard --messages N`).
`None` as a figure means unlimited. Monthly allowances are per UTC calendar month; what happens past them is the
tenant's `over_quota` policy (app/tenants/quota.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any


@dataclass(frozen=True)
class Plan:
    name: str
    messages_per_month: int | None  # inbound messages
    llm_tokens_per_month: int | None  # prompt + completion tokens of every LLM call
    messages_per_minute: int | None  # inbound messages the assistant handles per minute
    admin_requests_per_minute: int | None  # requests to /admin/v1 per minute

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


FIGURES = ("messages_per_month", "llm_tokens_per_month", "messages_per_minute", "admin_requests_per_minute")

PLANS: dict[str, Plan] = {p.name: p for p in (
    Plan("free", messages_per_month=1_000, llm_tokens_per_month=500_000, messages_per_minute=20,
         admin_requests_per_minute=60),
    Plan("standard", messages_per_month=20_000, llm_tokens_per_month=20_000_000, messages_per_minute=120,
         admin_requests_per_minute=300),
    Plan("scale", messages_per_month=250_000, llm_tokens_per_month=250_000_000, messages_per_minute=1_200,
         admin_requests_per_minute=1_200),
    # A self-hosted install's default: nothing is limited until the operator assigns plans.
    Plan("unlimited", messages_per_month=None, llm_tokens_per_month=None, messages_per_minute=None,
         admin_requests_per_minute=None),
)}


class UnknownPlan(ValueError):
    def __init__(self, name: str) -> None:
        super().__init__(f"no plan {name!r}: choose one of {', '.join(PLANS)}")


def effective(name: str | None, overrides: Mapping[str, Any] | None, default: str) -> Plan:
    """The tenant's plan with its overrides applied (an override of `None` makes that figure unlimited)."""
    base = PLANS.get(name or default)
    if base is None:
        raise UnknownPlan(name or default)
    figures = {k: (None if v is None else int(v)) for k, v in (overrides or {}).items() if k in FIGURES}
    return replace(base, **figures)  # type: ignore[arg-type]  # only the int | None figures
