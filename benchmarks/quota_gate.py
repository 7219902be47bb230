"""What the plan check costs per message: the quota gate (app/tenants/quota.py) with its per-tenant cache, against
recounting the month's rows for every message, at a given month's volume.

One tenant on the `free` plan with its monthly allowances raised so nothing is refused (the check runs in full),
`--rows` inbound messages and a tenth as many LLM call rows this month. Times `check_message` on one thread:
cached (one read per QUOTA_CACHE_S, then a locked counter) and with `cache_s=0` (two indexed aggregate queries
per message). SQLite by default, Postgres with --database-url.

    .venv/bin/python benchmarks/quota_gate.py [--rows 100000] [--checks 5000] [--database-url postgresql+psycopg://...]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--checks", type=int, default=5_000)
    parser.add_argument("--database-url", default=None)
    args = parser.parse_args()
    os.environ["SWITCHBOARD_HOME"] = tempfile.mkdtemp(prefix="sb-bench-")
    for var in ("DATABASE_URL", "REDIS_URL", "SWITCHBOARD_DATABASE_URL", "SWITCHBOARD_REDIS_URL"):
        os.environ.pop(var, None)
    if args.database_url:
        os.environ["DATABASE_URL"] = args.database_url

    from sqlalchemy import insert

    from app import operations
    from app.bootstrap import container
    from app.db import migrate, session_scope
    from app.models import LLMCall, Message, new_id, utcnow
    from app.ratelimit import RateLimiter
    from app.tenants.quota import QuotaGate
    from app.tenants.service import create_tenant
    from tests.factories import get_or_create_contact, get_or_create_conversation

    migrate()
    slug = f"bench-{uuid.uuid4().hex[:6]}"
    with session_scope(cross_tenant="benchmark setup") as session:
        tenant_id = create_tenant(session, slug, name="bench").tenant.id
        conversation = get_or_create_conversation(
            session, tenant_id, get_or_create_contact(session, tenant_id, "webchat", "v", "V"), None).id
    now = utcnow()
    for start in range(0, args.rows, 10_000):
        with session_scope(cross_tenant="benchmark setup") as session:
            session.execute(insert(Message), [
                {"id": new_id(), "created_at": now, "tenant_id": tenant_id, "conversation_id": conversation,
                 "channel": "webchat", "direction": "in", "provider_message_id": uuid.uuid4().hex, "text": "q",
                 "status": "answered", "meta": {}} for _ in range(min(10_000, args.rows - start))])
            session.execute(insert(LLMCall), [
                {"id": new_id(), "created_at": now, "day": now.date(), "tenant_id": tenant_id, "provider": "p",
                 "model": "m", "outcome": "ok", "attempt": 1, "streamed": False, "prompt_tokens": 400,
                 "completion_tokens": 60, "latency_ms": 0} for _ in range(min(1_000, (args.rows - start) // 10))])
    operations.set_plan(container(), slug, "free", {"messages_per_month": 10 * args.rows + args.checks,
                                                    "llm_tokens_per_month": 10**12, "messages_per_minute": None})
    backend = "postgres" if args.database_url else "sqlite"
    print(f"{backend}, {args.rows} inbound rows + {args.rows // 10} llm_calls rows this month, "
          f"{args.checks} checks, load average {os.getloadavg()[0]:.2f}")
    for label, cache_s in (("cached (QUOTA_CACHE_S=10)", 10.0), ("recount every message (cache 0)", 0.0)):
        gate = QuotaGate(RateLimiter({}), default_plan="unlimited", cache_s=cache_s)
        n = args.checks if cache_s else max(50, args.checks // 50)
        started = time.perf_counter()
        for _ in range(n):
            assert gate.check_message(tenant_id) is None
        per = (time.perf_counter() - started) / n
        print(f"  {label}: {per * 1e6:,.1f} us per message ({n} checks)")


if __name__ == "__main__":
    main()
