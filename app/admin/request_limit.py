"""The admin API's own per-tenant request limit: the plan's `admin_requests_per_minute` (app/tenants/plans.py),
counted per tenant across every key and login of it (in Redis in scale-out, so across replicas). Over it the caller
gets 429 with `Retry-After` and a message naming the limit. The operator token (the local CLI) is not limited."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends
from fastapi.concurrency import run_in_threadpool

from app.api.services import Services
from app.auth import Principal, authenticate
from app.ratelimit import RateLimited


async def admin_request_limit(principal: Annotated[Principal, Depends(authenticate)], services: Services) -> None:
    if principal.key_id is None and principal.user_id is None:
        return  # the operator
    try:
        # The plan may need a database read (once per QUOTA_CACHE_S) and the window a Redis round trip.
        await run_in_threadpool(services.quota.check_admin_request, principal.tenant_id)
    except RateLimited as exc:
        raise exc.http() from None


LIMITED = [Depends(admin_request_limit)]  # for every /admin/v1 router
