"""Phase 3 of the orchestrator (app/assistant/orchestrator.py): write the outcome of one inbound message in one
transaction that re-checks the message is still `received` (row lock on Postgres, write lock on SQLite), with the
reply or escalation events in the outbox (app/outbox.py), published once committed. Also the other ends a message
can reach: merged into a later one of its turn, deferred to the end of its burst window, routed to an agent,
dead-lettered."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from sqlalchemy import Table, bindparam, insert, select, update
from sqlalchemy.orm import Session

from app import audit, outbox
from app.assistant.prompts import Draft
from app.assistant.turns import LOCK, TURN_NOW, write_lock
from app.audit import record
from app.contacts import consent
from app.contracts import EVENTS, INBOUND, OUTBOUND, EscalationOpened, InboundMessage
from app.conversations.push import Push, notify_on_commit, outcome_key
from app.conversations.replies import ReplyTo, StoredReply, store_reply
from app.conversations.service import CONTACTS, MESSAGES
from app.db import session_scope
from app.models import Contact, Conversation, Escalation, Tenant, new_id, utcnow
from app.providers.llm.plan import LLMPlan
from app.review.sla import schedule as schedule_sla
from app.review.sla import target as sla_target
from app.tenant_scope import filter_only, same_tenant

DEAD_LETTERED = "processing_failed"  # the reason of the escalation a dead-lettered message opens
DEFAULT_ESCALATION_NOTICE = (
    "Thanks for your message. I've passed it to a member of our team, who will reply here shortly."
)


@dataclass(frozen=True)
class Outcome:
    status: str  # answered | escalated | human | merged | deferred | duplicate | skipped
    message_id: str
    reply_id: str | None = None
    escalation_id: str | None = None
    reason: str | None = None
    text: str | None = None
    citations: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class Context:
    message_id: str
    tenant_id: str
    conversation_id: str
    mode: str
    persona: dict[str, Any]
    policies: dict[str, Any]
    llm: LLMPlan | None
    history: list[tuple[str, str]]
    pack_version: int | None
    received_at: datetime
    earlier_burst: list[str] = field(default_factory=list)  # texts merged into this turn
    # How many messages were merged straight into this one when it was read: the claim fails with `TurnChanged`
    # if that changed meanwhile (app/assistant/turns.py).
    merged_directly: int = 0
    consent: str = "unknown"  # the contact's: unknown | granted | withdrawn (app/contacts/consent.py)
    superseded: bool = False  # a later message of the conversation was already waiting when this one was read
    earlier_waiting: bool = False  # an earlier message of its turn was still waiting then (app/assistant/turns.py)
    channel: str = ""
    visitor: str | None = None  # a web chat contact's external id (the widget session): where drafts stream to
    calibration: dict[str, Any] | None = None  # the live pack version's (app/knowledge/calibration.py)
    # Set when a gateway waits for this decision inside its own response (USSD): announced there on commit.
    outcome_push: Push | None = None
    # Set when the channel delivers in process (the web chat): the outcome's transaction delivers the reply, and
    # the visitor's open streams are woken through this push once it commits; no dispatcher hop.
    delivery_push: Push | None = None
    retrieved: list[dict[str, Any]] = field(default_factory=list)  # set by the answer path; kept on an escalation


class TurnChanged(Exception):
    """A message was merged into this one after its turn was read: the outcome, made without that message's text,
    is not written (its transaction rolls back); the orchestrator reads the turn again and decides anew."""


class EarlierWaiting(TurnChanged):
    """An earlier message of this one's turn is still `received` (another handler is answering it: scale-out,
    several answering processes; or nobody yet): answered now, this one's reply would go out before that one's.
    The outcome is not written; the orchestrator takes the earlier messages into this turn (`take_over`) and
    decides anew."""


@dataclass(frozen=True)
class Decision:
    answer: Draft | None = None
    escalate_reason: str | None = None
    detail: str | None = None
    draft: Draft | None = None
    meta: dict[str, Any] | None = None  # kept on the escalation (e.g. the unsupported sentences)
    notice: str | None = None  # what the customer is told instead of the tenant's notice (their own language)


def claim(session: Session, ctx: Context, *, may_merge: bool = True) -> ReplyTo | None:
    """Lock the message row and check nobody handled it while we were thinking. Returns where its reply goes;
    None if it is handled already, or (`may_merge`) merged into a later message here (status `merged`, committed
    with the session)."""
    key = {"message": ctx.message_id, "tenant": ctx.tenant_id}
    write_lock(session, key)  # SQLite; `_CLAIM` locks the row on Postgres
    row = session.execute(_CLAIM, key).one()
    if row.status != "received":
        return None
    if may_merge:
        newer, merged, earlier = _turn_now(session, ctx, row)
        if newer is not None:
            # A later message of the same turn arrived while this one was being answered: it supersedes this
            # reply and answers both texts as one turn (`merged_turn`).
            _set_status(session, ctx, "merged", meta={**(row.meta or {}), "superseded_by": newer})
            audit.write(session, ctx.tenant_id, "bot", "message.merged", "message", ctx.message_id, {"into": newer})
            return None
        if merged != ctx.merged_directly:
            raise TurnChanged(ctx.message_id)  # before anything is written: its rollback undoes only `_LOCK`
        if earlier:
            raise EarlierWaiting(ctx.message_id)  # likewise
    if ctx.outcome_push is not None:  # a gateway waits for this decision inside its own response (USSD)
        notify_on_commit(session, ctx.outcome_push, ctx.tenant_id, outcome_key(ctx.message_id))
    return ReplyTo(ctx.tenant_id, row.conversation_id, row.channel, row.channel_account_id,
                   recipient=row.recipient, consent=row.consent_status)


def _turn_now(session: Session, ctx: Context, row: Any) -> tuple[str | None, int, bool]:
    """Read after the claim's lock, in a statement of its own (on Postgres READ COMMITTED a subquery of the locking
    statement reads the snapshot from before a lock it waited for): the later message this one is merged into,
    held until commit; how many messages are merged straight into this one; whether an earlier message of the turn
    is still waiting (`TURN_NOW`). Held: a merge into a message answered meanwhile would be in no reply. SQLite's
    write lock (`_LOCK`) serialises claims already; on Postgres the later message's row is locked too (claims lock
    in the order of the messages: no deadlock) and must still be `received` once locked, else the turn is read
    again: it ended (this one is answered on its own), or the later message was merged into a later one still."""
    params = {"tenant": ctx.tenant_id, "conversation": row.conversation_id, "created": row.created_at,
              "message": ctx.message_id}
    hold = session.get_bind().dialect.name != "sqlite"
    for _ in range(_MERGE_TRIES):
        turn = session.execute(TURN_NOW, params).one()
        if turn.newer is None or not hold or session.execute(
                _HOLD_RECEIVED, {"message": turn.newer, "tenant": ctx.tenant_id}).first() is not None:
            return turn.newer, turn.merged, turn.earlier
    return None, turn.merged, turn.earlier  # the turn keeps changing under it: answered on its own, not lost


def reply(session: Session, ctx: Context, to: ReplyTo, *, key: str, text: str, in_reply_to_id: str,
          citations: list[dict[str, Any]] | None = None, meta: dict[str, Any] | None = None) -> StoredReply:
    """Store the bot's reply in the outcome's transaction. On a channel that delivers in process (the web chat:
    `ctx.delivery_push`) to a contact who may be sent it, this transaction is its delivery, as the dispatcher's
    would be: stored `sent`, the visitor woken on commit. Otherwise it is stored `pending` for the dispatcher
    (whose consent check then marks it `failed`)."""
    may_send = consent.may_send(to.consent or "unknown", meta)
    push = ctx.delivery_push if may_send and to.recipient is not None else None
    stored = store_reply(session, to, key=key, text=text, author="bot", in_reply_to_id=in_reply_to_id,
                         citations=citations, meta=meta, delivered=push is not None)
    if push is not None and to.recipient is not None:
        notify_on_commit(session, push, to.tenant_id, to.recipient)
    return stored


def _outbound(stored: StoredReply) -> list[outbox.Entry]:
    """The dispatcher's entry for a reply still to be delivered."""
    return [outbox.Entry.of(OUTBOUND, stored.event, stored.event.message_id)] if stored.pending else []


