"""Request body limits, enforced while the body arrives and before anything parses it.

A pure ASGI middleware (it sees every `http.request` chunk; `BaseHTTPMiddleware` would not): a declared
`Content-Length` over the route's limit is answered 413 before a byte is read, and a body without one (chunked)
is counted as it streams and refused as soon as it passes the limit. The application never holds more than the
limit plus one chunk. Limits are per route, from Settings (MAX_BODY_BYTES, MAX_WEBHOOK_BYTES, MAX_UPLOAD_BYTES).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.errors import error_response


@dataclass(frozen=True)
class Limit:
    max_bytes: int
    setting: str  # the variable that changes it, named in the 413 so an operator knows the fix


@dataclass(frozen=True)
class RouteLimit:
    path: str  # an exact path, or a prefix when it ends with "/"
    limit: Limit

    def matches(self, path: str) -> bool:
        return path.startswith(self.path) if self.path.endswith("/") else path == self.path


def human(n: int) -> str:
    for unit, size in (("MiB", 1024 * 1024), ("KiB", 1024)):
        if n >= size:
            return f"{round(n / size, 1):g} {unit}"
    return f"{n} bytes"


class BodyTooLarge(Exception):
    """Raised into the application when the body it is reading passes the limit."""


class BodyLimit:
    def __init__(self, app: ASGIApp, *, default: Limit, routes: Sequence[RouteLimit] = ()) -> None:
        self.app = app
        self.default = default
        self.routes = tuple(routes)

    def limit_for(self, path: str) -> Limit:
        return next((r.limit for r in self.routes if r.matches(path)), self.default)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope["path"])
        declared = Headers(scope=scope).get("content-length", "")
        if declared.isdigit() and int(declared) > limit.max_bytes:
            await self._refuse(limit, scope, receive, send)
            return

        received = 0
        over = False  # the body passed the limit: whatever the app answers to that is replaced by the 413
        started = False

        async def counted() -> Message:
            nonlocal received, over
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit.max_bytes:
                    over = True
                    raise BodyTooLarge(f"request body passed {limit.max_bytes} bytes")
            return message

        async def guarded(message: Message) -> None:
            nonlocal started
            if over and not started:
                return
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counted, guarded)
        except Exception:
            if not over or started:
                raise
        if over and not started:
            await self._refuse(limit, scope, receive, send)

    @staticmethod
    async def _refuse(limit: Limit, scope: Scope, receive: Receive, send: Send) -> None:
        detail = (f"request body is over this route's limit of {human(limit.max_bytes)} "
                  f"({limit.max_bytes} bytes, set by {limit.setting})")
        # The client may still be sending: ask it to close rather than drain a body nobody will read.
        await error_response(413, detail, headers={"Connection": "close"})(scope, receive, send)
