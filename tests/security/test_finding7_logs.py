"""Finding 7 of the red-team run: raw PII and session ids in logs (SQL errors printed their parameters: message
text, visitor ids).

Every test captures what a real handler on the root logger writes (at DEBUG, so library logs are included) while
the failure happens through the code that logs it, then greps for the raw values."""

from __future__ import annotations

import base64
import io
import json
import logging
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tests.conftest import REPO, Graph

SECRET_TEXT = "my card is 4111 1111 1111 1111 and I live at jane.doe@example.com"
VISITOR = "v_Zm9yZ2V0LW1lLW5vdA"


@pytest.fixture
def captured() -> Iterator[Callable[[], str]]:
    """Everything logged from now on, as a plain handler on the root logger formats it (with tracebacks)."""
    from app.logscrub import install

    install()  # what create_app and the CLI do at process start
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield stream.getvalue
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database(request: pytest.FixtureRequest, graph: Graph) -> str:
    from app.db import migrate

    if request.param == "postgres":
        graph.configure(database_url=request.getfixturevalue("pg_url"))
    migrate()
    return str(request.param)


def test_finding7_sql_error_logs_no_message_text_or_visitor_id(database: str, captured) -> None:
    """A store that fails (here: a tenant that does not exist) is logged by the inbound batcher with the
    exception, whose SQL used to carry the message text and contact id as parameters."""
    from app.bus.memory import MemoryBus
    from app.conversations.batching import InboundBatcher
    from app.conversations.service import InboundRequest

    request = InboundRequest(tenant_id=uuid.uuid4().hex, channel="webchat", contact_external_id=VISITOR,
                             provider_message_id=f"{VISITOR}:c-1", text=SECRET_TEXT)
    with pytest.raises(Exception) as failure:
        InboundBatcher(MemoryBus()).accept_all([request])
    assert "[SQL parameters hidden due to hide_parameters=True]" in str(failure.value)
    output = captured()
    assert "inbound batch of 1 failed" in output and "INSERT INTO" in output  # the error and its SQL are logged
    for raw in (SECRET_TEXT, "4111 1111 1111 1111", "jane.doe@example.com", VISITOR):
        assert raw not in output


@pytest.mark.postgres
def test_finding7_postgres_constraint_detail_is_scrubbed(graph: Graph, pg_url: str, captured) -> None:
    """PostgreSQL quotes the row's values in its own error text (`Key (...)=(...)`), which `hide_parameters`
    cannot hide: the log filter does. (Through the row-level-security role Postgres leaves the values out itself,
    so this runs as the login that owns the tables, where it puts them in, as it does on a deployment without
    the role.)"""
    from sqlalchemy.exc import IntegrityError

    from app.db import session_scope
    from app.models import Contact
    from app.tenants.service import create_tenant

    graph.configure(database_url=pg_url, database_app_role="")
    with session_scope(cross_tenant="tests") as session:
        tenant_id = create_tenant(session, f"t-{uuid.uuid4().hex[:8]}").tenant.id
        session.add(Contact(tenant_id=tenant_id, channel="webchat", external_id=VISITOR))
    try:
        with session_scope(cross_tenant="tests") as session:
            session.add(Contact(tenant_id=tenant_id, channel="webchat", external_id=VISITOR))
    except IntegrityError as exc:
        assert VISITOR in str(exc)  # the database put it there
        logging.getLogger("app.conversations").exception("could not store contact: %s", exc)
    output = captured()
    assert "already exists" in output and "Key (tenant_id, channel, external_id)=([REDACTED])" in output
    assert VISITOR not in output


def test_finding7_failed_auth_logs_no_key(sb_home: Path, captured) -> None:
    from app.db import migrate
    from app.main import create_app

    migrate()
    wrong = f"sb_0badc0de_{uuid.uuid4().hex}{uuid.uuid4().hex}"
    with TestClient(create_app(run_workers=False)) as client:
        response = client.get("/admin/v1/tenant", headers={"Authorization": f"Bearer {wrong}"})
    assert response.status_code == 401
    output = captured()
    assert "refused an unknown API key (prefix '0badc0de')" in output
    assert wrong not in output and wrong[12:] not in output


