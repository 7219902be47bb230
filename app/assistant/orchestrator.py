"""The orchestrator: one inbound message in, an answer or an escalation out.

Three phases keep database transactions short and the handler idempotent:
1. read the context (message, conversation, tenant, history) and stop if the message is already handled;
2. decide, outside any transaction: guardrails, retrieval, the LLM or the offline composer;
3. write the outcome in one transaction that re-checks the message is still `received` (row lock on Postgres),
   then publish the reply or escalation event only after the commit.
A redelivered message (at-least-once bus, provider retry, reclaimed after a crash) finds its row handled and only
re-publishes a reply that was stored but maybe never delivered.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session, aliased

from app.assistant import guardrails
from app.assistant.composer import compose_offline
from app.assistant.prompts import Draft, parse_llm_answer, render_messages
from app.audit import record
from app.bus.base import Bus, Delivery, PermanentFailure
from app.config import Settings, get_settings
from app.contracts import EVENTS, EscalationOpened, Event, InboundMessage, UnknownEvent
from app.conversations.service import add_outbound, history, outbound_event, publish_outbound
from app.crypto import decrypt_json
from app.db import session_scope
from app.models import Conversation, Escalation, Message, Tenant, utcnow
from app.providers.llm.base import LLMClient, LLMConfig, LLMError
from app.ratelimit import LLM_CALLS_PER_TENANT, RateLimited, RateLimiter

log = logging.getLogger(__name__)

DEFAULT_ESCALATION_NOTICE = (
    "Thanks for your message. I've passed it to a member of our team, who will reply here shortly."
)


@dataclass(frozen=True)
class Outcome:
    status: str  # answered | escalated | human | merged | duplicate
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
    llm: LLMConfig | None
    history: list[tuple[str, str]]
    pack_version: int | None
    received_at: datetime
    earlier_burst: list[str] = field(default_factory=list)  # texts merged into this turn
    superseded: bool = False  # a later message of the conversation was already waiting when this one was read


@dataclass(frozen=True)
class Decision:
    answer: Draft | None = None
    escalate_reason: str | None = None
    detail: str | None = None
    draft: Draft | None = None


class Orchestrator:
    def __init__(
        self,
        bus: Bus,
        *,
        retrieve: Callable[..., Sequence[Any]] | None = None,
        llm: LLMClient | None = None,
        settings: Settings | None = None,
        limiter: RateLimiter | None = None,
    ) -> None:
        self.bus = bus
        self.settings = settings or get_settings()
        if limiter is None:
            from app.runtime import get_rate_limiter

            limiter = get_rate_limiter()
        self.limiter = limiter
        if retrieve is None:
            from app.knowledge.retrieval import retrieve as default_retrieve

            retrieve = default_retrieve
        self.retrieve = retrieve
        if llm is None:
            from app.runtime import get_llm_client

            llm = get_llm_client()
        self.llm = llm

    # -- bus entry point -------------------------------------------------------------------------------
    def handle(self, delivery: Delivery) -> None:
        try:
            event = Event.from_bus(delivery.fields)
        except (UnknownEvent, ValueError, KeyError) as exc:
            raise PermanentFailure(f"unreadable inbound event: {exc}") from exc
        if not isinstance(event, InboundMessage):
            raise PermanentFailure(f"expected InboundMessage on the inbound stream, got {type(event).__name__}")
        if event.tenant_id != delivery.tenant_id:
            raise PermanentFailure("event tenant does not match its stream's tenant")
        self.process(event)

    def process(self, event: InboundMessage) -> Outcome:
        ctx, done = self._load(event)
        if done is not None:
            return done
        assert ctx is not None
        if ctx.mode == "human":
            return self._route_to_agent(ctx)
        if ctx.superseded and (merged := self._merge(ctx)) is not None:
            return merged  # the later message answers both: no retrieval and no LLM call for this one
        window = float(ctx.policies.get("burst_window_s") or 0)
        wait = window - (utcnow() - _aware(ctx.received_at)).total_seconds()
        if wait > 0:
            time.sleep(wait)  # let the rest of a burst arrive; it is answered as one turn
        text = "\n".join([*ctx.earlier_burst, event.text])
        decision = self._decide(ctx, text)
        if decision.answer is not None:
            return self._answer(ctx, decision.answer)
        return self._escalate(ctx, decision)

    # -- phase 1 -----------------------------------------------------------------------------------------
    def _load(self, event: InboundMessage) -> tuple[Context | None, Outcome | None]:
        with session_scope() as session:
            row = session.execute(  # message, conversation and tenant in one round trip
                select(Message, Conversation, Tenant)
                .join(Conversation, Conversation.id == Message.conversation_id)
                .join(Tenant, Tenant.id == Message.tenant_id)
                .where(Message.id == event.message_id, Message.tenant_id == event.tenant_id,
                       Message.direction == "in")
            ).first()
            if row is None:
                raise PermanentFailure(f"message {event.message_id} not found for tenant {event.tenant_id}")
            message, conversation, tenant = row
            if message.status != "received":
                self._republish_pending_reply(session, message)
                return None, Outcome("duplicate", message.id, reason=f"already {message.status}")
            ctx = Context(
                message_id=message.id,
                tenant_id=tenant.id,
                conversation_id=conversation.id,
                mode=conversation.mode,
                persona=dict(tenant.persona or {}),
                policies=dict(tenant.policies or {}),
                llm=self._llm_config(tenant),
                history=history(
                    session, conversation.id, before_id=message.id, turns=self.settings.history_turns
                ),
                pack_version=tenant.live_pack_version,
                received_at=message.created_at,
                earlier_burst=_merged_before(session, message),
                superseded=_newer_pending(session, message) is not None,
            )
            return ctx, None

    def _republish_pending_reply(self, session: Session, message: Message) -> None:
        reply = session.scalars(
            select(Message).where(
                Message.tenant_id == message.tenant_id,
                Message.in_reply_to_id == message.id,
                Message.status == "pending",
            )
        ).first()
        if reply is not None:
            conversation = session.get_one(Conversation, reply.conversation_id)
            publish_outbound(self.bus, outbound_event(reply, conversation))

    def _llm_config(self, tenant: Tenant) -> LLMConfig | None:
        """The tenant's own endpoint when it set one, else the operator's. The operator's key only ever goes to the
        operator's URL: a tenant URL gets the tenant's own key or none, and is reached through the outbound URL
        policy (public addresses only)."""
        own: dict[str, Any] = dict((tenant.policies or {}).get("llm") or {})
        own_key = decrypt_json(tenant.llm_api_key_encrypted)["api_key"] if tenant.llm_api_key_encrypted else None
        if own.get("base_url"):
            base_url, api_key, guarded = str(own["base_url"]), own_key or "unused", True
        elif self.settings.llm_base_url:
            base_url, guarded = self.settings.llm_base_url, False
            api_key = own_key or self.settings.llm_api_key or "unused"
        else:
            return None
        return LLMConfig(
            base_url=base_url,
            api_key=api_key,
            guarded=guarded,
            model=own.get("model") or self.settings.llm_model,
            timeout_s=float(own.get("timeout_s") or self.settings.llm_timeout_s),
            max_retries=int(own.get("max_retries", self.settings.llm_max_retries)),
        )

    # -- phase 2 -----------------------------------------------------------------------------------------
    def _decide(self, ctx: Context, text: str) -> Decision:
        policies = ctx.policies
        if guardrails.wants_human(text, policies.get("handoff_keywords") or ()):
            return Decision(escalate_reason="human_requested", detail="the customer asked for a person")
        verdict = guardrails.detect_injection(text)
        if verdict.flagged:
            return Decision(escalate_reason="prompt_injection", detail=", ".join(verdict.rules))
        min_relevance = float(policies.get("min_relevance", 0.45))
        # One pack version per answer: the live one (a version being built beside it is never mixed in). No live
        # version (nothing ingested yet, or only a `--version-only` build) means no knowledge to answer from.
        passages = [] if ctx.pack_version is None else list(self.retrieve(
            ctx.tenant_id, text, top_k=self.settings.retrieval_top_k, filters={"pack_version": ctx.pack_version}))
        offline = compose_offline(text, passages, ctx.persona, min_relevance=min_relevance)
        if offline.escalate:
            return Decision(escalate_reason=offline.reason or "no_knowledge", draft=None, detail=_top(passages))
        draft = offline
        if ctx.llm is not None:
            try:
                self.limiter.hit(LLM_CALLS_PER_TENANT, ctx.tenant_id)
            except RateLimited as exc:
                # Never dropped: a person answers it, with the offline draft to start from.
                log.warning("tenant %s is over its LLM call limit: message %s escalated", ctx.tenant_id,
                            ctx.message_id)
                return Decision(escalate_reason="llm_rate_limited", detail=exc.detail, draft=offline)
            redacted_question = guardrails.redact_pii(text).text
            redacted_history = [(role, guardrails.redact_pii(t).text) for role, t in ctx.history]
            messages = render_messages(ctx.persona, policies, redacted_history, passages, redacted_question)
            try:
                completion = self.llm.complete(ctx.llm, messages)
            except LLMError as exc:
                log.warning("LLM failed for message %s: %s", ctx.message_id, exc)
                return Decision(escalate_reason=f"llm_{exc.reason}", detail=exc.detail, draft=offline)
            draft = parse_llm_answer(completion.text, passages)
            if draft.escalate:
                return Decision(escalate_reason=draft.reason or "low_confidence", draft=offline)
        banned = guardrails.find_banned(draft.text, policies.get("banned_phrases") or ())
        if banned:
            return Decision(escalate_reason="banned_phrase", detail=", ".join(banned), draft=draft)
        max_chars = policies.get("max_reply_chars")
        if max_chars and len(draft.text) > int(max_chars):
            return Decision(escalate_reason="reply_too_long", draft=draft)
        return Decision(answer=draft)

    # -- phase 3 -----------------------------------------------------------------------------------------
    def _claim(self, session: Session, ctx: Context) -> tuple[Message, Conversation] | None:
        """Lock the message row and check nobody handled it while we were thinking."""
        message, conversation = session.execute(
            select(Message, Conversation)
            .join(Conversation, Conversation.id == Message.conversation_id)
            .where(Message.id == ctx.message_id, Message.tenant_id == ctx.tenant_id)
            .with_for_update(of=Message)
        ).one()
        if message.status != "received":
            return None
        newer = _newer_pending(session, message)
        if newer is not None:
            # A later message of the same burst arrived while this one was being answered: it supersedes this
            # reply and answers both texts as one turn.
            message.status = "merged"
            message.processed_at = utcnow()
            message.meta = {**(message.meta or {}), "superseded_by": newer}
            record(session, ctx.tenant_id, "bot", "message.merged", "message", message.id, {"into": newer})
            return None
        return message, conversation

    def _answer(self, ctx: Context, draft: Draft) -> Outcome:
        with session_scope() as session:
            claimed = self._claim(session, ctx)
            if claimed is None:
                return Outcome("duplicate", ctx.message_id)
            message, conversation = claimed
            reply, _ = add_outbound(
                session,
                conversation,
                key=f"reply:{message.id}",
                text=draft.text,
                author="bot",
                in_reply_to_id=message.id,
                citations=draft.citations,
                meta={"pack_version": ctx.pack_version, "confidence": draft.confidence},
            )
            message.status = "answered"
            message.processed_at = utcnow()
            record(session, ctx.tenant_id, "bot", "message.answered", "message", message.id, {
                "reply_id": reply.id,
                "pack_version": ctx.pack_version,
                "chunk_ids": [c["chunk_id"] for c in draft.citations],
            })
            event = outbound_event(reply, conversation)
        publish_outbound(self.bus, event)
        return Outcome("answered", ctx.message_id, reply_id=event.message_id, text=draft.text,
                       citations=list(draft.citations))

    def _escalate(self, ctx: Context, decision: Decision) -> Outcome:
        reason = decision.escalate_reason or "unknown"
        notice = str(ctx.policies.get("escalation_notice") or DEFAULT_ESCALATION_NOTICE)
        with session_scope() as session:
            claimed = self._claim(session, ctx)
            if claimed is None:
                return Outcome("duplicate", ctx.message_id)
            message, conversation = claimed
            escalation = Escalation(
                tenant_id=ctx.tenant_id,
                conversation_id=conversation.id,
                message_id=message.id,
                reason=reason,
                detail=decision.detail,
                draft=decision.draft.text if decision.draft else None,
                draft_citations=decision.draft.citations if decision.draft else None,
            )
            session.add(escalation)
            session.flush()
            reply, _ = add_outbound(session, conversation, key=f"reply:{message.id}", text=notice, author="bot",
                                    in_reply_to_id=message.id, meta={"escalation_id": escalation.id})
            message.status = "escalated"
            message.processed_at = utcnow()
            record(session, ctx.tenant_id, "bot", "escalation.opened", "escalation", escalation.id,
                   {"reason": reason, "message_id": message.id})
            opened = EscalationOpened(tenant_id=ctx.tenant_id, escalation_id=escalation.id,
                                      conversation_id=conversation.id, message_id=message.id, reason=reason)
            event = outbound_event(reply, conversation)
        publish_outbound(self.bus, event)
        self.bus.publish(EVENTS, ctx.tenant_id, opened.to_bus())
        return Outcome("escalated", ctx.message_id, reply_id=event.message_id,
                       escalation_id=opened.escalation_id, reason=reason, text=notice)

    def _merge(self, ctx: Context) -> Outcome | None:
        """Merge into the later message that is waiting (as `_claim` would after answering); None if it is gone."""
        with session_scope() as session:
            if self._claim(session, ctx) is not None:
                return None  # claimed but nothing written: the message stays `received` and is answered
            status = session.get_one(Message, ctx.message_id).status  # from the identity map
        return Outcome("merged" if status == "merged" else "duplicate", ctx.message_id)

    def _route_to_agent(self, ctx: Context) -> Outcome:
        with session_scope() as session:
            claimed = self._claim(session, ctx)
            if claimed is None:
                return Outcome("duplicate", ctx.message_id)
            message, _ = claimed
            message.status = "human"
            message.processed_at = utcnow()
            record(session, ctx.tenant_id, "system", "message.routed_to_agent", "message", message.id)
        return Outcome("human", ctx.message_id)


def _tenant_message(session: Session, tenant_id: str, message_id: str) -> Message | None:
    return session.scalars(
        select(Message).where(Message.id == message_id, Message.tenant_id == tenant_id, Message.direction == "in")
    ).first()


_ENDED_TURN = aliased(Message)  # built once: an alias costs more to build than the query it is used in


def _merged_before(session: Session, message: Message) -> list[str]:
    """Texts of this conversation's messages merged into the turn that `message` ends, oldest first."""
    ended = _ENDED_TURN
    last_turn_end = select(func.max(ended.created_at)).where(
        ended.conversation_id == message.conversation_id, ended.direction == "in",
        ended.status.in_(["answered", "escalated", "human"]), ended.created_at < message.created_at,
    ).scalar_subquery()
    stmt = select(Message.text).where(
        Message.conversation_id == message.conversation_id, Message.direction == "in", Message.status == "merged",
        Message.created_at < message.created_at,
        or_(last_turn_end.is_(None), Message.created_at > last_turn_end),
    ).order_by(Message.created_at)
    return list(session.scalars(stmt))


def _newer_pending(session: Session, message: Message) -> str | None:
    return session.scalar(
        select(Message.id).where(
            Message.conversation_id == message.conversation_id, Message.direction == "in",
            Message.status == "received", Message.created_at > message.created_at,
        ).limit(1)
    )


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _top(passages: Sequence[Any]) -> str:
    if not passages:
        return "no passage found"
    best = passages[0]
    return f"best passage {best.document} scored {best.score:.2f}"


def mark_dead(tenant_id: str, message_id: str, reason: str) -> None:
    """Called when the bus dead-letters an inbound message: the row says so too, with the reason."""
    with session_scope() as session:
        message = _tenant_message(session, tenant_id, message_id)
        if message is not None and message.status == "received":
            message.status = "dead"
            message.error = reason
            record(session, tenant_id, "system", "message.dead_lettered", "message", message_id,
                   {"reason": reason})
