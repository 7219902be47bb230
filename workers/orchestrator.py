"""`switchboard orchestrator`: the scale-out process that answers inbound messages and dispatches replies."""

from __future__ import annotations

import logging
import signal
import threading

from app.workers_runtime import RoleThreads

log = logging.getLogger(__name__)


def main() -> None:
    from app.config import get_settings

    if get_settings().embedded:
        raise SystemExit(
            "the orchestrator process needs REDIS_URL (scale-out mode); in embedded mode 'switchboard serve' "
            "runs the orchestrator in its own process"
        )
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    roles = RoleThreads.start_all()
    from app.runtime import tune_gc

    tune_gc()
    log.info("orchestrator running (%d consumers); SIGTERM stops it", len(roles.consumers))
    done.wait()
    log.info("stopping: finishing the current batch")
    roles.stop()
