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


async def _services(request: Request) -> Container:
    # `async`, so FastAPI calls it on the event loop: a plain `def` dependency runs in the thread pool, a thread
    # hop for every request (py-spy: a tenth of the event loop's time under load went to dependency solving).
    return services_of(request)


Services = Annotated[Container, Depends(_services)]