def test_finding7_scrubber_covers_message_arguments_and_exception_text(captured) -> None:
    """The net under everything else: credentials, session tokens, visitor ids and PII are replaced wherever a
    record carries them, and a record with nothing to hide keeps its arguments (formatters such as uvicorn's
    access log read them)."""
    claims = base64.urlsafe_b64encode(json.dumps({"sub": VISITOR, "aud": "widget:w_test"}).encode()).decode()
    token = f"eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.{claims.rstrip('=')}.{uuid.uuid4().hex}"  # a widget session token
    key = f"sb_1a2b3c4d_{uuid.uuid4().hex}"
    log = logging.getLogger("gateways")
    log.warning("send from %s with token %s: %s", VISITOR, token, SECRET_TEXT)
    log.info("headers {'authorization': 'Bearer %s'}", key)
    log.info("callback %s?token=%s&from=%s", "/webhooks/ussd", "ussd-secret-token", "+44 20 7946 0958")
    try:
        raise ValueError(f"provider rejected {VISITOR} at +1 415 555 0100 with key {key}")
    except ValueError:
        log.exception("delivery failed")
    output = captured()
    for raw in (VISITOR, token, SECRET_TEXT, "4111 1111 1111 1111", "jane.doe@example.com", key,
                key.split("_")[2], "ussd-secret-token", "+44 20 7946 0958", "+1 415 555 0100"):
        assert raw not in output, raw
    assert "sb_1a2b3c4d_[REDACTED]" in output and "v_[REDACTED]" in output
    assert "[CREDIT_CARD]" in output and "[EMAIL]" in output and "[PHONE]" in output
    assert "ValueError: provider rejected" in output  # the traceback is still there, scrubbed

    record = logging.getLogger("uvicorn.access").makeRecord(
        "uvicorn.access", logging.INFO, __file__, 1, '%s - "%s %s HTTP/%s" %d',
        ("127.0.0.1:5000", "GET", "/healthz", "1.1", 200), None)
    assert record.args == ("127.0.0.1:5000", "GET", "/healthz", "1.1", 200)
    record = logging.getLogger("uvicorn.access").makeRecord(
        "uvicorn.access", logging.INFO, __file__, 1, '%s - "%s %s HTTP/%s" %d',
        ("127.0.0.1:5000", "POST", "/webhooks/ussd?token=abc", "1.1", 200), None)
    assert record.args == ("127.0.0.1:5000", "POST", "/webhooks/ussd?token=[REDACTED]", "1.1", 200)


def test_finding7_cli_entry_point_installs_the_scrubber(tmp_path: Path) -> None:
    script = (
        "import logging, sys\n"
        "from app.cli import main\n"
        "sys.argv = ['switchboard', '--help']\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        f"logging.getLogger('workers').warning('visitor %s wrote %r', {VISITOR!r}, {SECRET_TEXT!r})\n"
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120,
                          env={"SWITCHBOARD_HOME": str(tmp_path), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    assert "visitor v_[REDACTED] wrote" in done.stderr
    assert VISITOR not in done.stderr and "jane.doe@example.com" not in done.stderr


def test_finding7_hex_ids_are_not_mistaken_for_card_numbers() -> None:
    """A request id is not PII, even when its first 16 hex digits happen to be a Luhn-valid number; the card
    number beside it is still scrubbed."""
    from app.logscrub import scrub

    request_id = "4111111111111111e8fcb67f1cf0e4a1"
    out = scrub(f"unhandled error (request id {request_id}); customer wrote 4111 1111 1111 1111")
    assert request_id in out
    assert "4111 1111 1111 1111" not in out and "[CREDIT_CARD]" in out
