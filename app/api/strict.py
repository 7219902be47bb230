"""Text the server cannot store or encode is refused at the edge with a 422 naming where it is.

NUL characters (PostgreSQL refuses them in text), unpaired UTF-16 surrogates (not Unicode: no encoder takes them)
and JSON's non-standard NaN/Infinity (or a number too large for a float) would otherwise pass validation and fail
later, in the database or while encoding the response, as a 500. This pure ASGI middleware checks the path, the
query string, and JSON or urlencoded bodies; routes under `raw_bodies` (provider webhooks, which verify the raw
bytes and decide themselves what to do with a signed payload) get their path and query checked only.

A JSON body is parsed here only when a cheap scan of its bytes finds something suspicious; the application
then receives the very same bytes.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from typing import Any
from urllib.parse import parse_qsl

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.errors import ErrorItem, clean, error_response, summary

# Candidates only (a string may contain "NaN"); the parse decides. Escaped NUL, escaped surrogates, raw UTF-8
# surrogates (which json.loads lets through as surrogates), NaN/Infinity, and numbers big enough to be infinite.
_SUSPICIOUS = re.compile(rb"\\u0000|(?i:\\ud[89a-f])|\xed[\xa0-\xbf]|NaN|Infinity|[eE][+-]?\d{3}|\d{300}")
_SURROGATE = re.compile("[\ud800-\udfff]")

NUL_MSG = "contains a NUL character (\\u0000); remove it"
SURROGATE_MSG = "contains an unpaired UTF-16 surrogate, which is not valid Unicode; send UTF-8 text"


def text_problem(value: str) -> tuple[str, str] | None:
    """(message, type) when `value` cannot be stored as text, else None."""
    if "\x00" in value:
        return NUL_MSG, "string_nul"
    if _SURROGATE.search(value):
        return SURROGATE_MSG, "string_unpaired_surrogate"
    return None


def _item(loc: Sequence[str | int], value: str) -> ErrorItem | None:
    problem = text_problem(value)
    if problem is None:
        return None
    return ErrorItem(loc=[p if isinstance(p, int) else clean(p) for p in loc], msg=problem[0], type=problem[1])


def json_problems(body: bytes) -> list[ErrorItem]:
    """What in a JSON body cannot be stored; [] when nothing is wrong or the body is not JSON at all (the
    application reports broken JSON itself)."""
    if not _SUSPICIOUS.search(body):
        return []

    class NotANumber(ValueError):
        pass

    def finite(text: str) -> float:
        number = float(text)
        if not math.isfinite(number):
            raise NotANumber(text)
        return number

    def constant(text: str) -> float:
        raise NotANumber(text)

    try:
        value = json.loads(body, parse_float=finite, parse_constant=constant)
    except NotANumber as exc:
        return [ErrorItem(loc=["body"], msg=f"{clean(str(exc), 40)} is not a JSON number this API accepts: "
                          "send a finite number", type="float_not_finite")]
    except (ValueError, RecursionError):  # not JSON (or not UTF-8): the application answers that
        return []
    found: list[ErrorItem] = []
    stack: list[tuple[list[str | int], Any]] = [(["body"], value)]
    while stack and len(found) < 10:  # iterative: as deep as json.loads went, whatever our stack depth
        loc, node = stack.pop()
        if isinstance(node, str):
            item = _item(loc, node)
            if item:
                found.append(item)
        elif isinstance(node, dict):
            for key, child in node.items():
                item = _item([*loc, key], key)
                if item:
                    item.msg = f"a key {item.msg}"
                    found.append(item)
                stack.append(([*loc, key], child))
        elif isinstance(node, list):
            stack.extend(([*loc, i], child) for i, child in enumerate(node))
    return found


def form_problems(raw: bytes, where: str) -> list[ErrorItem]:
    """What in a query string or urlencoded body (`where`: `query` or `body`) is not storable text."""
    try:
        pairs = parse_qsl(raw.decode("latin-1"), keep_blank_values=True, errors="strict")
    except UnicodeDecodeError:
        return [ErrorItem(loc=[where], msg="is not valid UTF-8 once percent-decoded", type="string_unicode")]
    found = []
    for key, value in pairs:
        item = _item([where, key], key) or _item([where, key], value)
        if item:
            found.append(item)
    return found


def _is_json(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


class StrictText:
    def __init__(self, app: ASGIApp, *, raw_bodies: Sequence[str] = ()) -> None:
        self.app = app
        self.raw_bodies = tuple(raw_bodies)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path_item = _item(["path"], scope["path"])
        found = [path_item] if path_item else form_problems(scope.get("query_string", b""), "query")
        if found:
            await self._refuse(found, scope, receive, send)
            return
        content_type = Headers(scope=scope).get("content-type", "")
        is_json = _is_json(content_type)
        is_form = content_type.split(";", 1)[0].strip().lower() == "application/x-www-form-urlencoded"
        if not (is_json or is_form) or scope["path"].startswith(self.raw_bodies):
            await self.app(scope, receive, send)
            return

        chunks = []  # bounded: BodyLimit, outside this middleware, stops the body at the route's limit
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client left
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        found = json_problems(body) if is_json else form_problems(body, "body")
        if found:
            await self._refuse(found, scope, receive, send)
            return

        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)

    @staticmethod
    async def _refuse(found: list[ErrorItem], scope: Scope, receive: Receive, send: Send) -> None:
        await error_response(422, summary(found), found)(scope, receive, send)
