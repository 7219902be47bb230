"""Streamed replies: what a web chat visitor sees while the LLM is still writing.

While the LLM streams, `DraftStream.on_text` gets the raw answer so far and publishes, at most every
`WEBCHAT_DRAFT_INTERVAL_MS` (or every `DRAFT_EVERY_CHUNKS` pieces), the part that is safe to show as a `draft`
(app/conversations/push.py: ephemeral, never stored) to the visitor's open event streams. Safe means what the
final checks would let through:
- only whole words (a word is shown once the whitespace after it has arrived), parsed as the final answer is
  (`parse_llm_answer`: `[n]` markers renumbered to the same numbers the stored reply has, unknown ones dropped);
  a citation group still open at the end is held back;
- the tenant's banned phrases: the words that could still begin one (a phrase of n words: the last n-1 words) are
  held back, and once the text holds a banned phrase, the escalation token or more than `max_reply_chars`, no
  more drafts go out and the shown one is withdrawn: the final check will escalate.
The visible text is worked out only when a draft is due (a parse of the whole answer so far on every streamed piece
was a tenth of the LLM call's CPU): the drafts are the ones a check of every piece would publish, since what makes
an answer unshowable stays in it as it grows; only a withdrawal for a banned phrase or the length may come up to one
draft interval (or DRAFT_EVERY_CHUNKS pieces) later, still before the final check, which withdraws in any case.
The reply becomes final only after the orchestrator's checks on the complete answer: then the stored reply is
pushed as always and replaces the draft (the widget matches it by `in_reply_to_id`); when it escalates instead, or
the stream fails, the orchestrator withdraws the draft (`withdraw`) and the holding notice follows.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

from app.assistant.guardrails import banned_pattern
from app.assistant.prompts import ESCALATE_TOKEN, PassageLike, parse_llm_answer
from app.conversations.push import Push

log = logging.getLogger(__name__)

# Channels whose client can show a reply as it is written (and replace it with the final one).
STREAMING_CHANNELS = frozenset({"webchat"})
# A draft goes out when WEBCHAT_DRAFT_INTERVAL_MS has passed since the last one, or after this many streamed
# pieces, whichever comes first (so a fast model still shows progress, and a slow one is not held back).
DRAFT_EVERY_CHUNKS = 8
_OPEN_CITATION = re.compile(r"\[[\d,\s]*$")
_MARKER = re.compile(r"\[(\d+)\]")


@lru_cache(maxsize=256)
def _banned_rules(phrases: tuple[str, ...]) -> tuple[re.Pattern[str] | None, int]:
    """The tenant's banned phrases as one pattern (app/assistant/guardrails.py), and how many of the last words to
    hold back (those that could still begin a phrase of n words: n-1). Worked out once, not per streamed piece."""
    phrases = tuple(p.strip() for p in phrases if p.strip())
    return banned_pattern(phrases), max((len(p.split()) for p in phrases), default=1) - 1


def visible_text(
    raw: str, passages: Sequence[PassageLike], banned_phrases: Sequence[str], max_chars: int | None
) -> tuple[str | None, list[dict[str, Any]]]:
    """What may be shown of the answer so far, with its citations; `(None, [])` when the final checks will
    refuse the answer whatever follows (banned phrase, escalation token, too long)."""
    if ESCALATE_TOKEN in raw:
        return None, []
    cut = max(raw.rfind(" "), raw.rfind("\n"), raw.rfind("\t"))
    complete = _OPEN_CITATION.sub("", raw[: cut + 1]) if cut >= 0 else ""
    parsed = parse_llm_answer(complete, passages)
    if not parsed.text:
        return "", []
    banned, hold = _banned_rules(tuple(banned_phrases))
    if (banned is not None and banned.search(parsed.text)) or (max_chars and len(parsed.text) > max_chars):
        return None, []
    shown = parsed.text
    if hold:
        # Without its last `hold` words (str.split's whitespace is the regex's \s), or nothing when it has no more.
        words = shown.rsplit(None, hold)
        shown = words[0] if len(words) > hold else ""
    if not shown:
        return "", []
    # Citations of the markers still in the shown text (renumbered in order of first use, so a prefix).
    numbers = {int(n) for n in _MARKER.findall(shown)}
    return shown, [c for i, c in enumerate(parsed.citations, start=1) if i in numbers]


class DraftStream:
    """The drafts of one reply to one web chat visitor. Called from the orchestrator's worker thread."""

    def __init__(self, push: Push, *, tenant_id: str, conversation_id: str, reply_to: str, interval_s: float,
                 visitor: str | None) -> None:
        """`visitor`: the widget session's contact id (read with the message's context); None stops the drafts."""
        self.push = push
        self.tenant_id = tenant_id
        self.contact_id = visitor
        self.conversation_id, self.reply_to = conversation_id, reply_to
        self.interval_s = interval_s
        self.passages: Sequence[PassageLike] = ()
        self.banned_phrases: Sequence[str] = ()
        self.max_chars: int | None = None
        self.published = 0  # drafts handed to the push (tests and logs)
        self._seq = 0
        self._shown = ""
        self._last_at = float("-inf")
        self._chunks = 0  # pieces streamed since the last draft
        self._stopped = False
        self._withdrawn = False

    def start(self, passages: Sequence[PassageLike], policies: dict[str, Any]) -> None:
        if self.contact_id is None:
            self._stopped = True  # not a widget visitor after all: nobody to show drafts to
        self.passages = passages
        self.banned_phrases = [str(p) for p in policies.get("banned_phrases") or ()]
        self.max_chars = int(policies["max_reply_chars"]) if policies.get("max_reply_chars") else None

    def on_text(self, raw: str) -> None:
        """The LLM's answer so far (raw, as streamed)."""
        if self._stopped:
            return
        self._chunks += 1
        if ESCALATE_TOKEN in raw:  # as visible_text would say, at once: the final check will escalate
            self.withdraw()
            return
        now = time.monotonic()
        if now - self._last_at < self.interval_s and self._chunks < DRAFT_EVERY_CHUNKS:
            return  # no draft due: the visible text (a parse of the whole answer so far) is not worked out
        shown, citations = visible_text(raw, self.passages, self.banned_phrases, self.max_chars)
        if shown is None:
            self.withdraw()  # the final check will escalate: show nothing more, take back what was shown
            return
        if not shown or shown == self._shown:
            return
        self._shown, self._last_at, self._chunks = shown, now, 0
        self._publish({"text": shown, "citations": citations})
        self.published += 1

    def withdraw(self) -> None:
        """Take the draft back (the reply escalated, failed, or was merged into a later one). Idempotent."""
        self._stopped = True
        if self._shown and not self._withdrawn:
            self._withdrawn = True
            self._publish({"withdrawn": True})

    def _publish(self, body: dict[str, Any]) -> None:
        if self.contact_id is None:
            return
        # Growing across attempts too: a redelivered message's new drafts supersede an earlier attempt's.
        self._seq = max(self._seq + 1, time.time_ns() // 1000)
        self.push.publish_draft(self.tenant_id, self.contact_id, {
            "tenant_id": self.tenant_id, "conversation_id": self.conversation_id, "reply_to": self.reply_to,
            "seq": self._seq, **body,
        })
