"""`GET /admin/v1/usage`: the tenant's plan and its use per UTC calendar month, recounted from the stored rows
(inbound messages, LLM call tokens; app/tenants/usage.py). Read by admins; the plan is set by the operator
(`switchboard tenant plan`)."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, HTTPException, Query
from pydantic import BaseModel, ConfigDict, Field

from app.admin.request_limit import LIMITED
from app.auth import Admin
from app.db import session_scope
from app.models import Tenant, utcnow
from app.tenants import usage
from app.tenants.plans import Plan, effective

router = APIRouter(prefix="/admin/v1", tags=["admin: usage"], dependencies=LIMITED)


class PlanOut(BaseModel):
    name: str
    messages_per_month: int | None = Field(description="Inbound messages per UTC month; null: unlimited.")
    llm_tokens_per_month: int | None = Field(description="Prompt + completion tokens per UTC month; null: unlimited.")
    messages_per_minute: int | None
    admin_requests_per_minute: int | None
    overrides: list[str] = Field(description="Figures the operator set for this tenant, differing from the plan.")


class Figure(BaseModel):
    used: int
    allowance: int | None = Field(description="null: unlimited.")
    remaining: int | None = Field(description="Never below 0; null: unlimited.")


class UsageOut(BaseModel):
    month: str = Field(description="YYYY-MM, UTC.")
    period_start: datetime
    period_end: datetime = Field(description="Exclusive: the first instant of the next month.")
    plan: PlanOut
    over_quota: Literal["escalate", "offline"] = Field(description="The tenant's policy past an allowance.")
    messages: Figure
    llm_tokens: Figure

    model_config = ConfigDict(json_schema_extra={"examples": [{
        "month": "2026-11", "period_start": "2026-11-01T00:00:00Z", "period_end": "2026-12-01T00:00:00Z",
        "plan": {"name": "free", "messages_per_month": 1000, "llm_tokens_per_month": 500000,
                 "messages_per_minute": 20, "admin_requests_per_minute": 60, "overrides": []},
        "over_quota": "escalate",
        "messages": {"used": 412, "allowance": 1000, "remaining": 588},
        "llm_tokens": {"used": 201334, "allowance": 500000, "remaining": 298666},
    }]})


def _figure(used: int, allowance: int | None) -> Figure:
    return Figure(used=used, allowance=allowance, remaining=None if allowance is None else max(0, allowance - used))


def plan_out(plan: Plan, overrides: dict | None) -> PlanOut:
    return PlanOut(**plan.as_dict(), overrides=sorted(overrides or {}))


@router.get("/usage", response_model=UsageOut, summary="The plan, and its use in one month")
def get_usage(
    who: Admin,
    month: Annotated[str | None, Query(description="YYYY-MM (UTC); default: the current month.")] = None,
) -> UsageOut:
    """Used, allowance and remaining for the month's inbound messages (every one stored, whatever became of it)
    and LLM tokens (every attempt's prompt and completion tokens), counted from the stored rows when asked."""
    if month is None:
        period = usage.Period.month_of(utcnow())
    else:
        found = re.fullmatch(r"(\d{4})-(\d{2})", month)
        if not found or not 1 <= int(found[2]) <= 12:
            raise HTTPException(422, f"month must be YYYY-MM, e.g. 2026-11; got {month!r}")
        period = usage.Period.month_of(datetime(int(found[1]), int(found[2]), 1))
    from app.config import get_settings

    with session_scope(tenant=who.tenant_id) as session:
        tenant = session.get_one(Tenant, who.tenant_id)
        plan = effective(tenant.plan, tenant.plan_overrides, get_settings().default_plan)
        messages = usage.inbound_messages(session, who.tenant_id, period)
        tokens = usage.llm_tokens(session, who.tenant_id, period)
        over_quota: Literal["escalate", "offline"] = (
            "offline" if (tenant.policies or {}).get("over_quota") == "offline" else "escalate")
        overrides = tenant.plan_overrides
    return UsageOut(month=period.label, period_start=period.start, period_end=period.end,
                    plan=plan_out(plan, overrides), over_quota=over_quota,
                    messages=_figure(messages, plan.messages_per_month),
                    llm_tokens=_figure(tokens, plan.llm_tokens_per_month))