def answer(publisher: outbox.Publisher, clock: Callable[[], datetime], ctx: Context, draft: Draft) -> Outcome:
    with session_scope(tenant=ctx.tenant_id) as session:
        to = claim(session, ctx)
        if to is None:
            return Outcome("duplicate", ctx.message_id)
        stored = reply(session, ctx, to, key=f"reply:{ctx.message_id}", text=draft.text,
                       in_reply_to_id=ctx.message_id, citations=draft.citations,
                       meta={"pack_version": ctx.pack_version, "confidence": draft.confidence})
        _set_status(session, ctx, "answered")
        audit.write(session, ctx.tenant_id, "bot", "message.answered", "message", ctx.message_id, {
            "reply_id": stored.event.message_id,
            "pack_version": ctx.pack_version,
            "chunk_ids": [c["chunk_id"] for c in draft.citations],
        })
        pending = publisher.add(session, _outbound(stored), now=clock())
    publisher.publish(pending)
    return Outcome("answered", ctx.message_id, reply_id=stored.event.message_id, text=draft.text,
                   citations=list(draft.citations))


def tenant_notice(policies: dict[str, Any]) -> str:
    """What the customer is told while a person looks at the conversation, in the tenant's words."""
    return str(policies.get("escalation_notice") or DEFAULT_ESCALATION_NOTICE)


