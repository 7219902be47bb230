"""One error body for every error the API answers: `{"detail": "...", "errors": [...]}`.

`detail` is one readable sentence (what clients and people read); `errors` lists each problem of a 422 with its
location. Nothing a client sent is echoed back raw: locations and messages are cut short and made valid Unicode,
so the error for a hostile body can always be encoded. The OpenAPI document describes this body on every route
(instead of FastAPI's `HTTPValidationError`), so what /openapi.json promises is what a client gets.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from app import logs

log = logging.getLogger(__name__)

# A location or message longer than this is cut: an error never carries a client's megabyte back to it.
MAX_ECHO_CHARS = 120
# A 422 lists this many problems at most (a list of 10,000 wrong items is one mistake, not 10,000).
MAX_ERRORS = 20


class ErrorItem(BaseModel):
    loc: list[str | int] = Field(description="Where: `body`, `query`, `path` or `header`, then field names.")
    msg: str = Field(description="What is wrong there.")
    type: str = Field(description="A stable machine-readable kind, e.g. `missing`, `string_too_long`.")


class ErrorOut(BaseModel):
    """The body of every error response."""

    detail: str = Field(description="What went wrong, in one sentence a person can act on.")
    errors: list[ErrorItem] | None = Field(default=None, description="Each problem of a 422, with its location.")
    request_id: str | None = Field(default=None, description="On 500 only: quote it when reporting the problem.")


EXAMPLES: dict[str, dict[str, Any]] = {
    "validation": {
        "summary": "422: the request does not match the schema",
        "value": {
            "detail": "policies.min_relevance: Input should be less than or equal to 1",
            "errors": [
                {
                    "loc": ["body", "policies", "min_relevance"],
                    "msg": "Input should be less than or equal to 1",
                    "type": "less_than_equal",
                }
            ],
        },
    },
    "nul": {
        "summary": "422: text the server cannot store",
        "value": {
            "detail": "text: contains a NUL character (\\u0000); remove it",
            "errors": [
                {"loc": ["body", "text"], "msg": "contains a NUL character (\\u0000); remove it", "type": "string_nul"}
            ],
        },
    },
    "unauthorized": {
        "summary": "401: no key or a wrong one",
        "value": {"detail": "invalid or revoked API key"},
    },
    "not_found": {
        "summary": "404: nothing with that id in your tenant",
        "value": {"detail": "no conversation '8c1f...'"},
    },
    "too_large": {
        "summary": "413: the body is over this route's limit",
        "value": {"detail": "request body is over this route's limit of 256 KiB (262144 bytes, set by MAX_BODY_BYTES)"},
    },
}

# Documented on every route (FastAPI(responses=...)); routes list their specific codes next to it.
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    "4XX": {
        "model": ErrorOut,
        "description": "The request was refused: see `detail` (and `errors` on a 422).",
        "content": {"application/json": {"examples": EXAMPLES}},
    },
}


def clean(text: str, limit: int = MAX_ECHO_CHARS) -> str:
    """`text` cut to `limit` characters, with unpaired surrogates (which no encoder accepts) replaced."""
    if len(text) > limit:
        text = text[:limit] + "…"
    return text.encode("utf-8", "replace").decode("utf-8")


def error_body(detail: str, errors: Sequence[ErrorItem] | None = None, **extra: Any) -> dict[str, Any]:
    return ErrorOut(detail=clean(detail, 2000), errors=list(errors) if errors is not None else None,
                    **extra).model_dump(mode="json", exclude_none=True)


def error_response(status: int, detail: str, errors: Sequence[ErrorItem] | None = None,
                   headers: Mapping[str, str] | None = None) -> JSONResponse:
    return JSONResponse(status_code=status, content=error_body(detail, errors), headers=headers)


def _where(loc: Sequence[str | int]) -> str:
    return ".".join(str(p) for p in (loc[1:] if loc[:1] == ["body"] else loc)) or "body"


def problems(raw: Sequence[Any]) -> list[ErrorItem]:
    """Pydantic's error dicts without `input`, `ctx` and `url` (raw client data, often not JSON-encodable)."""
    items = []
    for err in raw:
        loc = [p if isinstance(p, int) else clean(str(p)) for p in err.get("loc", ())]
        msg = str(err.get("msg", "invalid"))
        ctx = err.get("ctx") or {}
        if err.get("type") == "json_invalid" and isinstance(ctx.get("error"), str):
            msg = f"{msg}: {ctx['error']}"  # e.g. "Expecting ',' delimiter", which says what to fix
        items.append(ErrorItem(loc=loc, msg=clean(msg, 500), type=str(err.get("type", "invalid"))))
    return items


def summary(items: Sequence[ErrorItem]) -> str:
    return "; ".join(f"{_where(item.loc)}: {item.msg}" for item in items)


async def _validation(_: Request, exc: Exception) -> JSONResponse:
    """422 with one readable sentence per problem, plus the structured list."""
    assert isinstance(exc, RequestValidationError)
    raw = exc.errors()
    items = problems(raw[:MAX_ERRORS])
    more = f"; and {len(raw) - MAX_ERRORS} more" if len(raw) > MAX_ERRORS else ""
    return error_response(422, (summary(items) or "the request is not valid") + more, items)


async def _http(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code in (204, 304) or exc.status_code < 200:  # no body allowed
        return Response(status_code=exc.status_code, headers=exc.headers)
    return error_response(exc.status_code, str(exc.detail), headers=exc.headers)


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    """The last line: a JSON 500 naming a request id that the log line carries too, and no internals."""
    ctx = logs.current()  # the request's, set by app/metrics.py `Observe`
    request_id = ctx.request_id if ctx is not None and ctx.request_id else uuid.uuid4().hex
    log.error("unhandled error on %s %s (request id %s)", request.method, request.url.path, request_id,
              exc_info=exc)
    return JSONResponse(
        status_code=500,
        content=error_body(f"internal error; quote request id {request_id} when reporting it",
                           request_id=request_id),
        headers={"X-Request-ID": request_id},
    )


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, _validation)
    app.add_exception_handler(StarletteHTTPException, _http)
    app.add_exception_handler(Exception, _unexpected)
    _document_errors(app)


def _document_errors(app: FastAPI) -> None:
    """Make the OpenAPI document describe `ErrorOut` wherever an error is documented: codes a route lists with
    only a description get the shared body, and FastAPI's own 422 schema (`HTTPValidationError`) is replaced."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = generate()
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            if "ErrorOut" not in components:  # an app built without ERROR_RESPONSES
                own = ErrorOut.model_json_schema(ref_template="#/components/schemas/{model}")
                components.update(own.pop("$defs", {}))
                components["ErrorOut"] = own
            ref = {"$ref": "#/components/schemas/ErrorOut"}
            for path in schema.get("paths", {}).values():
                for operation in path.values():
                    for code, response in operation.get("responses", {}).items():
                        # Every 4xx is our JSON body, whatever the route's own media type (text/plain for a
                        # webhook's 200, an event stream); a 5xx route documents with no body of its own too.
                        content = response.get("content") or {}
                        if code[:1] == "4" or (code[:1] == "5" and not any(m.get("schema") for m in content.values())):
                            examples = next((m["examples"] for m in content.values() if "examples" in m), None)
                            response["content"] = {"application/json": {"schema": ref}}
                            if examples:
                                response["content"]["application/json"]["examples"] = examples
            for name in ("HTTPValidationError", "ValidationError"):
                components.pop(name, None)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
