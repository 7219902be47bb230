"""How a request handler reaches the process's services: the container `create_app()` (or the stand-alone
gateway app) put in `app.state`, as a FastAPI dependency: `def route(services: Services) -> ...`."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from app.bootstrap import Container


def services_of(request: Request) -> Container:
    """The container of the app serving `request` (for helpers that are handed the request, not a dependency)."""
    container: Container = request.app.state.container
    return container


Services = Annotated[Container, Depends(services_of)]
