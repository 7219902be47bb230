"""`/admin/v1/analytics`: the caller's tenant's figures per UTC day, as JSON or CSV. Read-only and free of personal
data, so every role of the tenant may read them (viewer and up, admin and agent API keys), like the
conversations. The tenant comes from the credentials, never from the request."""

from __future__ import annotations

from datetime import date, timedelta
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Response

from app.analytics.export import to_csv
from app.analytics.figures import Report, compute
from app.analytics.schemas import AnalyticsOut, DayOut, FiguresOut
from app.auth import Viewer
from app.db import session_scope
from app.models import utcnow

router = APIRouter(prefix="/admin/v1/analytics", tags=["analytics"])

MAX_DAYS = 366
DEFAULT_DAYS = 30
EARLIEST, LATEST = date(1970, 1, 1), date(9998, 12, 31)
Since = Annotated[date | None, Query(description=f"First UTC day (YYYY-MM-DD; default: {DEFAULT_DAYS} days "
                                                 "ending with `until`).")]
Until = Annotated[date | None, Query(description="Last UTC day, included (YYYY-MM-DD; default: today).")]


def _range(since: date | None, until: date | None) -> tuple[date, date]:
    for name, value in (("since", since), ("until", until)):
        if value is not None and not EARLIEST <= value <= LATEST:
            raise HTTPException(422, f"{name} ({value}) must be between {EARLIEST} and {LATEST}")
    last = until or (since + timedelta(days=DEFAULT_DAYS - 1) if since else utcnow().date())
    first = since or last - timedelta(days=DEFAULT_DAYS - 1)
    if first > last:
        raise HTTPException(422, f"since ({first}) is after until ({last}): swap them")
    if (last - first).days + 1 > MAX_DAYS:
        raise HTTPException(422, f"the range has {(last - first).days + 1} days: ask for at most {MAX_DAYS} at once")
    return first, last


def _report(who: Viewer, since: date | None, until: date | None) -> Report:
    first, last = _range(since, until)
    with session_scope(tenant=who.tenant_id) as session:
        return compute(session, who.tenant_id, first, last)


@router.get("", response_model=AnalyticsOut, summary="Conversations, deflection, escalations, response times and "
                                                      "LLM cost, per day")
def analytics(who: Viewer, since: Since = None, until: Until = None) -> AnalyticsOut:
    """The tenant's figures for each UTC day of the range and their total; definitions in docs/analytics.md.
    422 when `since` is after `until` or the range is longer than 366 days."""
    report = _report(who, since, until)
    return AnalyticsOut(
        since=report.since, until=report.until,
        days=[DayOut(day=day, **FiguresOut.of(f).model_dump()) for day, f in report.days],
        total=FiguresOut.of(report.total),
    )


@router.get("/export.csv", summary="The same figures as CSV, one row per day",
            responses={200: {"content": {"text/csv": {}}}})
def analytics_csv(who: Viewer, since: Since = None, until: Until = None) -> Response:
    report = _report(who, since, until)
    name = f"analytics-{report.since}-{report.until}.csv"
    return Response(to_csv(report), media_type="text/csv; charset=utf-8",
                    headers={"Content-Disposition": f'attachment; filename="{name}"'})
