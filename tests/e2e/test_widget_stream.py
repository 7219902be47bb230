"""Streamed replies on the widget's event stream (embedded): drafts while the LLM writes, then the checked,
stored reply; a withdrawn draft when the checks escalate; the long-poll never sees drafts; the widget page shows
the draft before the final message. The fake LLM holds its stream at fixed points until the test lets it go on,
so nothing here depends on timing. Postgres + Redis: test_widget_stream_scale_out.py."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import select

from app import operations
from app.assistant.drafts import DRAFT_EVERY_CHUNKS
from app.bootstrap import container
from app.db import session_scope
from app.models import Escalation, Message, Tenant
from tests.e2e.conftest import EXAMPLE, Stack, Visitor
from tests.e2e.sse import EventStream, serve_http
from tests.fakes.openai_server import FakeOpenAIServer

# Grounded in the FAQ's gift-card entry (passage 1), so the checks let it go out on its own.
ANSWER = ("Gift cards never expire, have no fees and can be used online and in stores [1]. Digital gift cards "
          "from $25 to $500 are delivered by email on the date you choose [1].")
BANNED = ("Gift cards never expire [1]. You can use them online and in every one of our stores, and as a thank "
          "you every card comes with a lifetime warranty on whatever you buy with it [1].")


@pytest.fixture(scope="module")
def streaming_tenant(stack: Stack) -> dict[str, Any]:
    created = operations.create_tenant("northwind-stream", folder=EXAMPLE)
    report = operations.ingest(container(), "northwind-stream", [EXAMPLE / "knowledge" / "faq.csv"])
    assert report["chunks"] > 30
    return created


@pytest.fixture(scope="module")
def server(stack: Stack) -> Iterator[str]:
    from app.main import create_app

    # The stack's app runs the orchestrator threads in this process; this server only serves HTTP.
    with serve_http(create_app(run_workers=False)) as url:
        yield url


def point_llm_at(slug: str, llm: FakeOpenAIServer, **policies: Any) -> None:
    from app.crypto import encrypt_json

    with session_scope(cross_tenant="tests") as session:
        tenant = session.scalars(select(Tenant).where(Tenant.slug == slug)).one()
        tenant.policies = {**tenant.policies, **policies,
                           "llm": {"base_url": llm.base_url, "model": "test-model", "timeout_s": 30}}
        tenant.llm_api_key_encrypted = encrypt_json({"api_key": llm.api_key})


def watch_a_streamed_reply(events: EventStream, llm: FakeOpenAIServer) -> tuple[list[Any], Any]:
    """The events after the visitor's own message, the fake LLM held after DRAFT_EVERY_CHUNKS and twice that
    many pieces: at least one draft arrives during each hold (a draft goes out at the latest every
    DRAFT_EVERY_CHUNKS pieces), and each hold is released only once one has. Returns (drafts, what ended them)."""
    drafts: list[Any] = []
    for _ in range(2):
        event = events.next(timeout=60)
        while event.event == "draft" and drafts and len(event.data["text"]) <= len(drafts[-1].data["text"]):
            drafts.append(event)  # an older hold's draft arriving late: not the one this hold guarantees
            event = events.next(timeout=60)
        if event.event != "draft":
            return drafts, event  # the checks stopped the drafts early (a withdrawal)
        drafts.append(event)
        llm.resume_stream()
    event = events.next(timeout=60)
    while event.event == "draft":
        drafts.append(event)
        event = events.next(timeout=60)
    return drafts, event


def test_drafts_stream_to_the_widget_and_the_stored_reply_replaces_them(
    stack: Stack, streaming_tenant: dict[str, Any], server: str, openai_server: FakeOpenAIServer
) -> None:
    openai_server.reply(ANSWER)
    openai_server.pause_stream_after(DRAFT_EVERY_CHUNKS, 2 * DRAFT_EVERY_CHUNKS)
    point_llm_at("northwind-stream", openai_server)
    visitor = _visitor(stack, streaming_tenant["widget_id"])
    url = f"{server}/widget/v1/{visitor.widget}/events"
    with EventStream(url, headers=visitor.auth) as events:
        events.next("ready")
        sent = visitor.send("do gift cards expire?", "stream-1")
        assert events.next("message").data["id"] == sent["message_id"]
        drafts, final = watch_a_streamed_reply(events, openai_server)
        assert len(drafts) >= 2
        texts = [d.data["text"] for d in drafts]
        assert texts == sorted(texts, key=len) and len(texts[-1]) > len(texts[0])  # it grew as it was written
        assert all(ANSWER.startswith(t) for t in texts)  # whole words, markers as the final reply has them
        assert all(d.data["reply_to"] == sent["message_id"] and d.id is None for d in drafts)  # no cursor moves
        assert final.event == "message" and final.data["direction"] == "out"
        assert final.data["text"] == ANSWER  # the stored reply is the full streamed answer, citations included
        assert final.data["in_reply_to_id"] == sent["message_id"]
        assert final.data["citations"] and final.data["citations"][0]["document"] == "faq.csv"
    assert openai_server.completion_requests[-1].body["stream"] is True  # type: ignore[index]
    # Drafts are never stored: the conversation holds the question and the one reply.
    assert [m["text"] for m in visitor.messages()] == ["do gift cards expire?", ANSWER]


def test_a_draft_the_checks_refuse_is_withdrawn_and_escalated(
    stack: Stack, streaming_tenant: dict[str, Any], server: str, openai_server: FakeOpenAIServer
) -> None:
    openai_server.reply(BANNED)
    openai_server.pause_stream_after(DRAFT_EVERY_CHUNKS, 2 * DRAFT_EVERY_CHUNKS)
    point_llm_at("northwind-stream", openai_server, banned_phrases=["lifetime warranty"])
    visitor = _visitor(stack, streaming_tenant["widget_id"])
    try:
        with EventStream(f"{server}/widget/v1/{visitor.widget}/events", headers=visitor.auth) as events:
            events.next("ready")
            sent = visitor.send("do gift cards expire?", "stream-2")
            events.next("message")
            drafts, ended = watch_a_streamed_reply(events, openai_server)
            assert drafts and all("lifetime" not in d.data["text"] for d in drafts)
            # The refused draft is taken back by a `withdraw`, then the holding notice comes; or, when both reach
            # the stream in one wake-up, by the notice alone, which replaces the draft it answers (the widget
            # matches `in_reply_to_id`; the stream drops a draft event of a settled reply).
            if ended.event == "withdraw":
                assert ended.data == {"reply_to": sent["message_id"]}
                notice = events.next("message")
            else:
                notice = ended
            assert notice.event == "message" and notice.data["in_reply_to_id"] == sent["message_id"]
            assert "team" in notice.data["text"]
    finally:
        point_llm_at("northwind-stream", openai_server, banned_phrases=[])
    with session_scope(cross_tenant="tests") as session:
        escalation = session.scalars(select(Escalation).where(Escalation.message_id == sent["message_id"])).one()
        assert escalation.reason == "banned_phrase" and "lifetime warranty" in (escalation.draft or "")
        replies = session.scalars(select(Message.text).where(Message.in_reply_to_id == sent["message_id"])).all()
    assert replies == [notice.data["text"]]  # no bot answer was stored or sent, only the holding notice


def test_the_long_poll_returns_stored_messages_only(
    stack: Stack, streaming_tenant: dict[str, Any], openai_server: FakeOpenAIServer
) -> None:
    openai_server.reply(ANSWER)
    openai_server.pause_stream_after(DRAFT_EVERY_CHUNKS)
    point_llm_at("northwind-stream", openai_server)
    visitor = _visitor(stack, streaming_tenant["widget_id"])
    sent = visitor.send("do gift cards expire?", "stream-3")
    own = visitor.messages()
    try:
        deadline = time.monotonic() + 60
        while openai_server.streams_paused == 0:  # held mid-answer: drafts have gone out
            assert time.monotonic() < deadline, "the LLM stream never reached its hold"
            time.sleep(0.05)
        # A long-poll gets nothing until the reply is stored.
        response = visitor.client.get(f"/widget/v1/{visitor.widget}/messages", headers=visitor.auth,
                                      params={"after": own[-1]["created_at"], "wait": 1})
        assert response.status_code == 200 and response.json()["messages"] == []
    finally:
        openai_server.resume_stream()
    response = visitor.client.get(f"/widget/v1/{visitor.widget}/messages", headers=visitor.auth,
                                  params={"after": own[-1]["created_at"], "wait": 30})
    assert [(m["text"], m["in_reply_to_id"]) for m in response.json()["messages"]] == [(ANSWER, sent["message_id"])]


def test_drafts_never_reach_another_visitor(
    stack: Stack, streaming_tenant: dict[str, Any], server: str, openai_server: FakeOpenAIServer
) -> None:
    openai_server.reply(ANSWER)
    openai_server.pause_stream_after(DRAFT_EVERY_CHUNKS)
    point_llm_at("northwind-stream", openai_server)
    visitor, neighbour = _visitor(stack, streaming_tenant["widget_id"]), _visitor(stack, streaming_tenant["widget_id"])
    events_url = f"{server}/widget/v1/{visitor.widget}/events"
    with EventStream(events_url, headers=visitor.auth) as mine, \
            EventStream(events_url, headers=neighbour.auth) as theirs:
        mine.next("ready")
        theirs.next("ready")
        neighbour.send("do gift cards expire?", "n-1")
        theirs.next("message")
        assert theirs.next("draft").data["text"]  # the neighbour is watching its answer being written
        openai_server.resume_stream()
        event = theirs.next(timeout=60)
        while event.event == "draft":
            event = theirs.next(timeout=60)
        assert event.data["text"] == ANSWER
        openai_server.pause_stream_after()
        visitor.send("hello, do gift cards expire?", "v-1")
        # Anything leaked from the neighbour would have arrived before the visitor's own message.
        assert mine.next("message").data["text"] == "hello, do gift cards expire?"
        event = mine.next(timeout=60)
        while event.event == "draft":
            event = mine.next(timeout=60)
        assert event.event == "message" and event.data["text"] == ANSWER


def _visitor(stack: Stack, widget: str) -> Visitor:
    response = stack.client.post(f"/widget/v1/{widget}/sessions", json={})
    assert response.status_code == 201, response.text
    return Visitor(stack.client, widget, response.json()["token"])


# ---------------------------------------------------------------------------------------------------------------
# The widget page in a real browser.

CHROMIUM = os.environ.get("SWITCHBOARD_TEST_CHROMIUM", "/usr/bin/chromium")


@pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"Chromium not installed at {CHROMIUM}")
def test_the_widget_page_shows_the_draft_before_the_final_message(
    stack: Stack, streaming_tenant: dict[str, Any], server: str, openai_server: FakeOpenAIServer
) -> None:
    from playwright.sync_api import expect, sync_playwright

    openai_server.reply(ANSWER)
    openai_server.pause_stream_after(DRAFT_EVERY_CHUNKS)
    point_llm_at("northwind-stream", openai_server)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--headless", "--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page()
            page.goto(f"{server}/widget/{streaming_tenant['widget_id']}")
            # Drafts go to open event streams only: send once the page's stream is open, or the held LLM would
            # wait for a draft no one can see.
            page.wait_for_selector("body[data-live='1']", state="attached", timeout=60_000)
            page.fill("#text", "do gift cards expire?")
            page.keyboard.press("Enter")
            draft = page.locator(".msg.draft")
            expect(draft).to_contain_text("Gift", timeout=60_000)  # while the LLM is held mid-answer
            assert ANSWER.startswith(draft.inner_text())
            final = page.locator(".msg.out:not(.greeting):not(.draft)")
            expect(final).to_have_count(0)
            openai_server.resume_stream()
            expect(final).to_have_count(1, timeout=60_000)
            expect(final).to_contain_text("delivered by email on the date you choose [1].")
            expect(final.locator(".cites")).to_contain_text("faq.csv")
            expect(draft).to_have_count(0)  # the final message took the draft's place
        finally:
            openai_server.resume_stream()
            browser.close()
