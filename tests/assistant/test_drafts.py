"""Streamed replies: the safe part of an answer being written (whole words, citation markers numbered as in the
final reply, nothing the final checks would refuse), and the orchestrator's drafts around the final decision,
through the real `openai` SDK streaming from the fake server."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import select

from app.assistant.drafts import DRAFT_EVERY_CHUNKS, DraftStream, visible_text
from app.assistant.prompts import ESCALATE_TOKEN, parse_llm_answer
from app.bootstrap import container
from app.bus.memory import MemoryBus
from app.contracts import InboundMessage
from app.db import migrate, session_scope
from app.models import Escalation, Message
from tests.assistant.helpers import FakePassage
from tests.conftest import Graph
from tests.fakes.openai_server import FakeOpenAIServer, text_chunks

PASSAGES = [
    FakePassage("c1", "returns.md", "Returns", "Unworn items can be returned within 30 days.", 0.9),
    FakePassage("c2", "shipping.md", "Shipping", "We ship to 30 countries.", 0.8),
]
# Grounded (each sentence says what its cited passage says), with the markers a model really writes: two at once,
# one out of range.
ANSWER = ("Unworn items can be returned within 30 days [2][1]. We ship to 30 "
          "countries [9] [2].")


def _prefixes(text: str) -> Iterator[str]:
    for end in range(len(text) + 1):
        yield text[:end]


def test_every_visible_draft_is_a_prefix_of_the_final_reply_with_the_same_markers() -> None:
    final = parse_llm_answer(ANSWER, PASSAGES)
    shown = [visible_text(p, PASSAGES, [], None) for p in _prefixes(ANSWER)]
    for text, citations in shown:
        assert text is not None
        assert final.text.startswith(text), text
        assert citations == final.citations[: len(citations)]
    texts = [t for t, _ in shown]
    assert "Unworn items can be returned within 30 days [1][2]." in texts  # renumbered as the final reply is
    assert not any("[9]" in t or t.endswith("[") for t in texts if t)  # made-up and half-written markers
    assert not any(t.endswith("retur") for t in texts if t)  # a word shows once it is complete


def test_an_open_citation_group_and_the_escalation_token_never_show() -> None:
    assert visible_text("Returns take 30 days [1, ", PASSAGES, [], None)[0] == "Returns take 30 days"
    assert visible_text("I am not sure <<ESCALATE>>", PASSAGES, [], None)[0] is None
    assert visible_text("I am not sure <<ESCAL", PASSAGES, [], None)[0] == "I am not sure"


def test_a_banned_phrase_never_shows_and_stops_the_drafts() -> None:
    banned = ["lifetime warranty", "refund guaranteed"]
    answer = "Every jacket comes with a lifetime warranty on its zips."
    shown = [visible_text(p, PASSAGES, banned, None)[0] for p in _prefixes(answer)]
    assert not any(t and "lifetime" in t.lower() for t in shown)  # held back until it could be judged
    assert shown[-1] is None  # and then refused: the final check escalates this answer
    assert "Every jacket comes with a" in shown
    # Case, spacing and line breaks do not sneak one through.
    assert visible_text("A LIFETIME\n\nWARRANTY covers it. ", PASSAGES, banned, None)[0] is None


def test_an_answer_over_the_length_limit_stops_the_drafts() -> None:
    assert visible_text("word " * 30, PASSAGES, [], 200)[0] == ("word " * 30).strip()
    assert visible_text("word " * 30, PASSAGES, [], 140)[0] is None


def _visible_text_as_first_written(
    raw: str, passages: list[FakePassage], banned_phrases: list[str], max_chars: int | None
) -> tuple[str | None, list[dict[str, Any]]]:
    """`visible_text` before it was made cheaper (each phrase searched on its own and the hold worked out per
    piece, words found by a regex): the reference it must still match, draft for draft."""
    if ESCALATE_TOKEN in raw:
        return None, []
    cut = max(raw.rfind(" "), raw.rfind("\n"), raw.rfind("\t"))
    complete = re.sub(r"\[[\d,\s]*$", "", raw[: cut + 1]) if cut >= 0 else ""
    parsed = parse_llm_answer(complete, passages)
    if not parsed.text:
        return "", []
    phrases = [p.strip() for p in banned_phrases if p.strip()]
    if [p for p in phrases if re.search(_phrase_regex(p), parsed.text, re.IGNORECASE)] or (
            max_chars and len(parsed.text) > max_chars):
        return None, []
    hold = max((len(p.split()) for p in phrases), default=1) - 1
    words = list(re.finditer(r"\S+", parsed.text))
    shown = parsed.text
    if hold:
        shown = parsed.text[: words[-hold].start()].rstrip() if len(words) > hold else ""
    if not shown:
        return "", []
    numbers = {int(n) for n in re.findall(r"\[(\d+)\]", shown)}
    return shown, [c for i, c in enumerate(parsed.citations, start=1) if i in numbers]


def _phrase_regex(phrase: str) -> str:
    left = r"\b" if re.match(r"\w", phrase) else ""
    right = r"\b" if re.search(r"\w$", phrase) else ""
    return left + r"\s+".join(re.escape(w) for w in phrase.split()) + right


@pytest.mark.parametrize("banned", [
    [], ["lifetime warranty", "refund guaranteed"], ["Summit Supply Co", " no questions asked ", "", "A+", "$$$"],
    ["x"],
])
def test_the_drafts_are_the_same_as_before_they_were_made_cheaper(banned: list[str]) -> None:
    answers = [
        ANSWER,
        "Every jacket comes with a lifetime warranty on its zips [1].",
        "Our  Summit Supply\n\nCo  partner ships [2] [1, 2] in 3 days\u00a0[9] [1, ",
        "Rated A+ by x-ray experts, no\tquestions   asked [2][2][1]!\n\n\n\nRefund guaranteed? <<ESCAL",
        "Short [1] answer, then <<ESCALATE>> and more",
        "$$$ savings :  [1] . Costs\u2003x more [3]",
    ]
    for answer in answers:
        streamed = ["".join(text_chunks(answer)[:n]) for n in range(len(text_chunks(answer)) + 1)]
        for raw in [*streamed, *_prefixes(answer)]:
            for max_chars in (None, 30):
                assert visible_text(raw, PASSAGES, banned, max_chars) == _visible_text_as_first_written(
                    raw, PASSAGES, banned, max_chars), raw


class _DraftStreamAsFirstWritten(DraftStream):
    """`DraftStream.on_text` before it worked the visible text out only when a draft is due: on every piece."""

    def on_text(self, raw: str) -> None:
        if self._stopped:
            return
        self._chunks += 1
        shown, citations = visible_text(raw, self.passages, self.banned_phrases, self.max_chars)
        if shown is None:
            self._stopped = True
            self.withdraw()
            return
        now = time.monotonic()
        if not shown or shown == self._shown:
            return
        if now - self._last_at < self.interval_s and self._chunks < DRAFT_EVERY_CHUNKS:
            return
        self._shown, self._last_at, self._chunks = shown, now, 0
        self._publish({"text": shown, "citations": citations})
        self.published += 1


@pytest.mark.parametrize("interval_ms", [0, 25, 100])
def test_drafts_worked_out_only_when_due_are_the_ones_every_piece_gave(
        interval_ms: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same drafts, in the same order, with the same citations; the only difference allowed: a withdrawal for a
    banned phrase or the length may come a few pieces later (never a draft more, never one fewer)."""
    answers = [
        ANSWER,
        "Every jacket comes with a lifetime warranty on its zips [1]. " + "More words follow here. " * 4,
        "Our  Summit Supply\n\nCo  partner ships [2] [1, 2] in 3 days\u00a0[9] [1, 2] done.",
        "Short [1] answer, then <<ESCALATE>> and more words after it",
        "word " * 60 + "[1]",
        "A reply that grows long enough to pass the limit of thirty characters [2] and more text after that.",
    ]
    policies = [{}, {"banned_phrases": ["lifetime warranty", "A+"]}, {"max_reply_chars": 30},
                {"banned_phrases": ["Supply Co"], "max_reply_chars": 200}]
    for answer in answers:
        for policy in policies:
            for gaps in ([0.003], [0.03, 0.001, 0.012], [0.2]):  # seconds between pieces (a fake clock)
                published = []
                for cls in (DraftStream, _DraftStreamAsFirstWritten):
                    clock = iter(sum(gaps[i % len(gaps)] for i in range(n)) for n in range(10_000))
                    monkeypatch.setattr("app.assistant.drafts.time.monotonic", lambda: next(clock))
                    push = RecordingPush()
                    stream = cls(push, tenant_id="t", conversation_id="c", reply_to="m",  # type: ignore[arg-type]
                                 interval_s=interval_ms / 1000, visitor="v")
                    stream.start(PASSAGES, policy)
                    pieces = text_chunks(answer)
                    for n in range(1, len(pieces) + 1):
                        stream.on_text("".join(pieces[:n]))
                    published.append([{k: v for k, v in d.items() if k != "seq"} for _, _, d in push.drafts])
                ours, reference = published
                assert [d for d in ours if not d.get("withdrawn")] == \
                    [d for d in reference if not d.get("withdrawn")], (answer, policy, gaps)
                withdrawn = [any(d.get("withdrawn") for d in drafts) for drafts in published]
                # The same withdrawal, or (drafts throttled) none yet when the stream ended: the final check's.
                assert withdrawn[0] == withdrawn[1] or (interval_ms and withdrawn == [False, True]), (answer, policy)


