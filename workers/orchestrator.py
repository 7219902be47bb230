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
    _check_vector_store()
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


def _check_vector_store() -> None:
    """Without QDRANT_URL the vector store is the embedded one, a folder only one process can open: fail here, at
    start-up, rather than on every message."""
    from app.config import get_settings

    settings = get_settings()
    if settings.qdrant_url:
        return
    from app.providers.vectors.edge import VectorStoreLocked
    from app.runtime import get_vector_store

    folder = settings.home_dir / "vectors"
    try:
        get_vector_store()
    except VectorStoreLocked:
        raise SystemExit(
            f"the embedded vector store ({folder}) is already open in another process, and only one process can "
            "use it: to run several orchestrators (or one beside `switchboard worker` or `serve`), set QDRANT_URL "
            "to a Qdrant server shared by all of them"
        ) from None
    log.warning("QDRANT_URL is not set: this orchestrator uses the embedded vector store in %s, which no other "
                "process can open; set QDRANT_URL to run replicas", folder)
