"""Reading what providers send without ever failing on it.

Providers retry any delivery not answered 2xx, for days. So a delivery that is signed but can never be read
(not JSON, a list where an object belongs, a missing id) must not become a 4xx or 5xx: the gateway acknowledges
it and records it in the tenant's dead-letter stream with the reason (`Parsed.dead`, written by
`gateways.common.ingest_async`). Parsers read each item of a delivery inside `reading(...)`, so one bad item costs
only itself; whatever else the delivery holds is still stored and answered.

Text is cleaned once, where every channel's parsed items are stored (`clean`): NUL (which Postgres refuses) and
unpaired surrogates (which UTF-8 cannot encode) are removed, so such a message is stored and answered instead of
failing on every redelivery.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

# What parsing a payload of the wrong shape raises: a string where an object belongs (AttributeError), a
# number where a string belongs (TypeError), a missing key, an empty list, a value our models refuse
# (pydantic's ValidationError is a ValueError), nesting deeper than the JSON parser's stack.
SHAPE_ERRORS = (AttributeError, TypeError, ValueError, KeyError, IndexError, RecursionError)
MAX_REASON_CHARS = 500

# Any surrogate left in a Python str is unpaired (json.loads joins valid pairs into one code point).
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def clean_text(text: str) -> str:
    """`text` without NUL and unpaired surrogates."""
    return _UNSTORABLE.sub("", text)


def clean(value: Any) -> Any:
    """`clean_text` applied to every string (keys too) of a JSON-like value; NaN and infinities (which
    Python's JSON parser accepts and Postgres refuses in a JSON column) become null."""
    if isinstance(value, str):
        return clean_text(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {clean(k): clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [clean(v) for v in value]
    return value


class Malformed(ValueError):
    """Raised by a parser for a payload it can never read; the message says what is wrong."""


@dataclass(frozen=True)
class Unreadable:
    """One signed item (or a whole delivery) that cannot be read: dead-lettered with `reason`."""

    reason: str
    payload: str  # the item as received: the raw body, or the item's JSON


def as_payload(item: Any) -> str:
    """An item as text for its dead letter: raw bytes decoded (undecodable bytes escaped), anything else as
    ASCII JSON (so NUL and lone surrogates survive as escapes)."""
    if isinstance(item, bytes):
        return item.decode("utf-8", "backslashreplace")
    try:
        return json.dumps(item)
    except (TypeError, ValueError, RecursionError):
        return repr(item)


def describe(what: str, exc: BaseException) -> str:
    if isinstance(exc, Malformed):
        reason = f"{what}: {exc}"
    else:
        reason = f"{what} has an unexpected shape ({type(exc).__name__}: {exc})"
    return reason[:MAX_REASON_CHARS]


@contextmanager
def reading(dead: list[Unreadable], what: str, item: Any) -> Iterator[None]:
    """Parse one item inside this block: if its shape is wrong, the block stops there and the item is added to
    `dead` (a `Parsed.dead`) with the reason, instead of failing the whole delivery."""
    try:
        yield
    except SHAPE_ERRORS as exc:
        dead.append(Unreadable(describe(what, exc), as_payload(item)))


def json_object(raw: bytes, what: str) -> dict[str, Any]:
    """The body as a JSON object; `Malformed` saying why when it is not one."""
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise Malformed(f"the body is not JSON ({exc})") from exc
    if not isinstance(body, dict):
        raise Malformed(f"the body is a JSON {type(body).__name__}, not {what}")
    return body


def scoped_key(owner: str, key: str) -> str:
    """A dedupe key for `key`, an id chosen by `owner` (a visitor's own message id), unique per owner.

    Plain `owner:key` when the owner holds no ':' (every id Switchboard issues), so keys already stored keep
    matching; such a key splits back at its first ':'. Any other owner gets a digest of both parts, which holds
    no ':' and so can equal no plain key: `v_a:b` + `c` and `v_a` + `b:c` no longer share `v_a:b:c`."""
    if ":" not in owner:
        return f"{owner}:{key}"
    pair = json.dumps([owner, key]).encode()
    return "sha256-" + hashlib.sha256(pair).hexdigest()


def items(container: dict[str, Any], key: str) -> list[Any]:
    """`container[key]` when it is a list, [] when it is absent or empty; `Malformed` for anything else."""
    value = container.get(key)
    if value is None or value == "":
        return []
    if not isinstance(value, list):
        raise Malformed(f"'{key}' is a {type(value).__name__}, not a list")
    return value


def as_id(value: Any) -> str | None:
    """A provider id as text: a non-empty string or an integer; None for anything else (absent, an object...)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int) or (isinstance(value, str) and value):
        return str(value)
    return None
