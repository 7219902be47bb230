"""Which inbound messages form one turn of a conversation (the orchestrator answers a turn, not a message).

A customer often writes several messages in a row. A message that a later one of the same turn supersedes (the
later one was still waiting when this one was about to be answered) is `merged` into it: its meta names the
message it was merged into (`superseded_by`), and that message answers every text merged into it as one turn.

A message may only merge into the turn still open when it arrived. Once a later message of the conversation ended
a turn without it (answered, escalated or handed to an agent; since `take_over`, only a consent keyword's
confirmation does), it is answered or escalated on its own: merged into a later turn, it would be in no reply at
all. And a turn collects exactly the messages merged into it, directly or through another merged message, never
every merged message since the previous turn.

Two handlers of one conversation may run at once (scale-out, several answering processes). A message may be
merged into a later one after that one's turn was read: the later one's claim notices (`TURN_NOW`: the messages
merged straight into it then differ from those it was read with) and its turn is read again; a merge commits
only while the message it merges into is still `received` (the claim holds that row too: app/assistant/outcomes.py).
And a later message may be read while an earlier one is still being answered, or waits in a killed
orchestrator's hands for a reclaim: it takes the earlier one into its own turn (`take_over`) and is read again,
so its reply never goes out before the earlier one's, and the earlier one's answer, if it comes, is dropped at its
claim. Found when the message is read (`EARLIER_WAITING_OF_ROW`: before any work is done for it) or, for an
earlier message stored later (another gateway's clock or commit), by its claim (`TURN_NOW`). Within one
process this is rare: its consumer runs a conversation's messages one at a time (app/bus/concurrent.py).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Select, bindparam, exists, func, literal, or_, select, update
from sqlalchemy.orm import Session

from app import audit, metrics
from app.contacts import consent
from app.conversations.service import MESSAGES
from app.db import session_scope
from app.models import utcnow
from app.tenant_scope import filter_only


# Built once (see the orchestrator's SQL): each call only binds values.
def _turn_ended_since(conversation: Any, created: Any) -> Any:
    """Whether a later inbound message of the conversation than one created at `created` already ended a turn
    (answered, escalated or handed to an agent): the turn that one arrived in is closed."""
    ended = MESSAGES.alias("ended")
    return exists().where(
        ended.c.conversation_id == conversation, filter_only(ended.c.tenant_id) == bindparam("tenant"),
        ended.c.direction == "in",
        # Not `in_([...])`: its expanding parameter is rendered into the SQL again at every execution.
        or_(*(ended.c.status == status for status in ("answered", "escalated", "human"))),
        ended.c.created_at > created,
    ).correlate_except(ended)  # also to the outer statement's row, two levels up (not only to `later`)


def _pending_after(conversation: Any, created: Any) -> Select[str]:
    """The next message of the conversation `conversation` still waiting after `created`, unless a later inbound
    message already ended a turn (`newer_pending`). Bound values here; the orchestrator's own statements pass the
    columns of the message they read or claim, so the check costs no round trip of its own there."""
    later = MESSAGES.alias("later")
    return select(later.c.id).where(
        later.c.conversation_id == conversation, filter_only(later.c.tenant_id) == bindparam("tenant"),
        later.c.direction == "in",
        later.c.status == "received", later.c.created_at > created,
        ~_turn_ended_since(conversation, created),
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


_EARLIER, _ENDED_BEFORE = MESSAGES.alias("earlier"), MESSAGES.alias("ended_before")
_NEVER = literal(datetime(1970, 1, 1, tzinfo=UTC), MESSAGES.c.created_at.type)


def _waiting_before(conversation: Any, created: Any, message: Any) -> Select[Any]:
    """The earlier messages of the turn still waiting (`received`) before the message of `conversation` created
    at `created`, oldest first: being answered by another handler, or not yet. That message may not be answered
    before them. Its turn began after the last turn that ended before it, read backwards from it: the scan stops
    there, however long the conversation."""
    ended_at = select(_ENDED_BEFORE.c.created_at).where(
        _ENDED_BEFORE.c.conversation_id == conversation,
        filter_only(_ENDED_BEFORE.c.tenant_id) == bindparam("tenant"), _ENDED_BEFORE.c.direction == "in",
        or_(*(_ENDED_BEFORE.c.status == status for status in ("answered", "escalated", "human"))),
        _ENDED_BEFORE.c.created_at < created,
    ).correlate_except(_ENDED_BEFORE).order_by(_ENDED_BEFORE.c.created_at.desc()).limit(1).scalar_subquery()
    # The COALESCE inside a subquery of its own: Postgres then takes the bound as one value, a condition of the
    # index scan; around the subquery it only filtered the rows the scan returned.
    began = select(func.coalesce(ended_at, _NEVER)).scalar_subquery()
    return select(_EARLIER.c.id, _EARLIER.c.text, _EARLIER.c.meta).where(
        _EARLIER.c.conversation_id == conversation, filter_only(_EARLIER.c.tenant_id) == bindparam("tenant"),
        _EARLIER.c.direction == "in", _EARLIER.c.status == "received", _EARLIER.c.created_at < created,
        _EARLIER.c.created_at > began,
        # Never the message itself: on SQLite a stored time without microseconds ("...:09") sorts before the same
        # time bound again ("...:09.000000").
        _EARLIER.c.id != message,
    ).correlate_except(_EARLIER).order_by(_EARLIER.c.created_at)


EARLIER_WAITING = _waiting_before(bindparam("conversation"), bindparam("created"), bindparam("message"))
# Whether the `messages` row of the statement it is put in has earlier messages waiting (the orchestrator's read:
# they are taken over before any work is done for it).
EARLIER_WAITING_OF_ROW = exists(_waiting_before(MESSAGES.c.conversation_id, MESSAGES.c.created_at, MESSAGES.c.id)
                                .with_only_columns(_EARLIER.c.id).order_by(None))
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
    exists(EARLIER_WAITING.with_only_columns(_EARLIER.c.id).order_by(None)).label("earlier"),
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


class KeywordWaiting(Exception):
    """An earlier message of the turn still waiting is a consent keyword (STOP, START): it is never merged (its
    consent change would be lost), so the later message waits for it (the orchestrator schedules it again)."""


def take_over(tenant_id: str, message_id: str, *, consent_status: str, channel: str) -> None:
    """Merge into message `message_id` the earlier messages of its turn still waiting (`EARLIER_WAITING`), as each
    would have merged itself into it had its own claim come first; then its turn is read again with their texts.
    An earlier message's handler still answering it then finds it merged at its claim, and its answer is dropped:
    so two handlers of one conversation at once (scale-out replicas, several answering processes) never send a
    later message's reply before an earlier one's. Locks in the order of the messages, as claims do (earlier rows
    first, then this one): on Postgres a claim of an earlier message in progress is waited for, and a row it ended
    meanwhile is no longer `received` once locked, so it is left alone. Counted, once committed, in
    `switchboard_messages_taken_over_total`."""
    key = {"message": message_id, "tenant": tenant_id}
    with session_scope(tenant=tenant_id) as session:
        sqlite = write_lock(session, key)
        row = session.execute(_MESSAGE, key).one()
        if row.status != "received":
            return  # handled meanwhile (another delivery of it): the read again says so
        earlier = session.execute(_EARLIER_WAITING_LOCKED, {
            **key, "conversation": row.conversation_id, "created": row.created_at}).all()
        if not sqlite and session.execute(_MESSAGE_LOCKED, key).one().status != "received":
            return
        for waiting in earlier:
            if consent.keyword(waiting.text, consent_status, channel) is not None:
                raise KeywordWaiting(f"message {message_id} waits for the consent keyword {waiting.id} before it")
            session.execute(_MERGE, {"waiting": waiting.id, "tenant": tenant_id, "now": utcnow(),
                                     "new_meta": {**(waiting.meta or {}), "superseded_by": message_id}})
            audit.write(session, tenant_id, "bot", "message.merged", "message", waiting.id,
                        {"into": message_id, "taken_over": True})
    metrics.taken_over(len(earlier))


def write_lock(session: Session, key: dict[str, str]) -> bool:
    """On SQLite, begin the transaction with the write lock before message `key` is read (whether it did):
    `FOR UPDATE` does nothing there and pysqlite begins no transaction at a read, so two handlers of one message
    could both read it `received` and write over each other's outcome. Postgres locks rows with `FOR UPDATE`."""
    if session.get_bind().dialect.name != "sqlite":
        return False
    session.execute(LOCK, key)
    return True


_IN_TENANT = (MESSAGES.c.id == bindparam("message"), MESSAGES.c.tenant_id == bindparam("tenant"))
LOCK = update(MESSAGES).where(*_IN_TENANT).values(status=MESSAGES.c.status)  # a no-op UPDATE: `write_lock`
_MESSAGE = select(MESSAGES.c.status, MESSAGES.c.conversation_id, MESSAGES.c.created_at).where(*_IN_TENANT)
_MESSAGE_LOCKED = _MESSAGE.with_for_update()
_EARLIER_WAITING_LOCKED = EARLIER_WAITING.with_for_update(of=_EARLIER)
_MERGE = update(MESSAGES).where(MESSAGES.c.id == bindparam("waiting"), MESSAGES.c.tenant_id == bindparam("tenant"),
                                MESSAGES.c.status == "received").values(
    status="merged", processed_at=bindparam("now", type_=MESSAGES.c.processed_at.type),
    meta=bindparam("new_meta", type_=MESSAGES.c.meta.type))
