"""The review console: one static page (HTML, JavaScript and CSS, no build step) that agents log into. It talks
only to the public APIs: /auth (login, refresh, logout, me) and /review/v1 (the queue, its live stream,
decisions, reveals), so everything it can do is checked there, role by role."""

from __future__ import annotations

from functools import cache
from pathlib import Path

import jinja2
from fastapi import APIRouter
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles

STATIC = Path(__file__).parent / "static"
# The pages, with what they share (the login form) included when first served: no build step.
PAGES = jinja2.Environment(loader=jinja2.FileSystemLoader(Path(__file__).parent / "pages"), autoescape=True)
# The page loads nothing from elsewhere and may not be framed (clickjacking a decision button).
HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                               "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}

router = APIRouter(include_in_schema=False)


@cache
def _page(name: str) -> str:
    return PAGES.get_template(name).render()


@router.get("/console")
def console_page() -> HTMLResponse:
    return HTMLResponse(_page("console.html"), headers=HEADERS)


@router.get("/console/analytics")
def analytics_page() -> HTMLResponse:
    """Charts of the tenant's analytics (/admin/v1/analytics), drawn in the page: nothing loaded from elsewhere."""
    return HTMLResponse(_page("analytics.html"), headers=HEADERS)


@router.get("/console/")
def console_slash() -> RedirectResponse:
    return RedirectResponse("/console", status_code=308)


def static_files() -> StaticFiles:
    return StaticFiles(directory=STATIC)
