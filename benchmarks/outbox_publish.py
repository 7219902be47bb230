"""What an outcome's outbox costs per message on the writer's thread: the entry written in the outcome's
transaction, published after the commit, then deleted either in a transaction of its own (`publish_now`, the
fast path every writer used) or with the tenant's next transaction (`Publisher`, the orchestrator's outcomes).
Embedded SQLite, in-memory bus; the outcome's own statements are left out, so the difference is the cut.

    .venv/bin/python benchmarks/outbox_publish.py [--messages 3000]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    os.environ["SWITCHBOARD_HOME"] = tempfile.mkdtemp(prefix="sb-bench-")
    for var in ("DATABASE_URL", "REDIS_URL", "QDRANT_URL"):
        os.environ.pop(var, None)

    from app import outbox
    from app.bus.memory import MemoryBus
    from app.db import migrate, session_scope
    from app.tenants.service import create_tenant

    migrate()
    with session_scope(cross_tenant="benchmark") as session:
        tenant = create_tenant(session, "bench").tenant.id
    bus = MemoryBus()
    publisher = outbox.Publisher(bus)

    def own_transaction() -> None:
        with session_scope(tenant=tenant) as session:
            pending = outbox.add(session, [outbox.Entry("outbound", tenant, {"n": "1"})])
        outbox.publish_now(bus, pending)

    def next_transaction() -> None:
        with session_scope(tenant=tenant) as session:
            pending = publisher.add(session, [outbox.Entry("outbound", tenant, {"n": "1"})])
        publisher.publish(pending)

    for round_ in range(1, args.rounds + 1):
        for name, step in (("delete in its own transaction", own_transaction),
                           ("delete with the next transaction", next_transaction)):
            for _ in range(200):
                step()
            started = time.thread_time()
            for _ in range(args.messages):
                step()
            spent = (time.thread_time() - started) / args.messages * 1000
            print(f"round {round_}  {name:34s} {spent:.3f} ms of CPU per message (this thread)")


if __name__ == "__main__":
    main()
