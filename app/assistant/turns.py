"""Which inbound messages form one turn of a conversation (the orchestrator answers a turn, not a message).

A customer often writes several messages in a row. A message that a later one of the same turn supersedes (the
later one was still waiting when this one was about to be answered) is `merged` into it: its meta names the
message it was merged into (`superseded_by`), and that message answers every text merged into it as one turn.

A message may only merge into the turn still open when it arrived. Once a later message of the conversation ended
a turn without it (answered, escalated or handed to an agent), as happens to a message reclaimed from a killed
orchestrator after other turns were answered, it is answered or escalated on its own: merged into a later turn,
it would be in no reply at all. And a turn collects exactly the messages merged into it, directly or through
another merged message, never every merged message since the previous turn.

Two handlers of one conversation may run at once (scale-out, several answering processes): a message may be
merged into a later one after that one's turn was read. The later one's claim notices (`TURN_NOW`: the messages
merged straight into it then differ from those it was read with) and its turn is read again; a merge commits
only while the message it merges into is still `received` (the claim holds that row too: app/assistant/outcomes.py).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Select, bindparam, exists, func, or_, select
from sqlalchemy.orm import Session

from app.conversations.service import MESSAGES
from app.tenant_scope import filter_only


# Built once (see the orchestrator's SQL): each call only binds values.
def _pending_after(conversation: Any, created: Any) -> Select[str]:
    """The next message of the conversation `conversation` still waiting after `created`, unless a later inbound
    message already ended a turn (`newer_pending`). Bound values here; the orchestrator's own statements pass the
    columns of the message they read or claim, so the check costs no round trip of its own there."""
    later, ended = MESSAGES.alias("later"), MESSAGES.alias("ended")
    turn_ended_since = exists().where(  # a later inbound message of the conversation already ended a turn
        ended.c.conversation_id == conversation, filter_only(ended.c.tenant_id) == bindparam("tenant"),
        ended.c.direction == "in",
        # Not `in_([...])`: its expanding parameter is rendered into the SQL again at every execution.
        or_(*(ended.c.status == status for status in ("answered", "escalated", "human"))),
        ended.c.created_at > created,
    ).correlate_except(ended)  # also to the outer statement's row, two levels up (not only to `later`)
    return select(later.c.id).where(
        later.c.conversation_id == conversation, filter_only(later.c.tenant_id) == bindparam("tenant"),
        later.c.direction == "in",
        later.c.status == "received", later.c.created_at > created, ~turn_ended_since,
    ).correlate_except(later).order_by(later.c.created_at).limit(1)


_NEWER_PENDING = _pending_after(bindparam("conversation"), bindparam("created"))
# `newer_pending` of the `messages` row of the statement it is put in (a correlated subquery).
NEWER_PENDING_OF_ROW = _pending_after(MESSAGES.c.conversation_id, MESSAGES.c.created_at)
_MERGED_EARLIER = select(MESSAGES.c.id, MESSAGES.c.text, MESSAGES.c.meta).where(
    MESSAGES.c.conversation_id == bindparam("conversation"), filter_only(MESSAGES.c.tenant_id) == bindparam("tenant"),
    MESSAGES.c.direction == "in",
    MESSAGES.c.status == "merged", MESSAGES.c.created_at < bindparam("created"),
).order_by(MESSAGES.c.created_at.desc())
_MERGED = MESSAGES.alias("merged")
# Whether `merged_turn` of the `messages` row of the statement it is put in could find anything (a correlated
# subquery): in the usual turn of one message it finds nothing, and its query is not run.
MERGED_BEFORE_ROW = exists().where(
    _MERGED.c.conversation_id == MESSAGES.c.conversation_id, filter_only(_MERGED.c.tenant_id) == bindparam("tenant"),
    _MERGED.c.direction == "in", _MERGED.c.status == "merged", _MERGED.c.created_at < MESSAGES.c.created_at,
).correlate_except(_MERGED)


_STRAIGHT = MESSAGES.alias("straight")
# After a claim's lock, in one round trip: the message it would be merged into (`newer_pending`), and how many
# messages are merged straight into it (`merged_turn`). A turn only grows by a message merged straight into the
# message ending it (a message merged already is never merged into), so a count that differs from the one read
# with the turn means the turn changed since.
TURN_NOW = select(
    _NEWER_PENDING.scalar_subquery().label("newer"),
    select(func.count()).where(
        _STRAIGHT.c.conversation_id == bindparam("conversation"),
        filter_only(_STRAIGHT.c.tenant_id) == bindparam("tenant"), _STRAIGHT.c.direction == "in",
        _STRAIGHT.c.status == "merged", _STRAIGHT.c.created_at < bindparam("created"),
        _STRAIGHT.c.meta["superseded_by"].as_string() == bindparam("message"),
    ).scalar_subquery().label("merged"),
)


def merged_turn(session: Session, tenant_id: str, conversation_id: str, message_id: str,
                created_at: datetime) -> tuple[list[str], int]:
    """Texts merged into the turn that message `message_id` ends, oldest first: the messages superseded by it,
    directly or through another merged message (never one merged into some other turn); and how many of them it
    superseded directly (what the claim's `TURN_NOW` compares)."""
    into, texts, straight = {message_id}, [], 0
    # Newest first: a message is only ever superseded by a later one, so its successor is resolved already.
    for row in session.execute(_MERGED_EARLIER, {"tenant": tenant_id, "conversation": conversation_id,
                                                 "created": created_at}):
        superseded_by = (row.meta or {}).get("superseded_by")
        if superseded_by in into:
            into.add(row.id)
            texts.append(row.text)
            straight += superseded_by == message_id
    return texts[::-1], straight


def newer_pending(session: Session, tenant_id: str, conversation_id: str, created_at: datetime) -> str | None:
    """The next message of the same turn still waiting, which would supersede the message created at
    `created_at`; None if there is none, or if a later message already ended a turn without this one: the turn
    it arrived in is closed, so it is answered on its own."""
    return session.scalar(_NEWER_PENDING, {"tenant": tenant_id, "conversation": conversation_id,
                                           "created": created_at})
