"""Names and addresses through the optional `[ner]` extra, end to end: refused with the install command where the
extra is missing, masked before the LLM and restored in the reply where it is on (a fake recognizer stands in for
Presidio + spaCy; the LLM is the local OpenAI-compatible server), escalated (never sent unmasked, never dropped)
when a tenant has it on and the model cannot load."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from app import bootstrap, operations
from app.assistant.pii_ner import NerUnavailable, install_hint
from app.crypto import encrypt_json
from app.db import session_scope
from app.models import Escalation, Tenant
from tests.e2e.conftest import EXAMPLE, Stack, Visitor, replies
from tests.fakes.ner import FakeRecognizer
from tests.fakes.openai_server import first_sentence, prompt_passages

NAME = "Jane Doe"
STREET = "3744 Retreat Avenue"


@pytest.fixture(scope="module")
def ner_tenant(stack: Stack) -> dict[str, Any]:
    created = operations.create_tenant("northwind-ner", folder=EXAMPLE)
    operations.ingest(bootstrap.container(), "northwind-ner", [EXAMPLE / "knowledge" / "faq.csv"])
    return created


@contextmanager
def ner_loading(load: Callable[[str], Any]) -> Iterator[None]:
    """The running orchestrator's PiiNer (handed to it when the stack started, so replacing the container's
    service would not reach it) loads with `load` for the block; its own loader and state come back after."""
    ner = bootstrap.container().pii_ner
    saved = ner._load, ner._recognizer
    ner._load, ner._recognizer = load, None
    try:
        yield
    finally:
        ner._load, ner._recognizer = saved


@pytest.fixture
def recognizer() -> Iterator[FakeRecognizer]:
    """The PiiNer loads the fake instead of Presidio; the real loader comes back afterwards."""
    fake = FakeRecognizer([NAME], [STREET])
    with ner_loading(lambda model: fake):
        yield fake


def _set_policies(server: Any, **policies: Any) -> None:
    with session_scope(cross_tenant="tests") as session:
        tenant = session.scalars(select(Tenant).where(Tenant.slug == "northwind-ner")).one()
        tenant.policies = {**(tenant.policies or {}), **policies,
                           "llm": {"base_url": server.base_url, "model": "test-model", "max_retries": 0}}
        tenant.llm_api_key_encrypted = encrypt_json({"api_key": server.api_key})


def _ask(stack: Stack, tenant: dict[str, Any], text: str, mid: str) -> tuple[dict[str, Any], str]:
    response = stack.client.post(f"/widget/v1/{tenant['widget_id']}/sessions", json={})
    visitor = Visitor(stack.client, tenant["widget_id"], response.json()["token"])
    sent = visitor.send(text, mid)
    reply = replies(visitor.wait_for(lambda ms: bool(replies(ms)), timeout=60))[0]
    return reply, sent["message_id"]


def test_turning_it_on_without_the_extra_is_refused_with_the_install_command(stack, ner_tenant) -> None:
    admin = stack.headers(ner_tenant["admin_api_key"])
    response = stack.client.patch("/admin/v1/tenant", json={"policies": {"pii_ner": True}}, headers=admin)
    assert response.status_code == 422, response.text
    assert "pip install 'switchboard[ner]'" in response.text and "pii_ner" in response.text
    tenant = stack.client.get("/admin/v1/tenant", headers=admin).json()
    assert "pii_ner" not in tenant["policies"]  # nothing half-applied
    assert stack.client.patch("/admin/v1/tenant", json={"policies": {"pii_ner": False}},
                              headers=admin).status_code == 200


def test_names_and_streets_are_masked_before_the_llm_and_restored_in_the_reply(
        stack, ner_tenant, recognizer, openai_server) -> None:
    admin = stack.headers(ner_tenant["admin_api_key"])
    response = stack.client.patch("/admin/v1/tenant", json={"policies": {"pii_ner": True}}, headers=admin)
    assert response.status_code == 200, response.text
    _set_policies(openai_server)
    openai_server.reply_with(
        lambda body: f"Thanks [PERSON_1], noted [ADDRESS_1]. {first_sentence(prompt_passages(body)[0])} [1]")
    reply, _ = _ask(stack, ner_tenant, f"Hi, I'm {NAME} of {STREET}, do gift cards expire?", "n1")
    prompt = "\n".join(m["content"] for m in openai_server.completion_requests[-1].messages)
    assert NAME not in prompt and STREET not in prompt
    assert "[PERSON_1]" in prompt and "[ADDRESS_1]" in prompt
    assert reply["text"].startswith(f"Thanks {NAME}, noted {STREET}.")
    assert recognizer.calls >= 1


def test_a_tenant_with_it_on_where_the_model_cannot_load_is_escalated_not_sent_unmasked(
        stack, ner_tenant, openai_server) -> None:
    def missing(model: str) -> FakeRecognizer:
        raise NerUnavailable(install_hint(model))

    with ner_loading(missing):
        _set_policies(openai_server, pii_ner=True)  # set before the model went away
        sent_before = len(openai_server.completion_requests)
        reply, message_id = _ask(stack, ner_tenant, f"I'm {NAME}, do gift cards expire?", "n2")
    assert len(openai_server.completion_requests) == sent_before  # nothing went to the LLM
    with session_scope(cross_tenant="tests") as session:
        escalation = session.scalars(select(Escalation).where(Escalation.message_id == message_id)).one()
        assert escalation.reason == "pii_ner_unavailable"
    assert reply["text"]  # the customer got the holding notice


def test_a_worker_started_with_it_on_and_no_extra_stops_with_the_install_command(stack, tmp_path: Path) -> None:
    import threading

    from app.bootstrap import Container
    from app.bus.memory import MemoryBus
    from app.workers_runtime import build_consumers
    from tests.conftest import settings_for

    settings = settings_for(tmp_path, pii_ner=True, pii_ner_model="en_core_web_no_such_model")
    with pytest.raises(NerUnavailable, match="switchboard\\[ner\\]"):
        build_consumers(Container(settings, bus=MemoryBus()), MemoryBus(), threading.Event())
