"""create_app(): the HTTP surface (admin API, review API, widget and channel gateways, health).

In embedded mode the app also runs the orchestrator and the outbound dispatcher in background threads of this
process (the in-process bus only exists here); in scale-out mode they are separate processes
(`switchboard orchestrator`).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy import text

from app.config import get_settings
from app.db import get_engine

log = logging.getLogger(__name__)


def create_app(*, run_workers: bool | None = None) -> FastAPI:
    settings = get_settings()
    if run_workers is None:
        run_workers = settings.embedded

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        workers = None
        if run_workers:
            from app.workers_runtime import RoleThreads

            workers = RoleThreads.start_all()
            from workers.ingest import resume_queued

            resume_queued()  # ingestion jobs an earlier embedded server left unfinished
        app.state.workers = workers
        try:
            yield
        finally:
            if workers is not None:
                workers.stop()

    app = FastAPI(
        title="Switchboard",
        version="0.1.0",
        summary="Multi-tenant messaging assistant: grounded answers from each brand's knowledge, with human review.",
        lifespan=lifespan,
    )

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        """422 with one readable sentence per problem, plus the structured list."""
        problems = [
            f"{'.'.join(str(p) for p in err['loc'] if p != 'body') or 'body'}: {err['msg']}" for err in exc.errors()
        ]
        return JSONResponse(
            status_code=422,
            content={"detail": "; ".join(problems), "errors": exc.errors()},
        )

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

    from app.admin.knowledge_routes import router as knowledge_router
    from app.admin.routes import router as admin_router
    from app.review.routes import router as review_router
    from gateways.routes import routers as gateway_routers

    app.include_router(admin_router)
    app.include_router(knowledge_router)
    app.include_router(review_router)
    for router in gateway_routers():
        app.include_router(router)
    return app
