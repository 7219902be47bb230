"""Structured logs: one JSON object a line for machines, a readable line on a terminal, and on each record the
request id, tenant and message id it belongs to, where known.

`LOG_FORMAT`: `json`, `console`, or `auto` (the default: console on a terminal, JSON otherwise). `LOG_LEVEL`
sets the root level. The context comes from contextvars: the HTTP middleware (app/metrics.py `Observe`) starts a
request's with its id, authentication and `accept_inbound` add the tenant and message id, and the orchestrator
and dispatcher set the tenant and message id of the message they handle (`scope`).

app/logscrub.py still scrubs every record when it is created; the JSON formatter scrubs the fields a caller passes
with `extra=` as well, so nothing reaches the output unscrubbed.
"""

from __future__ import annotations

import logging
import re
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar, Token
from typing import IO, Any, Literal

from opentelemetry import trace
from pythonjsonlogger.json import JsonFormatter

from app.logscrub import scrub

Format = Literal["auto", "json", "console"]
FIELDS = ("request_id", "tenant_id", "message_id")
_SANE_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")


class LogContext:
    """Mutable on purpose: FastAPI runs dependencies and endpoints in copies of the request's context, so the
    tenant an auth dependency learns is written into this shared object rather than a new context variable."""

    __slots__ = FIELDS

    def __init__(self, request_id: str | None = None, tenant_id: str | None = None,
                 message_id: str | None = None) -> None:
        self.request_id = request_id
        self.tenant_id = tenant_id
        self.message_id = message_id


_current: ContextVar[LogContext | None] = ContextVar("switchboard_log_context", default=None)


def request_id_from(scope: Any) -> str:
    """The caller's X-Request-ID when it is a short plain token (a proxy's), else a new one."""
    for name, value in scope.get("headers", ()):
        if name == b"x-request-id":
            given = value.decode("latin-1")
            if _SANE_ID.fullmatch(given):
                return given
            break
    return uuid.uuid4().hex


def start(request_id: str) -> Token[LogContext | None]:
    return _current.set(LogContext(request_id))


def reset(token: Token[LogContext | None]) -> None:
    _current.reset(token)


def current() -> LogContext | None:
    return _current.get()


def bind(*, tenant_id: str | None = None, message_id: str | None = None) -> None:
    """Add what became known to the current request's or message's context (nothing outside one)."""
    ctx = _current.get()
    if ctx is None:
        return
    if tenant_id is not None:
        ctx.tenant_id = tenant_id
    if message_id is not None:
        ctx.message_id = message_id


@contextmanager
def scope(tenant_id: str, message_id: str | None = None) -> Iterator[None]:
    """The context of one message a worker handles (orchestrator, dispatcher)."""
    token = _current.set(LogContext(None, tenant_id, message_id))
    try:
        yield
    finally:
        _current.reset(token)


class ContextFilter(logging.Filter):
    """Copies the current context onto each record the handler writes (`%(request_id)s` etc.), and the trace and
    span ids of the OpenTelemetry span in progress, when there is one (tracing is on: app/tracing.py)."""

    def filter(self, record: logging.LogRecord) -> bool:
        ctx = _current.get()
        for name in FIELDS:
            if not hasattr(record, name):
                setattr(record, name, getattr(ctx, name) if ctx is not None else None)
        span = trace.get_current_span().get_span_context()
        record.trace_id = format(span.trace_id, "032x") if span.is_valid else None
        record.span_id = format(span.span_id, "016x") if span.is_valid else None
        return True


class JsonLogFormatter(JsonFormatter):
    def __init__(self) -> None:
        super().__init__("{asctime}{levelname}{name}{message}", style="{",
                         rename_fields={"asctime": "time", "levelname": "level", "name": "logger"})

    def process_log_record(self, log_record: dict[str, Any]) -> dict[str, Any]:
        # The message, exception and stack were scrubbed when the record was made; `extra=` fields were not.
        for key, value in list(log_record.items()):
            if value is None and (key in FIELDS or key in ("trace_id", "span_id")):
                del log_record[key]
            elif isinstance(value, str) and key not in ("message", "exc_info", "stack_info", "time"):
                log_record[key] = scrub(value)
        return log_record


class ConsoleFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s%(context)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        parts = [f"{short}={value}" for short, name in (("req", "request_id"), ("tenant", "tenant_id"),
                                                          ("msg", "message_id"), ("trace", "trace_id"))
                 if (value := getattr(record, name, None))]
        record.context = f" [{' '.join(parts)}]" if parts else ""
        return super().format(record)


_HANDLER_MARK = "switchboard_handler"


def configure(fmt: Format = "auto", level: int | str = logging.INFO, stream: IO[str] | None = None) -> logging.Handler:
    """Our one handler on the root logger (replacing the one an earlier call installed). Idempotent."""
    from app.logscrub import install as scrub_logs

    scrub_logs()
    stream = stream if stream is not None else sys.stderr
    if fmt == "auto":
        fmt = "console" if getattr(stream, "isatty", lambda: False)() else "json"
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonLogFormatter() if fmt == "json" else ConsoleFormatter())
    handler.addFilter(ContextFilter())
    setattr(handler, _HANDLER_MARK, True)
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, _HANDLER_MARK, False)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper() if isinstance(level, str) else level)
    return handler
