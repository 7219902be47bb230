"""What every Switchboard HTTP app shares at its edge: one error body, body limits while reading, and no text
the server cannot store. `create_app()` and the stand-alone gateway app both call `install`."""

from __future__ import annotations

from fastapi import FastAPI

from app.api.errors import ERROR_RESPONSES, ErrorOut, install_error_handlers
from app.api.limits import BodyLimit, Limit, RouteLimit
from app.api.strict import StrictText
from app.config import Settings

__all__ = ["ERROR_RESPONSES", "ErrorOut", "install"]

WEBHOOKS = "/webhooks/"
UPLOAD = "/admin/v1/knowledge"


def install(app: FastAPI, settings: Settings) -> None:
    """Error handlers and the edge middleware. Build the app with `FastAPI(responses=ERROR_RESPONSES)` so each
    route documents the error body too."""
    install_error_handlers(app)
    # Starlette runs the last added outermost: the limit counts bytes before the text check buffers them.
    app.add_middleware(StrictText, raw_bodies=(WEBHOOKS,))
    app.add_middleware(
        BodyLimit,
        default=Limit(settings.max_body_bytes, "MAX_BODY_BYTES"),
        routes=[
            RouteLimit(UPLOAD, Limit(settings.max_upload_bytes, "MAX_UPLOAD_BYTES")),
            RouteLimit(WEBHOOKS, Limit(settings.max_webhook_bytes, "MAX_WEBHOOK_BYTES")),
        ],
    )
