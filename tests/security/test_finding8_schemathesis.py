"""Finding 8 (schemathesis found 29 5xx in 27k requests, timestamps without a time zone, 422 bodies that did not
match the documented schema) and the sum of finding 4: schemathesis against /openapi.json, over every operation,
with an admin key and with an agent key of a tenant made here, on SQLite and on PostgreSQL.

A bounded, deterministic run (derandomized, a fixed number of examples per operation). Every response must be
below 500 and match the schema the document gives for its status code. Known ids (the tenant's widget, a seeded
conversation and escalation) are put into the paths that take them, so requests reach past the 404; ids whose
use would destroy the fixture (API keys, channel accounts) stay generated. Failures are collected over the
whole run and reported together, each with a curl command that reproduces it."""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance

from tests.admin import conftest as admin
from tests.admin.conftest import TenantKeys, seed_conversation
from tests.conftest import PG_ADMIN_URL, Graph

backend, client, tenant_a = admin.backend, admin.client, admin.tenant_a  # fixtures: an app and a tenant's keys
# Per operation and run; SWITCHBOARD_FUZZ_EXAMPLES=500 digs deeper locally (other examples, same determinism).
EXAMPLES_PER_OPERATION = int(os.environ.get("SWITCHBOARD_FUZZ_EXAMPLES", "25"))
CHECKS = [not_a_server_error, response_schema_conformance]


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A database of this test's own: the run creates accounts with generated ids (and credentials encrypted
    with this test's key) that must not meet other tests' rows."""
    import psycopg

    from app.db import migrate

    name = f"sb_test_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    migrate(url)
    yield url
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(autouse=True)
def _no_rate_limits(graph: Graph) -> Iterator[None]:
    """Fuzzing sends hundreds of failing requests from one address: with the limits on, most answers would be
    the (conforming) 429 and the routes behind it would go untested. Finding 6's tests cover the limits."""
    graph.configure(**{f"rate_{name}": "" for name in (
        "widget_sessions_per_ip", "widget_sends_per_ip", "widget_sends_per_visitor", "auth_failures_per_ip",
        "auth_failures_per_key", "webhook_failures_per_account", "llm_calls_per_tenant",
        "login_failures_per_account", "login_failures_per_ip")})
    logger = logging.getLogger()
    level = logger.level
    logger.setLevel(logging.CRITICAL)  # thousands of expected 4xx warnings would only slow the run down
    yield
    logger.setLevel(level)


def _known_ids(client: TestClient, keys: TenantKeys) -> dict[str, str]:
    from app.db import session_scope
    from app.models import Escalation

    conversation_id = seed_conversation(keys.id, contact="v_fuzz", escalate=True)
    with session_scope(cross_tenant="tests") as session:
        escalation_id = session.query(Escalation.id).filter(Escalation.conversation_id == conversation_id).scalar()
    return {"widget_id": keys.widget_id, "conversation_id": conversation_id, "escalation_id": escalation_id}


@pytest.mark.slow
@pytest.mark.parametrize("scope", ["admin", "agent"])
def test_finding8_schemathesis_no_5xx_no_schema_violations(client: TestClient, tenant_a: TenantKeys,
                                                            scope: str) -> None:
    ids = _known_ids(client, tenant_a)
    widget_token = client.post(f"/widget/v1/{tenant_a.widget_id}/sessions").json()["token"]
    api_key = tenant_a.admin if scope == "admin" else tenant_a.agent
    schema = schemathesis.openapi.from_asgi("/openapi.json", client.app)
    failures: dict[tuple[str, str], str] = {}
    calls = 0

    def run(operation: Any) -> None:
        # An event stream stays open by design: read what it sends in its first half second, then hang up.
        streams = any("text/event-stream" in (r.get("content") or {})
                      for r in operation.definition.raw.get("responses", {}).values())
        timeout = 0.5 if streams else 10

        @settings(max_examples=EXAMPLES_PER_OPERATION, derandomize=True, database=None, deadline=None,
                  suppress_health_check=list(HealthCheck))
        @given(case=operation.as_strategy())
        def example(case: Any) -> None:
            nonlocal calls
            calls += 1
            for name, value in ids.items():
                if case.path_parameters and name in case.path_parameters:
                    case.path_parameters[name] = value
            if case.query and "wait" in case.query:
                case.query["wait"] = 0  # a long-poll holds the request for up to 30 s by design
            token = widget_token if operation.path.startswith("/widget/") else api_key
            try:
                response = case.call(headers={"Authorization": f"Bearer {token}"}, timeout=timeout)
            except Exception as exc:  # the in-process transport re-raises what the app's 500 handler answered
                failures.setdefault((operation.label, type(exc).__name__),
                                    f"500 {type(exc).__name__}: {exc}\n  {case.as_curl_command()}")
                return
            try:
                case.validate_response(response, checks=CHECKS)
            except BaseException as exc:  # schemathesis reports check failures as an exception group
                title = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                failures.setdefault((operation.label, title),
                                    f"{response.status_code} {str(exc)[:600]}\n  {case.as_curl_command()}")

        example()

    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) > 30  # the admin, knowledge, review, widget and webhook routes are all in the document
    for operation in operations:
        run(operation)
    assert calls >= len(operations) * 5
    assert not failures, f"{len(failures)} distinct failures:\n\n" + "\n\n".join(
        f"{label}: {text}" for (label, _), text in sorted(failures.items()))