def escalate(publisher: outbox.Publisher, clock: Callable[[], datetime], ctx: Context,
             decision: Decision) -> Outcome:
    reason = decision.escalate_reason or "unknown"
    notice: str | None = decision.notice or tenant_notice(ctx.policies)
    if reason == "draft_review" and not ctx.policies.get("draft_notice"):
        notice = None  # a draft waiting for approval: the customer hears nothing until it is sent
    sla = sla_target(ctx.policies)
    now = clock()
    with session_scope(tenant=ctx.tenant_id) as session:
        to = claim(session, ctx)
        if to is None:
            return Outcome("duplicate", ctx.message_id)
        opened = _open_escalation(
            session, to, ctx.message_id, "bot", reason=reason, notice=notice, ctx=ctx, detail=decision.detail,
            draft=decision.draft.text if decision.draft else None,
            draft_citations=decision.draft.citations if decision.draft else None, meta=decision.meta,
            passages=ctx.retrieved or None,
            sla_state="pending" if sla else None, sla_due_at=now + sla if sla else None,
        )
        if sla:  # the timer, committed with the escalation (app/review/sla.py)
            schedule_sla(session, tenant_id=ctx.tenant_id, escalation_id=opened.escalation_id, due=now + sla,
                         now=now)
        _set_status(session, ctx, "escalated")
        pending = publisher.add(session, opened.entries, now=now)
    publisher.publish(pending)
    return Outcome("escalated", ctx.message_id, reply_id=opened.reply_id,
                   escalation_id=opened.escalation_id, reason=reason, text=notice)


@dataclass(frozen=True)
class _Opened:
    escalation_id: str
    reply_id: str | None  # the holding notice, if one was stored
    entries: list[outbox.Entry]  # the notice (if any), then EscalationOpened


def _open_escalation(session: Session, to: ReplyTo, message_id: str, actor: str, *, reason: str,
                     notice: str | None, ctx: Context | None = None, **columns: Any) -> _Opened:
    """The core of every escalation, in the caller's transaction: the escalation row (with `columns`), the
    customer's holding notice as the message's reply (delivered here as `reply` does, given the orchestrator's
    `ctx`; else by the dispatcher), the audit event and the outbox entries to add."""
    escalation_id = new_id()
    session.execute(_INSERT_ESCALATION, {
        "id": escalation_id, "tenant_id": to.tenant_id, "conversation_id": to.conversation_id,
        "message_id": message_id, "status": "open", "reason": reason, "created_at": utcnow(), **columns,
    })
    entries, reply_id = [], None
    if notice is not None:
        key, meta = f"reply:{message_id}", {"escalation_id": escalation_id}
        stored = (reply(session, ctx, to, key=key, text=notice, in_reply_to_id=message_id, meta=meta) if ctx
                  else store_reply(session, to, key=key, text=notice, author="bot", in_reply_to_id=message_id,
                                   meta=meta))
        entries.extend(_outbound(stored))
        reply_id = stored.event.message_id
    audit.write(session, to.tenant_id, actor, "escalation.opened", "escalation", escalation_id,
                {"reason": reason, "message_id": message_id})
    opened = EscalationOpened(tenant_id=to.tenant_id, escalation_id=escalation_id,
                              conversation_id=to.conversation_id, message_id=message_id, reason=reason)
    entries.append(outbox.Entry.of(EVENTS, opened))
    return _Opened(escalation_id, reply_id, entries)


