"""Replies pushed to a connected widget (Server-Sent Events) in embedded mode, the stream's authentication (a
visitor only ever receives its own conversation), and the widget page's use of it. Postgres + Redis:
test_widget_push_scale_out.py."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import Stack, Visitor, replies
from tests.e2e.sse import EventStream, serve_http


@pytest.fixture(scope="module")
def server(stack: Stack) -> Iterator[str]:
    from app.main import create_app

    # The stack's app runs the orchestrator threads in this process; this server only serves HTTP.
    with serve_http(create_app(run_workers=False)) as url:
        yield url


def _events_url(server: str, visitor: Visitor) -> str:
    return f"{server}/widget/v1/{visitor.widget}/events"


def _ticket(visitor: Visitor) -> str:
    response = visitor.client.post(f"/widget/v1/{visitor.widget}/events/tickets", headers=visitor.auth)
    assert response.status_code == 201, response.text
    return str(response.json()["ticket"])


def test_a_reply_is_pushed_to_a_connected_widget_without_polling(stack: Stack, server: str) -> None:
    visitor = stack.visitor(stack.northwind)
    with EventStream(_events_url(server, visitor), headers=visitor.auth) as events:
        assert events.next("ready").data == {"cursor": None}  # new visitor: no backlog
        visitor.send("What is your return policy?", "push-1")
        mine = events.next("message")
        assert (mine.data["direction"], mine.data["text"]) == ("in", "What is your return policy?")
        reply = events.next("message")
        assert reply.data["direction"] == "out" and "30 days" in reply.data["text"]
        assert {c["document"] for c in reply.data["citations"]}
    # EventSource reconnects with the last event id it saw: the stream resumes right after it.
    with EventStream(_events_url(server, visitor), headers={**visitor.auth, "Last-Event-ID": mine.id or ""}) as again:
        assert again.next("message").data["id"] == reply.data["id"]
        assert again.next("ready").data == {"cursor": reply.id}


def test_a_browser_opens_the_stream_with_a_ticket(stack: Stack, server: str) -> None:
    visitor = stack.visitor(stack.northwind)
    visitor.send("Do you ship to Canada?", "push-2")
    with EventStream(f"{_events_url(server, visitor)}?ticket={_ticket(visitor)}") as events:  # no header
        assert events.next("message").data["text"] == "Do you ship to Canada?"  # the backlog first


def test_the_long_poll_is_answered_by_the_reply(stack: Stack) -> None:
    visitor = stack.visitor(stack.northwind)
    sent = visitor.send("How long do returns take?", "push-3")
    own = visitor.messages()
    assert own[0]["id"] == sent["message_id"]  # the reply may already be there too: the poll starts after the question
    response = visitor.client.get(f"/widget/v1/{visitor.widget}/messages", headers=visitor.auth,
                                  params={"after": own[0]["created_at"], "wait": 30})
    assert response.status_code == 200, response.text
    assert [m["direction"] for m in response.json()["messages"]] == ["out"]


def _status(url: str, **kwargs: Any) -> tuple[int, str]:
    response = httpx.get(url, timeout=10, **kwargs)
    return response.status_code, response.json()["detail"]


def test_a_visitor_cannot_open_another_visitors_or_tenants_stream(stack: Stack, server: str) -> None:
    from app import keys
    from gateways.webchat.routes import TICKET_LABEL, _ticket_message

    visitor, neighbour, stranger = (stack.visitor(stack.northwind), stack.visitor(stack.northwind),
                                    stack.visitor(stack.other))
    other_widget = f"{server}/widget/v1/{stack.other.widget}/events"
    assert _status(other_widget, headers=visitor.auth)[0] == 401  # a session token is bound to its widget
    assert _status(other_widget, params={"ticket": _ticket(visitor)})[0] == 401  # so is a ticket
    assert _status(_events_url(server, visitor))[0] == 401  # no credentials at all

    own_contact, expires, signature = _ticket(visitor).split(".")
    neighbour_contact = _ticket(neighbour).split(".")[0]
    forged = f"{neighbour_contact}.{expires}.{signature}"  # a valid signature moved to another visitor
    assert _status(_events_url(server, visitor), params={"ticket": forged})[0] == 401
    past = int(time.time()) - 1
    expired = f"{own_contact}.{past}.{keys.sign(TICKET_LABEL, _ticket_message(visitor.widget, own_contact, past))}"
    status, detail = _status(_events_url(server, visitor), params={"ticket": expired})
    assert status == 401 and "expired" in detail
    for garbage in ("x", "..", "v_%C3%A9.1.abc", f"{own_contact}.{'9' * 40}.{signature}", "v_%ED%A0%80.1.x",
                    "v_%FF.1.x", f"{own_contact}.{expires}.%ED%A0%80"):  # the last three are not even UTF-8
        # refused as a bad ticket, or as undecodable input by the app's input checks: never a 5xx, never a stream
        assert _status(f"{_events_url(server, visitor)}?ticket={garbage}")[0] in (401, 422), garbage

    # Streams that are open see only their own conversation: the neighbour is answered first, so anything
    # leaking from it would arrive on the visitor's stream before the visitor's own message.
    with EventStream(_events_url(server, visitor), headers=visitor.auth) as mine, \
            EventStream(f"{server}/widget/v1/{stack.other.widget}/events", headers=stranger.auth) as theirs:
        mine.next("ready")
        theirs.next("ready")
        neighbour.send("Do you sell gift cards?", "n-1")
        neighbour.wait_for(lambda ms: bool(replies(ms)))
        visitor.send("What is your return policy?", "v-1")
        assert mine.next("message").data["text"] == "What is your return policy?"
        assert mine.next("message").data["direction"] == "out"
        stranger.send("hello there", "s-1")
        assert theirs.next("message").data["text"] == "hello there"


# ---------------------------------------------------------------------------------------------------------------
# The widget page in a real browser: EventSource when it can, the long-poll when it cannot.

CHROMIUM = os.environ.get("SWITCHBOARD_TEST_CHROMIUM", "/usr/bin/chromium")
needs_chromium = pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"Chromium not installed at {CHROMIUM}")


def _ask_in_browser(server: str, widget: str, *, without_event_source: bool) -> list[str]:
    """Ask in the widget page and wait for the cited answer; returns the widget API paths the page requested."""
    from playwright.sync_api import expect, sync_playwright

    requested: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--headless", "--no-sandbox", "--disable-gpu"])
        page = browser.new_page()
        if without_event_source:
            page.add_init_script("delete window.EventSource")
        page.on("request", lambda r: requested.append(r.url.split("/widget/v1/", 1)[-1]))
        page.goto(f"{server}/widget/{widget}")
        page.fill("#text", "What is your return policy?")
        page.keyboard.press("Enter")
        expect(page.locator(".msg.in")).to_have_text("What is your return policy?", timeout=30_000)
        answer = page.locator(".msg.out:not(.greeting)").first
        expect(answer).to_contain_text("30 days", timeout=30_000)
        expect(answer.locator(".cites")).to_contain_text("Sources:")
        browser.close()
    return requested


@needs_chromium
def test_the_widget_page_gets_its_reply_on_the_event_stream(stack: Stack, server: str) -> None:
    requested = _ask_in_browser(server, stack.northwind.widget, without_event_source=False)
    assert any("/events?ticket=" in path for path in requested), requested
    assert not any("/messages?" in path for path in requested), requested  # no long-poll


@needs_chromium
def test_without_event_source_the_widget_page_falls_back_to_the_long_poll(stack: Stack, server: str) -> None:
    requested = _ask_in_browser(server, stack.northwind.widget, without_event_source=True)
    assert any("/messages?wait=" in path for path in requested), requested
    assert not any("/events" in path for path in requested), requested


def test_an_idle_stream_sends_keep_alive_comments_and_still_delivers(
    stack: Stack, server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A quiet stream writes `: ping` (as FastAPI's streams do) so proxies and browsers keep it open, and the
    next message still arrives on it; the headers tell proxies not to buffer or cache."""
    from gateways.webchat import routes

    monkeypatch.setattr(routes, "SSE_PING_S", 0.2)
    visitor = stack.visitor(stack.northwind)
    with httpx.Client(timeout=httpx.Timeout(10, read=30)) as client, \
            client.stream("GET", _events_url(server, visitor), headers=visitor.auth) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert (response.headers["cache-control"], response.headers["x-accel-buffering"]) == ("no-cache", "no")
        lines = response.iter_lines()
        assert [next(lines) for _ in range(4)] == [
            "event: ready", 'data: {"cursor": null}', "retry: 2000", ""]
        assert [next(lines) for _ in range(4)] == [": ping", "", ": ping", ""]  # idle: 2 pings, nothing else
        visitor.send("Do you ship to Canada?", "push-ping")
        seen = []
        while not seen or seen[-1] != "":
            line = next(lines)
            if seen or line != ": ping":  # a ping may still come before the message
                seen.append(line)
        assert seen[0] == "event: message" and '"text":"Do you ship to Canada?"' in seen[1]
