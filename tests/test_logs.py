"""app/logs.py: the console and JSON formats, `auto`'s choice, the context on each line, and scrubbing."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from app import logs


@pytest.fixture
def restore_root() -> Iterator[None]:
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    yield
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_console_lines_are_readable_and_name_their_context(restore_root: None) -> None:
    out = Terminal()
    logs.configure("auto", logging.INFO, stream=out)  # a terminal: console
    with logs.scope("tenant-a", "msg-1"):
        logging.getLogger("app.test").info("handled with key sb_0123abcd_secretpart and +1 415 555 0100")
    logging.getLogger("app.test").info("outside any message")
    first, second = out.getvalue().splitlines()
    assert " INFO app.test [tenant=tenant-a msg=msg-1]: handled with key sb_0123abcd_[REDACTED]" in first
    assert "secretpart" not in first and "555 0100" not in first
    assert second.endswith(" INFO app.test: outside any message")


def test_json_when_not_a_terminal_with_context_and_scrubbed_extras(restore_root: None) -> None:
    out = io.StringIO()
    logs.configure("auto", logging.INFO, stream=out)
    token = logs.start("req-1")
    logs.bind(tenant_id="tenant-a")
    logging.getLogger("app.test").warning("login failed for %s", "ann@example.org",
                                          extra={"authorization": "Bearer abc.def.ghi", "attempt": 3})
    logs.reset(token)
    record = json.loads(out.getvalue())
    assert record["level"] == "WARNING" and record["logger"] == "app.test" and record["attempt"] == 3
    assert (record["request_id"], record["tenant_id"]) == ("req-1", "tenant-a") and "message_id" not in record
    assert "ann@example.org" not in out.getvalue() and "abc.def.ghi" not in out.getvalue()


def test_configure_twice_keeps_one_handler(restore_root: None) -> None:
    logs.configure("json", stream=io.StringIO())
    logs.configure("console", stream=io.StringIO())
    assert sum(1 for h in logging.getLogger().handlers if getattr(h, "switchboard_handler", False)) == 1


def test_a_recording_span_lends_its_trace_id(restore_root: None) -> None:
    from opentelemetry import trace
    from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

    out = io.StringIO()
    logs.configure("json", stream=out)
    context = SpanContext(trace_id=0x1234, span_id=0x99, is_remote=False, trace_flags=TraceFlags(1))
    with trace.use_span(NonRecordingSpan(context)):
        logging.getLogger("app.test").warning("inside a span")
    logging.getLogger("app.test").warning("outside")
    inside, outside = (json.loads(line) for line in out.getvalue().splitlines())
    assert inside["trace_id"] == f"{0x1234:032x}" and "trace_id" not in outside
