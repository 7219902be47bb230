"""The orchestrator: one inbound message in, an answer or an escalation out.

Three phases keep database transactions short and the handler idempotent:
1. read the context (message, conversation, tenant, history) and stop if the message is already handled;
2. decide, outside any transaction: consent, the conversation's and the tenant's mode, the burst window, then the
   answer path (app/assistant/answering.py: guardrails, retrieval, the LLM or the offline composer);
3. write the outcome in one transaction that re-checks the message is still `received` (row lock on Postgres,
   write lock on SQLite), with the reply or escalation events in the outbox (app/outbox.py), published once committed
   (app/assistant/outcomes.py). A channel that delivers in process (the web chat) gets its reply in that
   transaction: stored `sent`, the visitor woken on commit, no hop through the dispatcher.
A redelivered message (at-least-once bus, provider retry, reclaimed after a crash) finds its row handled and only
re-publishes a reply that was stored but maybe never delivered.

Bursts: a customer often writes several short messages in a row. While the tenant's `burst_window_s` after a
message is open, its event is scheduled for re-delivery when the window closes (an outbox entry with a
`not_before`), never waited for in the consumer, so other conversations and tenants go on meanwhile. A message
that a later one of the same turn supersedes is `merged` into it, and that one answers both texts as one turn
(app/assistant/turns.py: never into a later turn). When a message is merged into one already being answered (two
handlers of a conversation at once: scale-out, several answering processes), that one's claim fails with
`TurnChanged` and its turn is read and decided again, at most `TURN_READS` times; then the handling fails and the
bus retries it, so nothing is answered without a text merged into it. A message read, or claimed, while an
earlier message of its turn is still waiting (another handler is still answering it) takes the earlier messages
into its own turn (`take_over`) and is read again, so a later message's reply never goes out before an earlier
one's; read so, before any work is done for it (one LLM call, not two). Behind a consent keyword still waiting,
which is never merged, it is scheduled again `KEYWORD_WAIT` later, its conversation left free for the keyword.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import Table, select
from sqlalchemy.orm import Session

from app import logs, metrics, outbox, tracing
from app.assistant import multilingual, outcomes
from app.assistant.answering import Answerer
from app.assistant.drafts import STREAMING_CHANNELS, DraftStream
from app.assistant.grounding import GroundingChecker
from app.assistant.language import customer_language
from app.assistant.modes import effective_mode
from app.assistant.outcomes import CONVERSATIONS, IN_TENANT, Context, Decision, Outcome
from app.assistant.pii_ner import PiiNer
from app.assistant.turns import (
    EARLIER_WAITING_OF_ROW,
    MERGED_BEFORE_ROW,
    NEWER_PENDING_OF_ROW,
    KeywordWaiting,
    merged_turn,
    take_over,
)
from app.bus.base import Bus, Delivery, PermanentFailure
from app.channels import ChannelRegistry
from app.config import Settings
from app.contacts import consent
from app.contracts import Event, InboundMessage, UnknownEvent
from app.conversations.push import Push
from app.conversations.replies import outbound_event, publish_outbound
from app.conversations.service import CONTACTS, MESSAGES, history
from app.crypto import decrypt_json
from app.db import session_scope
from app.models import Conversation, Message, PackVersion, Tenant, utcnow
from app.pacing import Pacer
from app.providers.llm.base import LLMClient
from app.providers.llm.plan import LLMPlan, tenant_plan
from app.providers.llm.router import LLMRouter
from app.ratelimit import RateLimiter
from app.tenant_scope import same_tenant
from app.tenants.quota import QuotaGate

if TYPE_CHECKING:
    from app.bootstrap import Container

log = logging.getLogger(__name__)
TURN_READS = 3  # a turn that changes under its answer this often fails the handling: the bus retries it
# A message behind a consent keyword still waiting comes back this much later (an outbox entry; no delivery used).
KEYWORD_WAIT = timedelta(seconds=2)


class Orchestrator:
    def __init__(
        self,
        bus: Bus,
        *,
        retrieve: Callable[..., Sequence[Any]],
        llm: LLMRouter | LLMClient,
        settings: Settings,
        limiter: RateLimiter,
        quota: QuotaGate,
        push: Push,
        pii_ner: PiiNer,
        grounding: GroundingChecker,
        channels: ChannelRegistry,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        """Every service it uses is handed in (`Orchestrator.of` takes them from a container)."""
        self.bus = bus
        self.publisher = outbox.Publisher(bus)  # the outcomes' events; deleted from the outbox with the next outcome
        self.push = push  # drafts of streamed replies go to open widgets through it
        self.clock = clock
        self.settings = settings
        self.channels = channels  # which wait for the decision (USSD) or deliver in process (the web chat)
        # A bare client (a test, a benchmark) gets a router of its own: fallbacks, deadline and breakers apply.
        self.llm = llm if isinstance(llm, LLMRouter) else LLMRouter.from_settings(llm, self.settings)
        self.pacer = Pacer(settings.pacing_slots)  # handlers take turns at the CPU, in arrival order
        self.answers = Answerer(retrieve=retrieve, llm=self.llm, settings=settings, limiter=limiter, quota=quota,
                                pii_ner=pii_ner, grounding=grounding)

    @classmethod
    def of(cls, services: Container, **given: Any) -> Orchestrator:
        """The orchestrator on `services`' bus, stores, LLM, limiter, quota, push and clock; a keyword replaces
        one of them (`retrieve=` a test's passages, `bus=` another bus)."""
        wired: dict[str, Callable[[], Any]] = {  # built only when not given (a test's retrieval opens no store)
            "bus": lambda: services.bus, "retrieve": lambda: services.retriever, "llm": lambda: services.llm_client,
            "settings": lambda: services.settings, "limiter": lambda: services.rate_limiter,
            "quota": lambda: services.quota, "push": lambda: services.push, "pii_ner": lambda: services.pii_ner,
            "grounding": lambda: services.grounding, "channels": lambda: services.channels,
            "clock": lambda: services.clock,
        }
        if unknown := sorted(set(given) - set(wired)):
            raise TypeError(f"Orchestrator.of() got unknown services {unknown}")
        return cls(**{name: given[name] if name in given else build() for name, build in wired.items()})

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
        attributes = {"switchboard.tenant.id": event.tenant_id, "switchboard.message.id": event.message_id,
                      "switchboard.conversation.id": event.conversation_id, "switchboard.channel": event.channel}
        with self.pacer.turn(), logs.scope(event.tenant_id, event.message_id), \
                tracing.span("orchestrate", attributes) as span:
            outcome = self.process(event)
            tracing.annotate(span, {"switchboard.outcome": outcome.status,
                                    "switchboard.escalation.reason": outcome.reason
                                    if outcome.status == "escalated" else None})
            log.debug("message %s%s", outcome.status, f" ({outcome.reason})" if outcome.reason else "")
        metrics.message_handled(outcome.status, outcome.reason)

    def process(self, event: InboundMessage) -> Outcome:
        for read in range(1, TURN_READS + 1):
            ctx, done = self._load(event)
            if done is not None:
                return done
            assert ctx is not None
            try:
                # Taken over before any work is done for this one (else at its claim); not while this one waits for
                # its burst to end: the earlier one, deferred too, merges into it then, as in one process.
                if ctx.earlier_waiting and self._burst_closes(ctx) is None:
                    raise outcomes.EarlierWaiting(ctx.message_id)
                return self._decide(event, ctx)
            except outcomes.TurnChanged as changed:
                if read == TURN_READS:  # never answered without a text merged into it: the bus retries it (a
                    raise               # counted delivery: dead-lettered and escalated if it never settles)
                if isinstance(changed, outcomes.EarlierWaiting):  # never answered before an earlier message
                    try:
                        take_over(ctx.tenant_id, ctx.message_id, consent_status=ctx.consent, channel=ctx.channel)
                    except KeywordWaiting:  # comes back shortly, its conversation left free for the keyword
                        return outcomes.defer(self.clock, ctx, event, self.clock() + KEYWORD_WAIT)
                log.info("this message's turn changed while it was answered: it is read again")
        raise AssertionError("unreachable: the last read returns or raises")

    def _decide(self, event: InboundMessage, ctx: Context) -> Outcome:
        if (consent_asked := consent.keyword(event.text, ctx.consent, ctx.channel)) is not None:
            return outcomes.change_consent(self.publisher, self.clock, ctx, consent_asked)
        if ctx.consent == "withdrawn":
            return outcomes.skip_opted_out(ctx)
        if ctx.mode == "human":
            return outcomes.route_to_agent(ctx)
        if ctx.superseded and (merged := outcomes.merge(ctx)) is not None:
            return merged  # the later message answers both: no retrieval and no LLM call for this one
        if (closes := self._burst_closes(ctx)) is not None:
            # Let the rest of a burst arrive; it is answered as one turn.
            return outcomes.defer(self.clock, ctx, event, closes)
        text = "\n".join([*ctx.earlier_burst, event.text])
        # The customer's language (app/assistant/language.py): a text too short to tell keeps the conversation's.
        pack = multilingual.pack_language(ctx.persona)
        language = customer_language(text, [t for role, t in reversed(ctx.history) if role == "customer"],
                                     default=pack)
        foreign = language != pack
        # The tenant's mode (app/assistant/modes.py): `human` only acknowledges and routes; `draft` holds every
        # answer for an agent's approval (and never streams it to the visitor first).
        mode = effective_mode(ctx.policies, ctx.channel)
        if mode == "human":
            return outcomes.escalate(self.publisher, self.clock, ctx, self._localised(ctx,
                Decision(escalate_reason="human_mode", detail="the tenant's mode is human"), language, foreign))
        # A translated answer is checked whole before the customer sees any of it: no drafts stream.
        drafts = self._draft_stream(ctx) if mode == "auto" and not foreign else None
        outcome: Outcome | None = None
        try:
            decision = self.answers.decide(ctx, text, drafts, language if foreign else None)
            if decision.answer is not None and mode == "draft":
                decision = Decision(escalate_reason="draft_review", detail="the tenant's mode is draft",
                                    draft=decision.answer, meta=decision.meta)
            if decision.answer is not None:
                with tracing.span("record answer"):
                    outcome = outcomes.answer(self.publisher, self.clock, ctx, decision.answer)
                return outcome
            if drafts is not None:
                drafts.withdraw()  # before the holding notice goes out
            with tracing.span("record escalation", {"switchboard.escalation.reason": decision.escalate_reason}):
                outcome = outcomes.escalate(self.publisher, self.clock, ctx,
                                            self._localised(ctx, decision, language, foreign))
            return outcome
        finally:
            if drafts is not None and (outcome is None or outcome.status != "answered"):
                drafts.withdraw()  # failed, or merged into a later message: the visitor's draft goes

    def _burst_closes(self, ctx: Context) -> datetime | None:
        """When the tenant's burst window after this message closes, if it is still open."""
        window = float(ctx.policies.get("burst_window_s") or 0)
        closes = _aware(ctx.received_at) + timedelta(seconds=window)
        return closes if window > 0 and closes > self.clock() else None

    # -- phase 1 -----------------------------------------------------------------------------------------
    def _load(self, event: InboundMessage) -> tuple[Context | None, Outcome | None]:
        with session_scope(tenant=event.tenant_id) as session:
            # Message, conversation, tenant and the turn's state in one round trip; SQL built once (module end).
            row = session.execute(_LOAD, {"message": event.message_id, "tenant": event.tenant_id}).first()
            if row is None:
                raise PermanentFailure(f"message {event.message_id} not found for tenant {event.tenant_id}")
            tracing.annotate_current({"switchboard.tenant.slug": row.slug})
            if row.status != "received":
                self._republish_pending_reply(session, event.tenant_id, row.id)
                return None, Outcome("duplicate", row.id, reason=f"already {row.status}")
            spec = self.channels.find(event.channel)
            turn = (merged_turn(session, event.tenant_id, row.conversation_id, row.id, row.created_at)
                    if row.merged_before else ([], 0))
            ctx = Context(
                message_id=row.id,
                tenant_id=event.tenant_id,
                conversation_id=row.conversation_id,
                mode=row.mode,
                persona=dict(row.persona or {}),
                policies=dict(row.policies or {}),
                llm=self._llm_config(row.policies, row.llm_api_key_encrypted, row.llm_provider_keys_encrypted),
                history=history(
                    session, event.tenant_id, row.conversation_id, before_id=row.id, turns=self.settings.history_turns
                ),
                pack_version=row.live_pack_version,
                received_at=row.created_at,
                earlier_burst=turn[0],
                merged_directly=turn[1],
                superseded=row.newer_pending is not None,
                earlier_waiting=bool(row.earlier_waiting),
                channel=event.channel,
                visitor=row.contact_external_id if row.contact_channel == "webchat" else None,
                # A gateway that waits for the decision (USSD); a channel whose delivery is a database write (the
                # web chat), which the outcome's transaction then does.
                outcome_push=self.push if spec is not None and spec.awaits_outcome else None,
                delivery_push=self.push if spec is not None and spec.sender is not None and spec.sender.in_process
                else None,
                consent=row.consent_status or "unknown",
                calibration=row.calibration,
            )
            return ctx, None

    def _republish_pending_reply(self, session: Session, tenant_id: str, message_id: str) -> None:
        reply = session.scalars(
            select(Message).where(
                Message.tenant_id == tenant_id,
                Message.in_reply_to_id == message_id,
                Message.status == "pending",
            )
        ).first()
        if reply is not None:
            conversation = session.get_one(Conversation, reply.conversation_id)
            publish_outbound(self.bus, outbound_event(reply, conversation))

    def _llm_config(self, policies: dict[str, Any] | None, llm_api_key_encrypted: str | None,
                    provider_keys_encrypted: str | None = None) -> LLMPlan | None:
        """The tenant's ordered LLM providers (app/providers/llm/plan.py): its own endpoints when it set them,
        else the operator's. The operator's key only ever goes to the operator's URLs: a tenant URL gets the
        tenant's own key or none, and is reached through the outbound URL policy (public addresses only)."""
        own_key = decrypt_json(llm_api_key_encrypted)["api_key"] if llm_api_key_encrypted else None
        keys = decrypt_json(provider_keys_encrypted) if provider_keys_encrypted else None
        return tenant_plan(self.settings, policies, own_key, keys)

    # -- phase 2, around the answer path -------------------------------------------------------------------
    @staticmethod
    def _localised(ctx: Context, decision: Decision, language: str, foreign: bool) -> Decision:
        """An escalation of a customer who writes another language than the pack's is acknowledged in theirs
        (the tenant's own notice, in the pack's language, when no template ships for theirs)."""
        if not foreign or decision.notice is not None:
            return decision
        return replace(decision, notice=multilingual.notice(language, "escalated", ctx.persona))

    def _draft_stream(self, ctx: Context) -> DraftStream | None:
        """Drafts for a visitor who can watch the answer being written: an LLM that streams, a channel that shows
        partial text, streaming allowed by the operator and the tenant, and a web chat visitor to show it to (read
        with the context)."""
        if (ctx.llm is None or ctx.channel not in STREAMING_CHANNELS or not self.settings.webchat_stream_replies
                or ctx.policies.get("stream_replies") is False or not self.llm.can_stream):
            return None
        return DraftStream(self.push, tenant_id=ctx.tenant_id, conversation_id=ctx.conversation_id,
                           reply_to=ctx.message_id, interval_s=self.settings.webchat_draft_interval_ms / 1000,
                           visitor=ctx.visitor)


# The per-message SQL, built once (building a statement and its cache key cost more than running it on
# SQLite): each call only binds values. Core rows, not ORM objects; every statement names the tenant or a
# conversation read under it.
TENANTS: Table = Tenant.__table__  # type: ignore[assignment]
PACK_VERSIONS: Table = PackVersion.__table__  # type: ignore[assignment]
_LOAD = (
    select(MESSAGES.c.id, MESSAGES.c.status, MESSAGES.c.created_at, MESSAGES.c.conversation_id, CONVERSATIONS.c.mode,
           TENANTS.c.persona, TENANTS.c.policies, TENANTS.c.llm_api_key_encrypted,
           TENANTS.c.llm_provider_keys_encrypted, TENANTS.c.live_pack_version, TENANTS.c.slug,
           CONTACTS.c.consent_status, CONTACTS.c.external_id.label("contact_external_id"),
           CONTACTS.c.channel.label("contact_channel"), PACK_VERSIONS.c.calibration,
           # The turn's checks (app/assistant/turns.py) in the same round trip.
           NEWER_PENDING_OF_ROW.scalar_subquery().label("newer_pending"), MERGED_BEFORE_ROW.label("merged_before"),
           EARLIER_WAITING_OF_ROW.label("earlier_waiting"))
    .join(CONVERSATIONS, (CONVERSATIONS.c.id == MESSAGES.c.conversation_id) & same_tenant(CONVERSATIONS, MESSAGES))
    .join(CONTACTS, (CONTACTS.c.id == CONVERSATIONS.c.contact_id) & same_tenant(CONTACTS, MESSAGES))
    .join(TENANTS, TENANTS.c.id == MESSAGES.c.tenant_id)
    .outerjoin(PACK_VERSIONS, (PACK_VERSIONS.c.tenant_id == TENANTS.c.id)
               & (PACK_VERSIONS.c.version == TENANTS.c.live_pack_version))
    .where(*IN_TENANT, MESSAGES.c.direction == "in")
)


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)

