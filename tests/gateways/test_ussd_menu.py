"""USSD numbered menus: set through the admin API (`policies.ussd_menu`), walked through the real USSD webhook
with its token. No orchestrator runs here: the "ask" option's question is stored and enqueued like any channel's
(its answer by the orchestrator is in tests/e2e/test_channels_via_admin_api.py)."""

from __future__ import annotations

import uuid
from typing import Any

from gateways.ussd.routes import MAX_CHARS
from tests.gateways.conftest import Gateway

MENU: dict[str, Any] = {
    "text": "Northwind",
    "options": [
        {"key": "1", "label": "Opening hours", "answer": "Mon-Sat 9:00-18:00."},
        {"key": "2", "label": "Ask a question", "ask": True, "prompt": "Type your question:"},
        {"key": "3", "label": "More", "text": "More help", "options": [
            {"key": "1", "label": "Returns", "answer": "Free returns within 30 days."},
            {"key": "2", "label": "Stores", "options": [
                {"key": "1", "label": "Nairobi", "answer": "Moi Avenue 12."}]},
        ]},
    ],
}
ROOT = "CON Northwind\n1. Opening hours\n2. Ask a question\n3. More"
MORE = "CON More help\n1. Returns\n2. Stores\n0. Back"


class Tenant:
    """A tenant with its admin key and one USSD account."""

    def __init__(self, gw: Gateway, service_code: str, menu: dict[str, Any] | None, **config: Any) -> None:
        from app.db import session_scope
        from app.tenants.service import create_tenant

        self.gw, self.code, self.token = gw, service_code, f"tok-{uuid.uuid4().hex[:8]}"
        with session_scope(cross_tenant="tests") as session:
            new = create_tenant(session, f"u-{uuid.uuid4().hex[:8]}")
            self.id, self.admin = new.tenant.id, {"Authorization": f"Bearer {new.admin_api_key}"}
        gw.account(self.id, "ussd", service_code, {"webhook_token": self.token},
                   config={"answer_wait_s": 0.1, "fallback": "Please call us.", **config})
        if menu is not None:
            assert self.set_menu(menu).status_code == 200

    def set_menu(self, menu: dict[str, Any] | None) -> Any:
        return self.gw.client.patch("/admin/v1/tenant", headers=self.admin, json={"policies": {"ussd_menu": menu}})

    def step(self, text: str, session: str = "S1") -> str:
        response = self.gw.client.post(f"/webhooks/ussd?token={self.token}", data={
            "sessionId": session, "serviceCode": self.code, "phoneNumber": "+254711000009", "text": text})
        assert response.status_code == 200, response.text
        assert len(response.text) <= MAX_CHARS
        return response.text


def test_ussd_menu_navigation_back_and_answer_leaves(gw: Gateway) -> None:
    t = Tenant(gw, "*500*1#", MENU)
    assert t.step("") == ROOT
    assert t.step("1") == "END Mon-Sat 9:00-18:00."
    assert t.step("3") == MORE
    assert t.step("3*1") == "END Free returns within 30 days."
    assert t.step("3*2") == "CON Stores\n1. Nairobi\n0. Back"  # a sub-menu's title defaults to its label
    assert t.step("3*2*1") == "END Moi Avenue 12."
    assert t.step("3*2*0") == MORE  # back one level
    assert t.step("3*2*0*0") == ROOT
    assert t.step("3*0*1") == "END Mon-Sat 9:00-18:00."  # back, then a root choice
    assert t.step("0") == ROOT  # nothing above the root
    assert gw.inbound(tenant_id=t.id) == []  # menu steps are not messages


def test_ussd_menu_invalid_option_shows_the_menu_again_with_a_short_error(gw: Gateway) -> None:
    t = Tenant(gw, "*500*2#", MENU)
    assert t.step("7") == "CON Invalid option.\n" + ROOT[len("CON "):]
    assert t.step("3*x") == "CON Invalid option.\n" + MORE[len("CON "):]
    # The aggregator keeps the invalid input in the text: the next choice continues from the same menu.
    assert t.step("3*x*1") == "END Free returns within 30 days."
    assert gw.inbound(tenant_id=t.id) == []


def test_ussd_menu_ask_option_sends_the_question_through_the_intake(gw: Gateway) -> None:
    t = Tenant(gw, "*500*3#", MENU)
    assert t.step("2", session="ASK1") == "CON Type your question:"
    assert t.step("2*0", session="ASK1") == ROOT  # back from the question prompt
    screen = t.step("2*0*2*Can I return *sale* items?", session="ASK1")
    assert screen == "END Please call us."  # no answer in time, no SMS account: nothing promised
    [question] = gw.inbound(tenant_id=t.id, channel="ussd")
    # Keyed by the step, the number of `*`-separated inputs (the question holds two `*`).
    assert (question.provider_message_id, question.text) == ("ASK1:6", "Can I return *sale* items?")
    assert [e["message_id"] for e in gw.bus_entries(t.id)] == [question.id]  # enqueued for the orchestrator
    # The aggregator retries the step: stored once.
    t.step("2*0*2*Can I return *sale* items?", session="ASK1")
    assert len(gw.inbound(tenant_id=t.id, channel="ussd")) == 1


