"""What every Switchboard HTTP app shares at its edge: one error body, body limits while reading, and no text
the server cannot store. `create_app()` and the stand-alone gateway app both call `install`."""

from __future__ import annotations

from typing import Annotated

from fastapi import FastAPI, Header, HTTPException, Request
from fastapi.responses import Response

from app.api.errors import ERROR_RESPONSES, ErrorOut, install_error_handlers
from app.api.limits import BodyLimit, Limit, RouteLimit
from app.api.strict import StrictText
from app.config import Settings

__all__ = ["ERROR_RESPONSES", "TELEMETRY", "ErrorOut", "install"]

# FastAPI's own OpenTelemetry spans record the raw path and query string (the USSD webhook's token, the widget
# stream's ticket, Meta's verify token) and its logs exception messages: off. Each request's span is made by
# app/metrics.py `Observe` instead, named after the route template, with no query (app/tracing.py).
TELEMETRY: dict[str, bool] = {"tracing": False, "metrics": False, "logs": False, "operation_spans": False,
                              "auto_configure": False}

WEBHOOKS = "/webhooks/"
UPLOAD = "/admin/v1/knowledge"


def install(app: FastAPI, settings: Settings) -> None:
    """Error handlers and the edge middleware. Build the app with `FastAPI(responses=ERROR_RESPONSES,
    telemetry=TELEMETRY)` so each route documents the error body too, and FastAPI makes no spans of its own."""
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
    from app.metrics import Observe

    app.add_middleware(Observe)  # outermost: every answer is counted and carries its request id
    _metrics_route(app, settings)


def _metrics_route(app: FastAPI, settings: Settings) -> None:
    from app.crypto import secrets_equal
    from app.metrics import exposition

    token = settings.metrics_token

    @app.get("/metrics", include_in_schema=False)
    def metrics(request: Request, authorization: Annotated[str | None, Header()] = None) -> Response:
        """Prometheus metrics (app/metrics.py), for the operator's scraper: `Authorization: Bearer
        <METRICS_TOKEN>`."""
        if token is None:
            raise HTTPException(404, "metrics are off: set METRICS_TOKEN (or METRICS_PORT for a local port)")
        if not authorization or not secrets_equal(authorization.removeprefix("Bearer "), token):
            raise HTTPException(401, "metrics need 'Authorization: Bearer <METRICS_TOKEN>'")
        container = getattr(request.app.state, "container", None)
        body = exposition(getattr(container, "bus", None))
        return Response(body, media_type="text/plain; version=0.0.4; charset=utf-8")