def defer(clock: Callable[[], datetime], ctx: Context, event: InboundMessage, closes: datetime) -> Outcome:
    """Schedule this event's re-delivery for when the burst window closes; this consumer goes on meanwhile.
    (Delivered twice, it is scheduled twice: the second copy finds the message handled.)"""
    with session_scope(tenant=ctx.tenant_id) as session:
        outbox.add(session, [outbox.Entry.of(INBOUND, event, ctx.message_id)], now=clock(),
                   not_before=closes)
    return Outcome("deferred", ctx.message_id)


def merge(ctx: Context) -> Outcome | None:
    """Merge into the later message that is waiting (as `claim` would after answering); None if it is gone."""
    with session_scope(tenant=ctx.tenant_id) as session:
        if claim(session, ctx) is not None:
            return None  # claimed but nothing written: the message stays `received` and is answered
        status = session.execute(_STATUS, {"message": ctx.message_id, "tenant": ctx.tenant_id}).scalar_one()
    return Outcome("merged" if status == "merged" else "duplicate", ctx.message_id)


def change_consent(publisher: outbox.Publisher, clock: Callable[[], datetime], ctx: Context,
                   status: str) -> Outcome:
    """The message was an opt-out (or opt-in) keyword: the contact's consent changes and the confirmation, the
    one message an opted-out contact is sent, answers it. Never merged into a later message already stored: that
    one's turn would carry the keyword to the answer path under the old consent, and the consent would never
    change. The later message is handled after this, under the new consent (skipped after an opt-out)."""
    text = consent.confirmation(status, ctx.policies)
    with session_scope(tenant=ctx.tenant_id) as session:
        to = claim(session, ctx, may_merge=False)
        if to is None:
            return Outcome("duplicate", ctx.message_id)
        contact_id = select(Conversation.contact_id).where(Conversation.id == ctx.conversation_id).scalar_subquery()
        session.execute(update(Contact).where(Contact.tenant_id == ctx.tenant_id, Contact.id == contact_id)
                        .values(consent_status=status, consent_updated_at=utcnow(), consent_source="keyword")
                        .execution_options(synchronize_session=False))
        stored = reply(session, ctx, replace(to, consent=status), key=f"reply:{ctx.message_id}", text=text,
                       in_reply_to_id=ctx.message_id, meta={"kind": consent.CONFIRMATION})
        _set_status(session, ctx, "answered")
        audit.write(session, ctx.tenant_id, "customer", "contact.consent", "message", ctx.message_id,
                    {"status": status, "source": "keyword", "reply_id": stored.event.message_id})
        pending = publisher.add(session, _outbound(stored), now=clock())
    publisher.publish(pending)
    return Outcome("answered", ctx.message_id, reply_id=stored.event.message_id, text=text,
                   reason=f"consent_{status}")


def skip_opted_out(ctx: Context) -> Outcome:
    """A message from an opted-out contact: stored, never answered or escalated (nothing may be sent to them)."""
    with session_scope(tenant=ctx.tenant_id) as session:
        if claim(session, ctx) is None:
            return Outcome("duplicate", ctx.message_id)
        _set_status(session, ctx, "skipped")
        audit.write(session, ctx.tenant_id, "system", "message.skipped", "message", ctx.message_id,
                    {"reason": "opted_out"})
    return Outcome("skipped", ctx.message_id, reason="opted_out")


def route_to_agent(ctx: Context) -> Outcome:
    with session_scope(tenant=ctx.tenant_id) as session:
        if claim(session, ctx) is None:
            return Outcome("duplicate", ctx.message_id)
        _set_status(session, ctx, "human")
        audit.write(session, ctx.tenant_id, "system", "message.routed_to_agent", "message", ctx.message_id)
    return Outcome("human", ctx.message_id)