def test_ussd_without_a_menu_keeps_the_prompt_and_a_reset_menu_restores_it(gw: Gateway) -> None:
    t = Tenant(gw, "*500*4#", None, prompt="Ask us anything")
    assert t.step("") == "CON Ask us anything"
    assert t.step("1") == "END Please call us."  # "1" is a question here
    assert t.set_menu(MENU).status_code == 200 and t.step("", session="S2") == ROOT
    assert t.set_menu(None).status_code == 200 and t.step("", session="S3") == "CON Ask us anything"


def test_ussd_menu_of_another_tenant_is_never_shown(gw: Gateway) -> None:
    a = Tenant(gw, "*500*5#", None, prompt="Alpha: ask us")
    b = Tenant(gw, "*500*6#", {"text": "Beta secret menu", "options": [
        {"key": "1", "label": "Beta only", "answer": "Beta's answer."}]})
    assert a.step("") == "CON Alpha: ask us"
    assert a.step("1") == "END Please call us."
    assert b.step("") == "CON Beta secret menu\n1. Beta only"
    # A's token on B's service code, and B's on A's, are refused.
    wrong = gw.client.post(f"/webhooks/ussd?token={a.token}", data={
        "sessionId": "X", "serviceCode": b.code, "phoneNumber": "+1", "text": "1"})
    assert wrong.status_code == 403
    # B's admin key changes B's menu only.
    assert a.set_menu(MENU).status_code == 200
    assert b.step("", session="S2") == "CON Beta secret menu\n1. Beta only"
    assert a.step("", session="S2") == ROOT


def errors(response: Any) -> str:
    assert response.status_code == 422, response.text
    return str(response.json()["detail"])


def test_ussd_menu_is_validated_when_saved(gw: Gateway) -> None:
    t = Tenant(gw, "*500*7#", MENU)
    long_labels = {"text": "Northwind", "options": [
        {"key": str(k), "label": "A rather long option label " + "x" * 20, "answer": "ok"} for k in range(1, 5)]}
    assert "the screen is" in errors(t.set_menu(long_labels)) and "at most 162 fit" in errors(t.set_menu(long_labels))
    too_long_answer = {"text": "N", "options": [{"key": "1", "label": "a", "answer": "x" * 179}]}
    assert "at most 178 characters" in errors(t.set_menu(too_long_answer))
    deep: dict[str, Any] = {"key": "1", "label": "l5", "answer": "bottom"}
    for level in range(4, 0, -1):
        deep = {"key": "1", "label": f"l{level}", "options": [deep]}
    assert "at most 4 levels deep" in errors(t.set_menu({"text": "N", "options": [deep]}))
    assert "exactly one of answer, ask (true) or options" in errors(
        t.set_menu({"text": "N", "options": [{"key": "1", "label": "a", "answer": "x", "ask": True}]}))
    assert "keys must be unique" in errors(t.set_menu({"text": "N", "options": [
        {"key": "1", "label": "a", "answer": "x"}, {"key": "1", "label": "b", "answer": "y"}]}))
    assert "ussd_menu.options.0.key" in errors(
        t.set_menu({"text": "N", "options": [{"key": "0", "label": "a", "answer": "x"}]}))  # 0 is back
    assert "ussd_menu.options" in errors(t.set_menu({"text": "N", "options": [
        {"key": str(k), "label": "a", "answer": "x"} for k in range(1, 11)]}))
    assert "ussd_menu.colour" in errors(t.set_menu({**MENU, "colour": "red"}))
    # Nothing refused was stored: the menu is the one saved first.
    assert t.step("") == ROOT


def test_ussd_menu_in_a_tenant_folder_is_checked_when_loaded(tmp_path: Any) -> None:
    import pytest

    from app.tenants.service import TenantError, TenantSpec

    toml = 'slug = "x"\n[policies.ussd_menu]\ntext = "Hi"\n[[policies.ussd_menu.options]]\nkey = "{key}"\n' \
           'label = "Hours"\nanswer = "9-5"\n'
    (tmp_path / "tenant.toml").write_text(toml.format(key="1"))
    assert TenantSpec.load(tmp_path).policies["ussd_menu"] == {
        "text": "Hi", "options": [{"key": "1", "label": "Hours", "answer": "9-5"}]}
    (tmp_path / "tenant.toml").write_text(toml.format(key="0"))
    with pytest.raises(TenantError, match=r"tenant.toml: policies.ussd_menu.options.0.key: String should match"):
        TenantSpec.load(tmp_path)
