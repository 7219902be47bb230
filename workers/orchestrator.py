"""`switchboard orchestrator`: the scale-out process that answers inbound messages and dispatches replies."""

from __future__ import annotations

import logging
import signal
import threading
from typing import TYPE_CHECKING

from app.workers_runtime import RoleThreads

if TYPE_CHECKING:
    from app.bootstrap import Container

log = logging.getLogger(__name__)


def main() -> None:
    from app.bootstrap import container, tune_gc

    services = container()
    if services.settings.embedded:
        raise SystemExit(
            "the orchestrator process needs REDIS_URL (scale-out mode); in embedded mode 'switchboard serve' "
            "runs the orchestrator in its own process"
        )
    _check_vector_store(services)
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    roles = RoleThreads.start_all(services)
    tune_gc()
    log.info("orchestrator running (%d consumers); SIGTERM stops it", len(roles.consumers))
    done.wait()
    log.info("stopping: finishing the current batch")
    roles.stop()


def _check_vector_store(services: Container) -> None:
    """Without QDRANT_URL the vector store is the embedded one, a folder only one process can open: fail here, at
    start-up, rather than on every message."""
    settings = services.settings
    if settings.qdrant_url:
        return
    from app.providers.vectors.edge import VectorStoreLocked

    folder = settings.home_dir / "vectors"
    try:
        services.vector_store  # noqa: B018 - opening it takes the folder's lock
    except VectorStoreLocked:
        raise SystemExit(
            f"the embedded vector store ({folder}) is already open in another process, and only one process can "
            "use it: to run several orchestrators (or one beside `switchboard worker` or `serve`), set QDRANT_URL "
            "to a Qdrant server shared by all of them"
        ) from None
    log.warning("QDRANT_URL is not set: this orchestrator uses the embedded vector store in %s, which no other "
                "process can open; set QDRANT_URL to run replicas", folder)