# ---------------------------------------------------------------------------------------------------------------
# The orchestrator: drafts while the LLM streams, then the final decision.

class RecordingPush:
    """The Push port, recording what an open widget stream would receive (the transport has its own contract
    tests in tests/conversations/test_push.py)."""

    in_process = True

    def __init__(self) -> None:
        self.drafts: list[tuple[str, str, dict[str, Any]]] = []

    def publish(self, tenant_id: str, contact_id: str) -> None:
        return None

    def publish_draft(self, tenant_id: str, contact_id: str, draft: dict[str, Any]) -> None:
        self.drafts.append((tenant_id, contact_id, draft))

    def subscribe(self, tenant_id: str, contact_id: str, *, drafts: bool = False) -> Any:
        raise NotImplementedError

    def close(self) -> None:
        return None


@pytest.fixture
def llm(graph: Graph) -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer() as server:
        # webchat_draft_interval_ms=0: every change is a draft, the test sees them all.
        graph.configure(llm_base_url=server.base_url, llm_api_key=server.api_key, webchat_draft_interval_ms=0)
        migrate()
        yield server


def _tenant(**policies: Any) -> str:
    from app.tenants.service import create_tenant

    with session_scope(cross_tenant="tests") as session:
        tenant = create_tenant(session, "acme").tenant
        tenant.live_pack_version = 1
        tenant.policies = {**tenant.policies, **policies}
        return tenant.id


