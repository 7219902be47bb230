"""What the `switchboard` commands share: errors, JSON output, process set-up, and calls to a running server."""

from __future__ import annotations

import json
import logging
from typing import Any

import httpx
import typer

from app import operations
from app.config import get_settings


def fail(message: str, code: int = 1) -> typer.Exit:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    return typer.Exit(code)


def print_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, default=str))


def prepare() -> None:
    from app import logs
    from app.db import migrate

    settings = get_settings()
    logs.configure(settings.log_format, settings.log_level or logging.WARNING)
    # The HTTP clients log every request at INFO (one line per LLM call or provider send): kept for failures.
    for chatty in ("httpx", "httpx2"):
        logging.getLogger(chatty).setLevel(logging.WARNING)
    migrate()


def trace(role: str) -> None:
    """Traces of this role's process to OTEL_EXPORTER_OTLP_ENDPOINT, when it is set (app/tracing.py)."""
    from app import tracing

    tracing.setup(role)


def remote(server: dict[str, Any], method: str, path: str, body: dict[str, Any] | None, timeout: float = 120,
            tenant: str | None = None) -> Any:
    headers = {"Authorization": f"Bearer {server['token']}"}
    if tenant:
        headers["X-Switchboard-Tenant"] = tenant
    try:
        response = httpx.request(method, server["url"] + path, json=body, timeout=timeout, headers=headers)
    except httpx.HTTPError as exc:
        raise fail(f"the running server at {server['url']} did not answer ({exc}); stop it or remove "
                    f"{operations.server_file()}") from exc
    if response.status_code >= 400:
        raise fail(response.json().get("detail", response.text))
    return response.json()
