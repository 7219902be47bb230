"""`switchboard gateway CHANNEL`: one channel's webhook routes (plus health) as its own process."""

from __future__ import annotations

from fastapi import FastAPI
from sqlalchemy import text


def create_gateway_app(channel: str) -> FastAPI:
    from app.api import ERROR_RESPONSES, TELEMETRY, install
    from app.bootstrap import container
    from app.db import get_engine

    services = container()  # this process's one object graph; its routes read it from app.state
    routers = services.plugins.routers
    if channel not in routers:
        raise ValueError(f"unknown channel {channel!r}; available: {sorted(routers)}")
    app = FastAPI(title=f"Switchboard {channel} gateway", version="0.1.0", responses=ERROR_RESPONSES,
                  telemetry=TELEMETRY)  # type: ignore[arg-type]  # a TypedDict in FastAPI; ours is a plain dict
    app.state.container = services
    install(app, services.settings)  # the same error body and body limits as the full server
    app.include_router(routers[channel]())

    @app.get("/healthz", tags=["health"])
    def healthz() -> dict[str, str]:
        """Liveness: the process answers."""
        return {"status": "ok", "channel": channel}

    @app.get("/readyz", tags=["health"])
    def readyz() -> dict[str, str]:
        """Readiness: the database answers."""
        with get_engine().connect() as conn:
            conn.execute(text("SELECT 1"))
        return {"status": "ok"}

    return app