def _ask(tenant_id: str, channel: str = "webchat", contact: str = "v_visitor") -> tuple[Any, RecordingPush, str]:
    """The customer's message stored as a gateway stores it, then handled by the orchestrator."""
    from app.assistant.orchestrator import Orchestrator
    from app.conversations.service import accept_inbound

    bus, push = MemoryBus(), RecordingPush()
    accepted = accept_inbound(bus, tenant_id=tenant_id, channel=channel, contact_external_id=contact,
                              provider_message_id=f"{contact}:1", text="can I return a jacket?")
    with session_scope(cross_tenant="tests") as session:
        message = session.get_one(Message, accepted.message_id)
        event = InboundMessage(tenant_id=tenant_id, message_id=message.id, conversation_id=message.conversation_id,
                               contact_id="-", channel=channel, provider_message_id=message.provider_message_id,
                               text=message.text)
    orchestrator = Orchestrator.of(container(), bus=bus, retrieve=lambda *a, **k: PASSAGES, push=push)  # type: ignore[arg-type]
    return orchestrator.process(event), push, accepted.message_id


def test_a_streamed_answer_is_drafted_then_stored_as_the_final_reply(llm: FakeOpenAIServer) -> None:
    llm.reply(ANSWER)
    tenant_id = _tenant()
    outcome, push, message_id = _ask(tenant_id)
    assert outcome.status == "answered"
    final = parse_llm_answer(ANSWER, PASSAGES)
    assert outcome.text == final.text
    drafts = [d for _, _, d in push.drafts]
    assert len(drafts) >= len(text_chunks(ANSWER)) // 2  # the answer was shown as it was written
    assert {(t, c) for t, c, _ in push.drafts} == {(tenant_id, "v_visitor")}  # to this visitor only
    assert all(final.text.startswith(d["text"]) and d["reply_to"] == message_id for d in drafts)
    assert [d["seq"] for d in drafts] == sorted(d["seq"] for d in drafts)
    assert not any(d.get("withdrawn") for d in drafts)
    assert llm.completion_requests[-1].body["stream"] is True  # type: ignore[index]


