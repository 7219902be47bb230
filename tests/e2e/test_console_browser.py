"""The review console in a real browser (Debian's Chromium driven by Playwright), against the embedded stack with
the orchestrator running: agents log in, escalations appear without a reload, and every decision reaches the
customer's web chat."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e.conftest import Stack, Visitor, replies
from tests.e2e.sse import serve_http

CHROMIUM = os.environ.get("SWITCHBOARD_TEST_CHROMIUM", "/usr/bin/chromium")
pytestmark = pytest.mark.skipif(
    shutil.which(CHROMIUM) is None and not os.path.exists(CHROMIUM),
    reason=f"Chromium not installed at {CHROMIUM} (.ci/run installs Debian's chromium package)",
)
PASSWORD = "correct horse battery staple"
EMAIL_TEXT = "Please send everything to my new address, jane.roe@example.com"


@pytest.fixture(scope="module")
def console(stack: Stack) -> Iterator[str]:
    """The console's server (HTTP only: the stack's app runs the orchestrator and the notifications in this
    process), and every answer of the example tenant held for review: a reply over 50 characters escalates
    with its draft (`reply_too_long`)."""
    from app.main import create_app

    admin = stack.headers(stack.northwind.admin)
    patched = stack.client.patch("/admin/v1/tenant", headers=admin, json={"policies": {"max_reply_chars": 50}})
    assert patched.status_code == 200, patched.text
    with serve_http(create_app(run_workers=False)) as base:
        yield base
    stack.client.patch("/admin/v1/tenant", headers=admin, json={"policies": {"max_reply_chars": None}})


def _person(slug: str, email: str, role: str) -> dict[str, str]:
    from app.accounts import service
    from app.db import session_scope

    with session_scope(cross_tenant="tests") as session:
        member, _ = service.add_member(session, service.tenant_operator(session, slug), email, role, PASSWORD)
    return {"email": member.email, "user_id": member.user_id}


def _launch(p: Any) -> Any:
    return p.chromium.launch(executable_path=CHROMIUM,
                             args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"])


def _log_in(page: Any, base: str, email: str) -> None:
    from playwright.sync_api import expect

    page.goto(f"{base}/console")
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    expect(page.locator("#live")).to_have_text("Live", timeout=30_000)


def _agent_replies(visitor: Visitor, count: int = 1) -> list[dict[str, Any]]:
    messages = visitor.wait_for(
        lambda ms: len([m for m in replies(ms) if (m["author"] or "").startswith("agent:")]) >= count)
    return [m for m in replies(messages) if (m["author"] or "").startswith("agent:")]


def test_an_agent_works_the_queue_live_in_the_console(stack: Stack, console: str, tmp_path) -> None:
    from playwright.sync_api import expect, sync_playwright

    dana = _person("northwind", "dana.console@example.com", "agent")
    with sync_playwright() as p:
        browser = _launch(p)
        page = browser.new_page(viewport={"width": 1366, "height": 768})
        _log_in(page, console, dana["email"])
        expect(page.locator("#who")).to_contain_text("dana.console@example.com")
        page.evaluate("window.__sameDocument = true")  # gone if the page reloads

        # 1. A customer writes; the escalation appears by itself, masked.
        first = stack.visitor(stack.northwind)
        first.send(EMAIL_TEXT, "console-1")
        item = page.locator("#queue-list .queue-item", has_text="my new address")
        expect(item).to_have_count(1, timeout=30_000)
        expect(item).to_contain_text("[EMAIL]")
        expect(item).not_to_contain_text("jane.roe@example.com")
        assert page.evaluate("window.__sameDocument") is True, "the page reloaded"

        # Reveal: the raw text, and an audit event naming Dana.
        item.get_by_role("button").click()
        customer = page.locator("#history li.in").last
        expect(customer).to_contain_text("[EMAIL]")
        customer.get_by_role("button", name="Reveal").click()
        expect(customer).to_contain_text("jane.roe@example.com")
        revealed = stack.client.get("/admin/v1/audit", headers=stack.headers(stack.northwind.admin),
                                    params={"action": "pii.revealed"}).json()["events"]
        assert revealed and revealed[0]["actor"] == f"user:{dana['user_id']}"

        # 2. Edit and send (this one has no draft): the agent's text reaches the customer's web chat.
        page.get_by_role("button", name="Edit and send").click()
        page.locator("#edit-text").fill("Thanks, Jane: we have updated your address.")
        page.get_by_role("button", name="Send this reply").click()
        expect(page.locator("#d-status")).to_contain_text("approved", timeout=30_000)
        expect(item).to_have_count(0, timeout=30_000)
        [edited] = _agent_replies(first)
        assert edited["text"] == "Thanks, Jane: we have updated your address."
        assert edited["author"] == f"agent:{dana['email']}"

        # 3. The conversation view of a drafted answer: passages with scores, the draft; approve sends the draft.
        second = stack.visitor(stack.northwind)
        second.send("What is your return policy?", "console-2")
        item = page.locator("#queue-list .queue-item", has_text="What is your return policy?")
        expect(item).to_have_count(1, timeout=30_000)
        expect(item).to_contain_text("reply_too_long")
        item.get_by_role("button").click()
        expect(page.locator("#detail-title")).to_have_text("Escalation: reply_too_long")
        expect(page.locator("#passages li").first).to_contain_text("eturn")
        expect(page.locator("#passages li .score").first).to_have_text(_score_pattern())
        expect(page.locator("#draft")).to_contain_text("30 days")
        page.screenshot(path=str(tmp_path / "console.png"))
        page.get_by_role("button", name="Approve and send").click()
        expect(page.locator("#d-status")).to_contain_text("approved", timeout=30_000)
        expect(item).to_have_count(0, timeout=30_000)
        [approved] = _agent_replies(second)
        assert "30 days" in approved["text"] and approved["author"] == f"agent:{dana['email']}"

        # 5. Take over, write as an agent, release.
        third = stack.visitor(stack.northwind)
        conversation_id = third.send("Do you ship to Canada?", "console-3")["conversation_id"]
        item = page.locator("#queue-list .queue-item", has_text="ship to Canada")
        expect(item).to_have_count(1, timeout=30_000)
        item.get_by_role("button").click()
        page.get_by_role("button", name="Take over").click()
        expect(page.locator("#d-mode")).to_contain_text("taken over by dana.console@example.com", timeout=30_000)
        page.get_by_label("Write to the customer as an agent").fill("Hi, Dana here: yes, we ship to Canada.")
        page.get_by_role("button", name="Send", exact=True).click()
        [written] = _agent_replies(third)
        assert written["text"] == "Hi, Dana here: yes, we ship to Canada."
        expect(page.locator("#history li.out").last).to_contain_text("Dana here", timeout=30_000)
        page.get_by_role("button", name="Release to the bot").click()
        expect(page.locator("#d-mode")).to_have_text("bot answering", timeout=30_000)
        conversation = stack.client.get(f"/review/v1/conversations/{conversation_id}",
                                        headers=stack.headers(stack.northwind.agent)).json()
        assert conversation["mode"] == "bot" and conversation["assigned_agent"] is None

        # 6. Reject with a reason: nothing more is sent.
        fourth = stack.visitor(stack.northwind)
        fourth.send("What is your return policy for gifts?", "console-4")
        item = page.locator("#queue-list .queue-item", has_text="return policy for gifts")
        expect(item).to_have_count(1, timeout=30_000)
        item.get_by_role("button").click()
        page.get_by_role("button", name="Reject").first.click()
        page.get_by_label("Why reject?").fill("duplicate of an email thread")
        page.locator("#reject-form").get_by_role("button", name="Reject").click()
        expect(page.locator("#d-status")).to_contain_text("rejected", timeout=30_000)
        assert not [m for m in replies(fourth.messages()) if (m["author"] or "").startswith("agent:")]

        assert page.evaluate("window.__sameDocument") is True, "the page reloaded"
        browser.close()


def test_a_viewer_sees_the_queue_without_decision_or_reveal_buttons(stack: Stack, console: str) -> None:
    from playwright.sync_api import expect, sync_playwright

    viewer = _person("northwind", "vic.console@example.com", "viewer")
    with sync_playwright() as p:
        browser = _launch(p)
        page = browser.new_page(viewport={"width": 1366, "height": 768})
        _log_in(page, console, viewer["email"])
        visitor = stack.visitor(stack.northwind)
        visitor.send("My email is vic.customer@example.com, where do you ship from?", "viewer-1")
        item = page.locator("#queue-list .queue-item", has_text="where do you ship from")
        expect(item).to_have_count(1, timeout=30_000)
        expect(item).to_contain_text("[EMAIL]")
        item.get_by_role("button").click()
        expect(page.locator("#history li.in").last).to_contain_text("[EMAIL]")
        expect(page.locator("#viewer-note")).to_be_visible()
        expect(page.locator("#actions")).to_be_hidden()
        expect(page.get_by_role("button", name="Approve and send")).to_be_hidden()
        expect(page.get_by_role("button", name="Reveal")).to_have_count(0)
        browser.close()


def test_the_queue_shows_the_mode_and_a_breached_sla_live(stack: Stack, console: str) -> None:
    """Human mode on the web chat with a 10 s first-response target: the bot acknowledges, the item shows the
    mode, and when nobody acts the running stack's relay and `sla` consumer send the holding message and the item
    turns `breached` without a reload."""
    from playwright.sync_api import expect, sync_playwright

    admin = stack.headers(stack.northwind.admin)
    holding = "Still with us? A person will reply shortly."
    patched = stack.client.patch("/admin/v1/tenant", headers=admin, json={"policies": {
        "channel_modes": {"webchat": "human"}, "sla_first_response_s": 10, "sla_holding_message": holding}})
    assert patched.status_code == 200, patched.text
    try:
        sam = _person("northwind", "sam.console@example.com", "agent")
        with sync_playwright() as p:
            browser = _launch(p)
            page = browser.new_page(viewport={"width": 1366, "height": 768})
            _log_in(page, console, sam["email"])
            visitor = stack.visitor(stack.northwind)
            visitor.send("Can a person check my warranty claim?", "sla-1")
            item = page.locator("#queue-list .queue-item", has_text="warranty claim")
            expect(item).to_have_count(1, timeout=30_000)
            expect(item).to_contain_text("human_mode")
            expect(item.locator(".badge.mode")).to_have_text("mode human")
            expect(item.locator(".sla")).to_have_text("SLA pending")
            item.get_by_role("button").click()
            expect(page.locator("#d-tenant-mode")).to_have_text("human")
            expect(item.locator(".sla.breached")).to_have_text("SLA breached", timeout=60_000)
            browser.close()
        texts = [m["text"] for m in visitor.wait_for(lambda ms: any(m["text"] == holding for m in replies(ms)))]
        assert texts.count(holding) == 1
    finally:
        stack.client.patch("/admin/v1/tenant", headers=admin, json={"policies": {
            "channel_modes": None, "sla_first_response_s": None, "sla_holding_message": None}})


def test_unsupported_sentences_of_a_draft_are_highlighted(stack: Stack, console: str) -> None:
    """The grounding check's unsupported sentences (when an escalation carries them) are marked in the draft;
    the marking is built from text nodes, so a draft can never inject markup."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = _launch(p)
        page = browser.new_page()
        page.goto(f"{console}/console")
        marked = page.evaluate("""() => {
            const draft = 'Returns take 30 days [1]. We offer a lifetime free-repair guarantee. <b>Thanks</b>';
            const box = document.createElement('p');
            box.append(window.SwitchboardConsole.highlight(draft, ['We offer a lifetime free-repair guarantee.']));
            return {marks: [...box.querySelectorAll('mark.unsupported')].map((m) => m.textContent),
                    text: box.textContent, bold: box.querySelectorAll('b').length};
        }""")
        browser.close()
    assert marked["marks"] == ["We offer a lifetime free-repair guarantee."]
    assert marked["text"].startswith("Returns take 30 days [1].") and marked["bold"] == 0


def _score_pattern() -> Any:
    import re

    return re.compile(r"^-?\d\.\d\d$")
