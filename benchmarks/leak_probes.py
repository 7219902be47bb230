"""The tenant leak suite at full size: N tenants with data of every kind on a scratch embedded home (SQLite, or
PostgreSQL with --database-url), served by uvicorn on 127.0.0.1; for every ordered pair (attacker, victim), every
operation of the OpenAPI document with every id of the victim in its path parameters (and id-like query, header
and body fields), as each of the attacker's 7 principals (admin key, agent key, a login of each role, a widget
visitor). Prints probes, leaks, counts by status and by route and status.

    .venv/bin/python benchmarks/leak_probes.py [--tenants 4] [--conversations 2] [--database-url postgresql://...]

Exits 1 when any probe leaks (each leak is printed with its route, principal and why).
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import sys
import tempfile
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

RATE_LIMITS = ("WIDGET_SESSIONS_PER_IP", "WIDGET_SENDS_PER_IP", "WIDGET_SENDS_PER_VISITOR", "AUTH_FAILURES_PER_IP",
               "AUTH_FAILURES_PER_KEY", "WEBHOOK_FAILURES_PER_ACCOUNT", "LLM_CALLS_PER_TENANT",
               "LOGIN_FAILURES_PER_ACCOUNT", "LOGIN_FAILURES_PER_IP")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tenants", type=int, default=4)
    parser.add_argument("--conversations", type=int, default=2, help="per tenant, each with messages and an escalation")
    parser.add_argument("--database-url", default=None, help="an empty PostgreSQL database (default: SQLite)")
    args = parser.parse_args()

    os.environ["SWITCHBOARD_HOME"] = tempfile.mkdtemp(prefix="sb-leaks-")
    for var in ("DATABASE_URL", "REDIS_URL", "QDRANT_URL", "S3_BUCKET", "LLM_BASE_URL", "LLM_API_KEY"):
        os.environ.pop(var, None)
    if args.database_url:
        os.environ["DATABASE_URL"] = args.database_url
    for name in RATE_LIMITS:  # one client address sends thousands of refused requests: the limits are tested apart
        os.environ[f"SWITCHBOARD_RATE_{name}"] = ""
    logging.getLogger().setLevel(logging.CRITICAL)

    import httpx

    from app.db import migrate
    from app.main import create_app
    from tests.e2e.sse import serve_http
    from tests.security import leak_probes as lp

    migrate()
    app = create_app(run_workers=False)
    started = time.perf_counter()
    tally = lp.Tally()
    with serve_http(app) as base, httpx.Client(base_url=base, timeout=30) as http:
        tenants = [lp.seed_tenant(http, f"t{i}", conversations=args.conversations) for i in range(args.tenants)]
        seeded = time.perf_counter() - started
        ops = lp.operations(app.openapi())
        for attacker in tenants:
            for victim in tenants:
                if attacker is not victim:
                    lp.run_all(http, list(lp.plan(ops, victim, attacker)), attacker, victim, tally)
    elapsed = time.perf_counter() - started

    load = os.getloadavg()
    print(f"# {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {platform.machine()} {os.cpu_count()} cores, "
          f"Python {platform.python_version()}, {'PostgreSQL' if args.database_url else 'SQLite'}, "
          f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    print(f"tenants {args.tenants} (ordered pairs {args.tenants * (args.tenants - 1)}), operations {len(ops)}, "
          f"principals 7, seeded in {seeded:.1f} s, probed in {elapsed - seeded:.1f} s")
    print(lp.report(tally))
    routes: Counter[str] = Counter()
    for (op, _), n in tally.by_route.items():
        routes[op] += n
    print("\nby route and status:")
    for op in sorted(routes):
        statuses = ", ".join(f"{status}: {n}" for (o, status), n in sorted(tally.by_route.items()) if o == op)
        print(f"  {op:58s} {routes[op]:6d}  ({statuses})")
    return 1 if tally.leaks else 0


if __name__ == "__main__":
    raise SystemExit(main())