def mark_dead(tenant_id: str, message_id: str, reason: str) -> None:
    """Called when the bus dead-letters an inbound message: the row says so too, with the reason, and a person
    follows up. The message (and every message merged into its turn) would otherwise end unheard: it is
    escalated `processing_failed`, the customer gets the tenant's holding notice, and agents see it in the queue.
    Committed to the outbox, so the relay publishes the notice and the event whatever becomes of this process."""
    key = {"message": message_id, "tenant": tenant_id}
    with session_scope(tenant=tenant_id) as session:
        write_lock(session, key)  # locked before it is read, as `claim` does: a handler answering it now waits,
        row = session.execute(_CLAIM, key).first()  # or is waited for, never written over
        if row is None or row.status != "received":
            return
        session.execute(_SET_DEAD, {**key, "new_status": "dead", "now": utcnow(), "error": reason})
        record(session, tenant_id, "system", "message.dead_lettered", "message", message_id, {"reason": reason})
        escalated = select(ESCALATIONS.c.id).where(ESCALATIONS.c.message_id == message_id,
                                                   filter_only(ESCALATIONS.c.tenant_id) == tenant_id)
        if session.scalar(escalated) is not None:
            return
        policies = session.scalar(select(Tenant.policies).where(Tenant.id == tenant_id)) or {}
        to = ReplyTo(tenant_id, row.conversation_id, row.channel, row.channel_account_id)
        now = utcnow()
        opened = _open_escalation(session, to, message_id, "system", reason=DEAD_LETTERED,
                                  notice=tenant_notice(policies), detail=reason[:2000])
        outbox.add(session, opened.entries, now=now)


# The per-message SQL, built once (building a statement and its cache key cost more than running it on
# SQLite): each call only binds values. Core rows, not ORM objects; every statement names the tenant or a
# conversation read under it.
CONVERSATIONS: Table = Conversation.__table__  # type: ignore[assignment]
ESCALATIONS: Table = Escalation.__table__  # type: ignore[assignment]
IN_TENANT = (MESSAGES.c.id == bindparam("message"), MESSAGES.c.tenant_id == bindparam("tenant"))
_CLAIM = (
    select(MESSAGES.c.status, MESSAGES.c.created_at, MESSAGES.c.meta, MESSAGES.c.conversation_id,
           CONVERSATIONS.c.channel, CONVERSATIONS.c.channel_account_id,
           CONTACTS.c.external_id.label("recipient"), CONTACTS.c.consent_status)
    .join(CONVERSATIONS, (CONVERSATIONS.c.id == MESSAGES.c.conversation_id) & same_tenant(CONVERSATIONS, MESSAGES))
    .join(CONTACTS, (CONTACTS.c.id == CONVERSATIONS.c.contact_id) & same_tenant(CONTACTS, CONVERSATIONS))
    .where(*IN_TENANT)
    .with_for_update(of=MESSAGES)
)
_LOCK = LOCK  # SQLite's row lock (`write_lock`)
_STATUS = select(MESSAGES.c.status).where(*IN_TENANT)
_HOLD_RECEIVED = select(MESSAGES.c.id).where(*IN_TENANT, MESSAGES.c.status == "received").with_for_update()
_MERGE_TRIES = 3
_SET_STATUS = update(MESSAGES).where(*IN_TENANT).values(
    status=bindparam("new_status", type_=MESSAGES.c.status.type),
    processed_at=bindparam("now", type_=MESSAGES.c.processed_at.type),
)
_SET_DEAD = _SET_STATUS.values(error=bindparam("error", type_=MESSAGES.c.error.type))
_SET_STATUS_AND_META = _SET_STATUS.values(meta=bindparam("new_meta", type_=MESSAGES.c.meta.type))
_INSERT_ESCALATION = insert(ESCALATIONS)


def _set_status(session: Session, ctx: Context, status: str, *, meta: dict[str, Any] | None = None) -> None:
    values = {"message": ctx.message_id, "tenant": ctx.tenant_id, "new_status": status, "now": utcnow()}
    if meta is None:
        session.execute(_SET_STATUS, values)
    else:
        session.execute(_SET_STATUS_AND_META, {**values, "new_meta": meta})
