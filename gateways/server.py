"""`switchboard gateway CHANNEL`: one channel's webhook routes (plus health) as its own process."""

from __future__ import annotations

from fastapi import FastAPI
from sqlalchemy import text


def create_gateway_app(channel: str) -> FastAPI:
    from app.api import ERROR_RESPONSES, install
    from app.config import get_settings
    from app.db import get_engine
    from gateways.routes import routers

    app = FastAPI(title=f"Switchboard {channel} gateway", version="0.1.0", responses=ERROR_RESPONSES)
    install(app, get_settings())  # the same error body and body limits as the full server
    for router in routers([channel]):  # raises ValueError naming the available channels
        app.include_router(router)

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