def test_an_answer_the_checks_refuse_is_withdrawn_and_escalated(llm: FakeOpenAIServer) -> None:
    llm.reply("Good news: every jacket has a lifetime warranty, so just send it back [1].")
    tenant_id = _tenant(banned_phrases=["lifetime warranty"])
    outcome, push, message_id = _ask(tenant_id)
    assert outcome.status == "escalated" and outcome.reason == "banned_phrase"
    drafts = [d for _, _, d in push.drafts]
    assert drafts and drafts[-1].get("withdrawn") is True and drafts[-1]["reply_to"] == message_id
    assert not any("lifetime" in str(d.get("text", "")).lower() for d in drafts)
    assert sum(1 for d in drafts if d.get("withdrawn")) == 1


def test_a_stream_that_fails_midway_escalates_with_the_offline_draft(llm: FakeOpenAIServer) -> None:
    llm.then_stream_break(6, ANSWER)
    tenant_id = _tenant()
    outcome, push, message_id = _ask(tenant_id)
    assert outcome.status == "escalated" and outcome.reason == "llm_unavailable"
    drafts = [d for _, _, d in push.drafts]
    assert drafts and drafts[-1].get("withdrawn") is True
    with session_scope(cross_tenant="tests") as session:
        escalation = session.scalars(select(Escalation).where(Escalation.message_id == message_id)).one()
        assert escalation.draft  # the offline composer's, as for a failed one-shot call
    assert len(llm.completion_requests) == 1  # text had been shown: never retried


@pytest.mark.parametrize("case", ["other channel", "tenant opted out", "operator off"])
def test_other_channels_and_opted_out_tenants_keep_the_one_shot_call(
    llm: FakeOpenAIServer, graph: Graph, case: str
) -> None:
    llm.reply(ANSWER)
    if case == "operator off":
        graph.configure(webchat_stream_replies=False)
    tenant_id = _tenant(stream_replies=False) if case == "tenant opted out" else _tenant()
    outcome, push, _ = _ask(tenant_id, channel="telegram" if case == "other channel" else "webchat")
    assert outcome.status == "answered" and outcome.text == parse_llm_answer(ANSWER, PASSAGES).text
    assert push.drafts == []
    assert "stream" not in (llm.completion_requests[-1].body or {})


def test_the_tenant_policy_is_accepted_by_the_admin_schema() -> None:
    from app.admin.policy_schemas import Policies

    assert Policies.model_validate({"stream_replies": False}).stream_replies is False
