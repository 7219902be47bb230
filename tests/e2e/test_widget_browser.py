"""The embeddable widget page in a real browser (Debian's Chromium driven by Playwright)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from tests.e2e.conftest import Stack

CHROMIUM = os.environ.get("SWITCHBOARD_TEST_CHROMIUM", "/usr/bin/chromium")
pytestmark = pytest.mark.skipif(
    shutil.which(CHROMIUM) is None and not os.path.exists(CHROMIUM),
    reason=f"Chromium not installed at {CHROMIUM} (.ci/run installs Debian's chromium package)",
)


@pytest.fixture
def base_url(stack: Stack) -> Iterator[str]:
    import uvicorn

    from app.main import create_app

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # The stack's app already runs the orchestrator threads in this process; this server only serves HTTP.
    server = uvicorn.Server(uvicorn.Config(create_app(run_workers=False), host="127.0.0.1", port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


def test_visitor_asks_in_the_widget_and_sees_a_cited_answer(stack: Stack, base_url: str, tmp_path) -> None:
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        page = browser.new_page()
        page.goto(f"{base_url}/widget/{stack.northwind.widget}")
        expect(page.locator("header")).to_have_text("Northwind Outfitters")
        expect(page.locator(".greeting")).to_contain_text("I'm Ava")
        page.fill("#text", "What is your return policy?")
        page.keyboard.press("Enter")
        expect(page.locator(".msg.in")).to_have_text("What is your return policy?")
        answer = page.locator(".msg.out:not(.greeting)").first
        expect(answer).to_contain_text("30 days", timeout=30_000)
        expect(answer.locator(".cites")).to_contain_text("Sources:")
        page.screenshot(path=str(tmp_path / "widget.png"))

        page.reload()  # the session survives a reload: the conversation is still there
        expect(page.locator(".msg.out:not(.greeting)").first).to_contain_text("30 days", timeout=30_000)
        browser.close()


def test_widget_renews_an_expired_session_and_keeps_the_conversation(stack: Stack, base_url: str) -> None:
    """The server issues the visitor's id and an expiring token; a page holding an expired one (within the grace
    period) renews it for the same contact, and a page holding one past its grace starts a new visitor."""
    from playwright.sync_api import expect, sync_playwright

    from app.db import session_scope
    from app.models import Tenant
    from gateways.webchat import sessions

    widget = stack.northwind.widget
    visitor = stack.visitor(stack.northwind)
    visitor.send("What is your return policy?", "renew-1")
    visitor.wait_for(lambda ms: any(m["direction"] == "out" for m in ms))
    contact = visitor.client.post(f"/widget/v1/{widget}/sessions", headers=visitor.auth).json()["contact_id"]
    with session_scope(cross_tenant="tests") as db:
        tenant_id = db.query(Tenant.id).filter(Tenant.slug == "northwind").scalar()
    now = datetime.now(UTC)
    expired = sessions.issue(widget, tenant_id, contact, now=now - timedelta(days=2)).token
    stale = sessions.issue(widget, tenant_id, contact, now=now - timedelta(days=30)).token
    store = f"switchboard:{widget}"

    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        page = browser.new_page()
        page.goto(f"{base_url}/widget/{widget}")
        # The page opens its event stream at once, starting a session of its own: let it store that first, or it
        # would overwrite the expired token planted below.
        page.wait_for_function("key => localStorage.getItem(key)", arg=store)
        page.evaluate("([key, value]) => localStorage.setItem(key, value)",
                      [store, json.dumps({"contact_id": contact, "token": expired, "renew_at": 0})])
        page.reload()
        expect(page.locator(".msg.out:not(.greeting)").first).to_contain_text("30 days", timeout=30_000)
        held = json.loads(page.evaluate("key => localStorage.getItem(key)", store))
        assert held["contact_id"] == contact and held["token"] != expired

        # Past the grace period the token cannot be renewed: the page starts over as a new visitor.
        page.evaluate("([key, value]) => localStorage.setItem(key, value)",
                      [store, json.dumps({"contact_id": contact, "token": stale, "renew_at": 0})])
        page.reload()
        page.wait_for_function("([key, old]) => JSON.parse(localStorage.getItem(key) || 'null')?.contact_id "
                               "&& JSON.parse(localStorage.getItem(key)).contact_id !== old", arg=[store, contact])
        expect(page.locator(".msg.in")).to_have_count(0)
        browser.close()
