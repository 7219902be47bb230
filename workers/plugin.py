"""How the workers join a Switchboard process (entry point `switchboard.plugins`, see app/plugins.py): the
ingestion job queue and the `orchestrator` and `worker` roles."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from app.bootstrap import Container
    from app.jobs import JobQueue
    from app.plugins import Plugins


def _job_queue(container: Container) -> JobQueue:
    from workers.ingest import job_queue

    return job_queue(container)


def _orchestrator(**_: Any) -> None:
    from workers.orchestrator import main

    main()


def _worker(**_: Any) -> None:
    from workers.ingest import main

    main()


def register(plugins: Plugins) -> None:
    plugins.job_queue = _job_queue
    plugins.roles["orchestrator"] = _orchestrator
    plugins.roles["worker"] = _worker
