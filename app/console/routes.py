"""The review console: one static page (HTML, JavaScript and CSS, no build step) that agents log into. It talks
only to the public APIs: /auth (login, refresh, logout, me) and /review/v1 (the queue, its live stream,
decisions, reveals), so everything it can do is checked there, role by role."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles

STATIC = Path(__file__).parent / "static"
# The page loads nothing from elsewhere and may not be framed (clickjacking a decision button).
HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                               "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}

router = APIRouter(include_in_schema=False)


@router.get("/console")
def console_page() -> FileResponse:
    return FileResponse(STATIC / "index.html", media_type="text/html", headers=HEADERS)


@router.get("/console/analytics")
def analytics_page() -> FileResponse:
    """Charts of the tenant's analytics (/admin/v1/analytics), drawn in the page: nothing loaded from elsewhere."""
    return FileResponse(STATIC / "analytics.html", media_type="text/html", headers=HEADERS)


@router.get("/console/")
def console_slash() -> RedirectResponse:
    return RedirectResponse("/console", status_code=308)


def static_files() -> StaticFiles:
    return StaticFiles(directory=STATIC)
