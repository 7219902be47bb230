"""create_app(): the HTTP surface (admin API, review API, widget and channel gateways, health).

In embedded mode the app also runs the orchestrator and the outbound dispatcher in background threads of this
process (the in-process bus only exists here); in scale-out mode they are separate processes
(`switchboard orchestrator`).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from sqlalchemy import text

from app.api import ERROR_RESPONSES, TELEMETRY
from app.api import install as install_edge
from app.bootstrap import Container
from app.bootstrap import container as current_container
from app.config import get_settings
from app.db import get_engine
from app.logscrub import install as scrub_logs
from app.outbox import start_relay, stop_threads

log = logging.getLogger(__name__)


def create_app(*, run_workers: bool | None = None, container: Container | None = None,
               started: Callable[[], None] | None = None) -> FastAPI:
    """`container`: the process's object graph (app/bootstrap.py); by default the process's own. `started`: runs
    at the end of the start-up, once the workers (and the models they load) are up (`serve`: `tune_gc`)."""
    from app.files import restrict_umask

    restrict_umask()  # whatever serves this app (uvicorn, gunicorn, tests) creates private files only
    scrub_logs()  # no raw PII or credentials in any log record from here on
    # Without a container of its own, the app reads the settings as they are now (tests change them per app).
    settings = container.settings if container else get_settings()
    container = container or current_container()
    if run_workers is None:
        run_workers = settings.embedded

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        workers = answerers = None
        relay_stop, relay = threading.Event(), []
        if run_workers:
            from app.workers_runtime import RoleThreads

            if settings.embedded and settings.answer_processes:
                from app.answerers import AnswerProcesses

                answerers = AnswerProcesses.start(container, settings.answer_processes)
            workers = RoleThreads.start_all(container, answer=answerers is None)
            container.job_queue.resume()  # ingestion jobs an earlier embedded server left unfinished
        elif not settings.embedded:  # scale-out: the API writes too (inbound, decisions), so it relays its outbox
            relay.append(start_relay(container.bus, relay_stop))
        app.state.workers, app.state.answerers = workers, answerers
        if started is not None:
            started()
        try:
            yield
        finally:  # nothing this app started outlives it
            stop_threads(relay_stop, relay)
            if answerers is not None:
                answerers.stop()
            if workers is not None:
                workers.stop()

    app = FastAPI(
        title="Switchboard",
        version="0.1.0",
        summary="Multi-tenant messaging assistant: grounded answers from each brand's knowledge, with human review.",
        lifespan=lifespan,
        responses=ERROR_RESPONSES,
        telemetry=TELEMETRY,  # type: ignore[arg-type]  # a TypedDict in FastAPI; ours is a plain dict
    )
    app.state.container = container
    install_edge(app, settings)  # one error body, body limits while reading, no unstorable text

    @app.get("/healthz", tags=["health"])
    def healthz() -> dict[str, str]:
        """Liveness: the process answers."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"])
    def readyz() -> JSONResponse:
        """Readiness: the database (and Redis, in scale-out mode) answer."""
        checks: dict[str, str] = {}
        try:
            with get_engine().connect() as conn:
                conn.execute(text("SELECT 1"))
            checks["database"] = "ok"
        except Exception as exc:
            checks["database"] = f"error: {exc.__class__.__name__}"
        if settings.redis_url:
            try:
                import redis

                redis.Redis.from_url(settings.redis_url, socket_timeout=2).ping()
                checks["redis"] = "ok"
            except Exception as exc:
                checks["redis"] = f"error: {exc.__class__.__name__}"
        ok = all(v == "ok" for v in checks.values())
        return JSONResponse(status_code=200 if ok else 503, content={"status": "ok" if ok else "degraded", **checks})

    from app.accounts.routes import router as auth_router
    from app.admin.channel_routes import channel_router
    from app.admin.conversation_routes import router as conversations_router
    from app.admin.knowledge_routes import router as knowledge_router
    from app.admin.routes import router as admin_router
    from app.admin.user_routes import router as users_router
    from app.review.routes import router as review_router

    # Routes are tried in order, a few microseconds each: the channels and the widget, nearly all the traffic,
    # come first (no path overlaps between these groups, so the order changes nothing else).
    for router in container.plugins.routers.values():
        app.include_router(router())
    app.include_router(admin_router)
    app.include_router(conversations_router)
    app.include_router(channel_router(container))
    app.include_router(knowledge_router)
    app.include_router(review_router)
    app.include_router(auth_router)
    app.include_router(users_router)
    from app.admin.usage_routes import router as usage_router

    app.include_router(usage_router)
    from app.admin.webhook_routes import router as webhook_router
    from app.analytics.routes import router as analytics_router
    from app.console.routes import router as console_router
    from app.console.routes import static_files
    from app.contacts.routes import router as contacts_router
    from app.review.console_routes import router as review_console_router

    app.include_router(review_console_router)
    app.include_router(webhook_router)
    app.include_router(analytics_router)
    app.include_router(contacts_router)
    app.include_router(console_router)
    app.mount("/console/static", static_files(), name="console-static")
    return app
