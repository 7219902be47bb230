"""Logs without raw PII or credentials.

`install()` (called by `create_app` and the CLI's entry point) wraps the process's log record factory, so every
record from any logger (ours, SQLAlchemy's, httpx's, uvicorn's) is scrubbed once, when it is created, whichever
handler then writes it: its message with the arguments filled in, its exception text and its stack.

Scrubbed: API keys (`sb_<prefix>_<secret>` keeps its public prefix), bearer/basic credentials, OpenAI-style and
Telegram bot tokens, JWTs, `token=`/`secret=`/`password=`-style parameters, passwords in URLs, long hex strings
(signatures, key hashes), widget visitor ids and session tokens (`v_...`), the values PostgreSQL quotes in
constraint errors (`Key (...)=(...)`, `Failing row contains (...)`), and the PII kinds of
`app.assistant.pii.redact_pii`: emails, phone numbers, card numbers, IBANs, US SSNs. IP addresses are kept:
operators need them to read connection errors and abuse.

This is the safety net. The first rule stays: code never logs message text, and SQL statements are logged with
their parameters hidden (`hide_parameters=True` in app/db.py).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping
from typing import Any

from app.assistant.pii import redact_pii

REDACTED = "[REDACTED]"
PII_KINDS = frozenset({"EMAIL", "PHONE", "CREDIT_CARD", "IBAN", "US_SSN"})

_NAMES = "(?:token|secret|password|passwd|api_?key|signature|sig)"  # parameter names that hold credentials
_RULES: list[tuple[re.Pattern[str], str]] = [
    # PostgreSQL quotes the row's values in constraint errors: message text, contact ids.
    (re.compile(r"(\bKey \([^)\n]*\)=\()[^\n]*(\))"), rf"\1{REDACTED}\2"),
    (re.compile(r"(\bFailing row contains \()[^\n]*(\))"), rf"\1{REDACTED}\2"),
    (re.compile(r"(?i)\b(bearer|basic)(\s+|%20)[A-Za-z0-9._~+/=-]+"), rf"\1 {REDACTED}"),
    (re.compile(r"\bsb_([0-9a-f]{8})_[A-Za-z0-9_-]+"), rf"sb_\1_{REDACTED}"),
    (re.compile(r"\bsk-[A-Za-z0-9_-]{16,}"), f"sk-{REDACTED}"),
    (re.compile(r"\beyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+"), REDACTED),
    (re.compile(r"\b(bot)?\d{6,12}:[A-Za-z0-9_-]{30,}"), rf"\1{REDACTED}"),  # Telegram bot tokens (in URLs)
    # `token=...` in URLs and forms, `"token": "..."` in JSON and reprs.
    (re.compile(rf"(?i)\b([a-z_.-]*{_NAMES})=(?!\[REDACTED\])[^\s&\"',;)}}\]]+"), rf"\1={REDACTED}"),
    (re.compile(rf"(?i)([\"'][a-z_.-]*(?:{_NAMES}|authorization)[\"']\s*:\s*[\"'])[^\"']*"), rf"\1{REDACTED}"),
    (re.compile(r"(\b[a-z][a-z0-9+.-]*://[^/\s:@]+:)[^/\s@]+@"), rf"\1{REDACTED}@"),
    (re.compile(r"\b[0-9a-fA-F]{40,}\b"), REDACTED),
    # Widget visitor ids and session tokens: `v_<id>` and `v_<id>.<signature>`.
    (re.compile(r"(?<![A-Za-z0-9])v_[A-Za-z0-9_-]{4,}(?:[.:][A-Za-z0-9_.=-]+)?"), f"v_{REDACTED}"),
]


# Hex identifiers (request ids, uuids, hashes under 40 characters) are not PII, but a run of their digits can pass
# for a card or phone number: they are set aside while PII is looked for, then put back.
_HEX_ID = re.compile(r"(?<![0-9A-Za-z])(?=[0-9a-f]*[a-f])[0-9a-f]{16,39}(?![0-9A-Za-z])")


def scrub(text: str) -> str:
    """`text` with credentials, visitor ids and PII replaced by placeholders."""
    for pattern, replacement in _RULES:
        text = pattern.sub(replacement, text)
    ids: list[str] = []

    def set_aside(match: re.Match[str]) -> str:
        ids.append(match.group(0))
        return f"\x00{len(ids) - 1}\x00"

    text = redact_pii(_HEX_ID.sub(set_aside, text), PII_KINDS).text
    return re.sub(r"\x00(\d+)\x00", lambda m: ids[int(m.group(1))], text) if ids else text


def scrub_record(record: logging.LogRecord) -> None:
    """Scrub a record in place. Records with nothing to hide keep their message and arguments untouched; others
    keep their arguments' shape when scrubbing each one is enough (formatters such as uvicorn's read them), and
    otherwise become their scrubbed message."""
    try:
        message = record.getMessage()
    except Exception:  # a bad format string: logging reports it later; hide what it would print
        message = f"{record.msg} {record.args}"
        record.args = None
    clean = scrub(message)
    if clean != message:
        record.msg, record.args = _scrubbed_parts(record, clean)
    if record.exc_info and record.exc_info[0] is not None:
        # Formatters print `exc_text` when it is set instead of formatting the exception again.
        record.exc_text = scrub(logging.Formatter().formatException(record.exc_info))
    elif record.exc_text:
        record.exc_text = scrub(record.exc_text)
    if record.stack_info:
        record.stack_info = scrub(record.stack_info)


def _scrubbed_parts(record: logging.LogRecord, clean: str) -> tuple[Any, Any]:
    args = record.args
    if isinstance(record.msg, str) and args:
        parts: Any
        if isinstance(args, Mapping):
            parts = {k: _scrub_arg(v) for k, v in args.items()}
        else:
            parts = tuple(_scrub_arg(a) for a in args)
        try:
            if scrub(record.msg) % parts == clean:
                return scrub(record.msg), parts
        except (TypeError, ValueError, KeyError):
            pass
    return clean, None


def _scrub_arg(value: Any) -> Any:
    if isinstance(value, int | float) or value is None:
        return value
    return scrub(value if isinstance(value, str) else str(value))


def install() -> None:
    """Scrub every log record the process creates from now on. Idempotent."""
    previous = logging.getLogRecordFactory()
    if getattr(previous, "scrubs", False):
        return

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        scrub_record(record)
        return record

    scrubbing: Callable[..., logging.LogRecord] = factory
    scrubbing.scrubs = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(scrubbing)
