"""The orchestrator: one inbound message in, an answer or an escalation out.

Three phases keep database transactions short and the handler idempotent:
1. read the context (message, conversation, tenant, history) and stop if the message is already handled;
2. decide, outside any transaction: guardrails, retrieval, the LLM or the offline composer;
3. write the outcome in one transaction that re-checks the message is still `received` (row lock on Postgres),
   with the reply or escalation events in the outbox (app/outbox.py), published once committed
   (app/assistant/outcomes.py).
A redelivered message (at-least-once bus, provider retry, reclaimed after a crash) finds its row handled and only
re-publishes a reply that was stored but maybe never delivered.

Bursts: a customer often writes several short messages in a row. While the tenant's `burst_window_s` after a
message is open, its event is scheduled for re-delivery when the window closes (an outbox entry with a
`not_before`), never waited for in the consumer, so other conversations and tenants go on meanwhile. A message
that a later one of the same turn supersedes is `merged` into it, and that one answers both texts as one turn
(app/assistant/turns.py: never into a later turn).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import Table, select
from sqlalchemy.orm import Session

from app import logs, metrics, tracing
from app.assistant import guardrails, injection, multilingual, outcomes
from app.assistant.composer import compose_offline
from app.assistant.drafts import STREAMING_CHANNELS, DraftStream
from app.assistant.grounding import GroundingChecker, Vetted, vet_llm_draft
from app.assistant.language import customer_language
from app.assistant.modes import effective_mode
from app.assistant.outcomes import CONVERSATIONS, IN_TENANT, Context, Decision, Outcome
from app.assistant.pii_ner import NerUnavailable, PiiNer
from app.assistant.pii_restore import PiiVault
from app.assistant.prompts import Draft, parse_llm_answer, render_messages
from app.assistant.turns import merged_into, newer_pending
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
from app.knowledge import calibration
from app.models import Conversation, Message, PackVersion, Tenant, utcnow
from app.providers.llm.base import LLMClient, LLMError
from app.providers.llm.plan import LLMPlan, tenant_plan
from app.providers.llm.router import CallTag, LLMRouter
from app.ratelimit import LLM_CALLS_PER_TENANT, RateLimited, RateLimiter
from app.tenant_scope import same_tenant
from app.tenants.quota import QuotaGate

if TYPE_CHECKING:
    from app.bootstrap import Container

log = logging.getLogger(__name__)


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
        self.push = push  # drafts of streamed replies go to open widgets through it
        self.clock = clock
        self.settings = settings
        self.limiter = limiter
        self.quota = quota
        self.retrieve = retrieve
        self.pii_ner = pii_ner  # names and addresses masked too, for tenants that turn it on
        self.grounding = grounding
        self.channels = channels  # whose gateways wait for the decision (USSD): told through `push` on commit
        # A bare client (a test, a benchmark) gets a router of its own: fallbacks, deadline and breakers apply.
        self.llm = llm if isinstance(llm, LLMRouter) else LLMRouter.from_settings(llm, self.settings)

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
        with logs.scope(event.tenant_id, event.message_id), tracing.span("orchestrate", attributes) as span:
            outcome = self.process(event)
            tracing.annotate(span, {"switchboard.outcome": outcome.status,
                                    "switchboard.escalation.reason": outcome.reason
                                    if outcome.status == "escalated" else None})
            log.debug("message %s%s", outcome.status, f" ({outcome.reason})" if outcome.reason else "")
        metrics.message_handled(outcome.status, outcome.reason)

    def process(self, event: InboundMessage) -> Outcome:
        ctx, done = self._load(event)
        if done is not None:
            return done
        assert ctx is not None
        if (consent_asked := consent.keyword(event.text, ctx.consent, ctx.channel)) is not None:
            return outcomes.change_consent(self.bus, self.clock, ctx, consent_asked)
        if ctx.consent == "withdrawn":
            return outcomes.skip_opted_out(ctx)
        if ctx.mode == "human":
            return outcomes.route_to_agent(ctx)
        if ctx.superseded and (merged := outcomes.merge(ctx)) is not None:
            return merged  # the later message answers both: no retrieval and no LLM call for this one
        window = float(ctx.policies.get("burst_window_s") or 0)
        closes = _aware(ctx.received_at) + timedelta(seconds=window)
        if window > 0 and closes > self.clock():
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
            return outcomes.escalate(self.bus, self.clock, ctx, self._localised(ctx,
                Decision(escalate_reason="human_mode", detail="the tenant's mode is human"), language, foreign))
        # A translated answer is checked whole before the customer sees any of it: no drafts stream.
        drafts = self._draft_stream(ctx) if mode == "auto" and not foreign else None
        outcome: Outcome | None = None
        try:
            decision = self._decide(ctx, text, drafts, language if foreign else None)
            if decision.answer is not None and mode == "draft":
                decision = Decision(escalate_reason="draft_review", detail="the tenant's mode is draft",
                                    draft=decision.answer, meta=decision.meta)
            if decision.answer is not None:
                with tracing.span("record answer"):
                    outcome = outcomes.answer(self.bus, self.clock, ctx, decision.answer)
                return outcome
            if drafts is not None:
                drafts.withdraw()  # before the holding notice goes out
            with tracing.span("record escalation", {"switchboard.escalation.reason": decision.escalate_reason}):
                outcome = outcomes.escalate(self.bus, self.clock, ctx,
                                            self._localised(ctx, decision, language, foreign))
            return outcome
        finally:
            if drafts is not None and (outcome is None or outcome.status != "answered"):
                drafts.withdraw()  # failed, or merged into a later message: the visitor's draft goes

    def _awaits_outcome(self, channel: str) -> bool:
        spec = self.channels.find(channel)
        return spec is not None and spec.awaits_outcome

    # -- phase 1 -----------------------------------------------------------------------------------------
    def _load(self, event: InboundMessage) -> tuple[Context | None, Outcome | None]:
        with session_scope(tenant=event.tenant_id) as session:
            # Message, conversation and tenant in one round trip; here and below, SQL built once (module end).
            row = session.execute(_LOAD, {"message": event.message_id, "tenant": event.tenant_id}).first()
            if row is None:
                raise PermanentFailure(f"message {event.message_id} not found for tenant {event.tenant_id}")
            tracing.annotate_current({"switchboard.tenant.slug": row.slug})
            if row.status != "received":
                self._republish_pending_reply(session, event.tenant_id, row.id)
                return None, Outcome("duplicate", row.id, reason=f"already {row.status}")
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
                earlier_burst=merged_into(session, event.tenant_id, row.conversation_id, row.id, row.created_at),
                superseded=newer_pending(session, event.tenant_id, row.conversation_id, row.created_at) is not None,
                channel=event.channel,
                visitor=row.contact_external_id if row.contact_channel == "webchat" else None,
                outcome_push=self.push if self._awaits_outcome(event.channel) else None,
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

    @staticmethod
    def _localised(ctx: Context, decision: Decision, language: str, foreign: bool) -> Decision:
        """An escalation of a customer who writes another language than the pack's is acknowledged in theirs
        (the tenant's own notice, in the pack's language, when no template ships for theirs)."""
        if not foreign or decision.notice is not None:
            return decision
        return replace(decision, notice=multilingual.notice(language, "escalated", ctx.persona))

    # -- phase 2 -----------------------------------------------------------------------------------------
    def _decide(self, ctx: Context, text: str, drafts: DraftStream | None = None,
                foreign: str | None = None) -> Decision:
        """`foreign`: the customer's language when it is not the pack's (app/assistant/multilingual.py)."""
        policies = ctx.policies
        with tracing.span("guardrails") as span:
            stop = self._guardrails(text, policies)
            tracing.annotate(span, {"switchboard.escalation.reason": stop.escalate_reason if stop else None})
        if stop is not None:
            return stop
        pack = multilingual.pack_language(ctx.persona)
        if foreign is not None and ctx.llm is None:
            return Decision(escalate_reason="language",
                            detail=f"the customer writes {foreign}, the pack is {pack}, and no LLM is configured",
                            notice=multilingual.notice(foreign, "language", ctx.persona))
        recognizers: Sequence[Any] = ()
        if ctx.llm is not None:
            try:
                recognizers = self.pii_ner.recognizers(policies)
            except NerUnavailable as exc:
                # Turned on but not installed: the question cannot go out masked as the tenant asked. A person
                # answers it; the operator's log says what to install.
                log.error("message %s escalated: %s", ctx.message_id, exc)
                return Decision(escalate_reason="pii_ner_unavailable", detail=str(exc))
        # Numbered placeholders out, the customer's values back in (app/assistant/pii_restore.py).
        pii = PiiVault(recognizers)
        query = text
        if foreign is not None:
            assert ctx.llm is not None
            try:
                self.limiter.hit(LLM_CALLS_PER_TENANT, ctx.tenant_id)
                with tracing.span("llm rewrite"):
                    rewrite = self.llm.complete(
                        ctx.llm, multilingual.rewrite_messages(pii.mask(text), foreign, pack, ctx.persona),
                        tag=CallTag(ctx.tenant_id, ctx.message_id))
            except RateLimited as exc:
                return Decision(escalate_reason="llm_rate_limited", detail=exc.detail)
            except LLMError as exc:
                log.warning("LLM failed to rewrite message %s: %s", ctx.message_id, exc)
                return Decision(escalate_reason=f"llm_{exc.reason}", detail=exc.detail)
            query = pii.restore(multilingual.clean_rewrite(rewrite.text)).text
            if not query:
                return Decision(escalate_reason="language", detail="the LLM gave no translation of the question")
            # The brand's handoff words and the injection rules are written in the pack's language: they read the
            # translation too.
            stop = self._guardrails(query, policies)
            if stop is not None:
                return stop
            if multilingual.same_words(query, text):
                # Nothing to translate: the detector took pack-language text for another language (fastText's
                # lite model does so for ~0.1% of English support messages). Answered as written, in one language.
                decision = self._answer(ctx, text, text, None, None, pii)
                if decision.answer is not None or decision.notice is not None:
                    return decision
                return replace(decision, notice=outcomes.tenant_notice(ctx.policies))
        return self._answer(ctx, text, query, drafts, foreign, pii)

    def _answer(self, ctx: Context, text: str, query: str, drafts: DraftStream | None, foreign: str | None,
                pii: PiiVault) -> Decision:
        """Retrieval for `query` (the customer's text, or its rewrite into the pack's language), then the LLM or the
        offline composer, and the checks of what they wrote."""
        policies = ctx.policies
        pack = multilingual.pack_language(ctx.persona)
        min_relevance, _ = calibration.in_effect(policies, ctx.calibration)  # explicit policy, else calibrated
        # One pack version per answer: the live one (a version being built beside it is never mixed in). No live
        # version (nothing ingested yet, or only a `--version-only` build) means no knowledge to answer from.
        with tracing.span("retrieval", {"switchboard.pack.version": ctx.pack_version,
                                        "switchboard.retrieval.top_k": self.settings.retrieval_top_k}) as span:
            passages = [] if ctx.pack_version is None else list(self.retrieve(
                ctx.tenant_id, query, top_k=self.settings.retrieval_top_k,
                filters={"pack_version": ctx.pack_version}))
            tracing.annotate(span, {"switchboard.retrieval.passages": len(passages),
                                    "switchboard.retrieval.best_score": float(passages[0].score) if passages else None})
        # A passage that reads as instructions to the assistant never reaches the LLM (app/assistant/injection.py).
        passages, dropped = screen_passages(passages, injection_threshold(policies))
        if dropped:
            metrics.injection_flagged("passage", len(dropped))
            log.warning("tenant %s message %s: %d retrieved passage(s) dropped as suspected injection: %s",
                        ctx.tenant_id, ctx.message_id, len(dropped), ", ".join(p.chunk_id for p, _ in dropped))
        ctx.retrieved[:] = [passage_record(p) for p in passages] + [
            {**passage_record(p), "dropped": why} for p, why in dropped]
        offline = compose_offline(query, passages, ctx.persona, min_relevance=min_relevance)
        if offline.escalate:
            return Decision(escalate_reason=offline.reason or "no_knowledge", draft=None, detail=_top(passages),
                            meta={"question_translated": query} if foreign else None)
        draft = offline
        shown: Draft | None = None  # the customer-language version of a translated answer
        # -- the tenant's plan (app/tenants/quota.py): past an allowance, its `over_quota` choice applies -------
        over_quota = self.quota.check_message(ctx.tenant_id)
        if over_quota is not None:
            log.info("tenant %s is over its plan (%s): message %s %s", ctx.tenant_id, over_quota, ctx.message_id,
                     "answered offline" if policies.get("over_quota") == "offline" else "escalated")
            if policies.get("over_quota") != "offline":
                return Decision(escalate_reason="quota_exceeded", detail=over_quota, draft=offline)
        # ------------------------------------------------------------------------------------------------------
        if ctx.llm is not None and over_quota is None:
            try:
                self.limiter.hit(LLM_CALLS_PER_TENANT, ctx.tenant_id)
            except RateLimited as exc:
                # Never dropped: a person answers it, with the offline draft to start from.
                log.warning("tenant %s is over its LLM call limit: message %s escalated", ctx.tenant_id,
                            ctx.message_id)
                return Decision(escalate_reason="llm_rate_limited", detail=exc.detail, draft=offline)
            redacted_question = pii.mask(text)
            redacted_history = [(role, pii.mask(t)) for role, t in ctx.history]
            messages = render_messages(
                ctx.persona, policies, redacted_history, passages, redacted_question,
                bilingual=(multilingual.name(foreign), multilingual.name(pack)) if foreign else None)
            plan, tag = ctx.llm.for_question(query, passages), CallTag(ctx.tenant_id, ctx.message_id)
            with tracing.span("llm", {"switchboard.llm.streamed": drafts is not None,
                                      "switchboard.llm.providers": len(plan.providers)}) as span:
                try:
                    if drafts is not None:
                        drafts.start(passages, policies)
                        completion = self.llm.stream(plan, messages, drafts.on_text, tag=tag)
                    else:
                        completion = self.llm.complete(plan, messages, tag=tag)
                except LLMError as exc:
                    tracing.failed(span, exc, exc.reason)
                    log.warning("LLM failed for message %s: %s", ctx.message_id, exc)
                    return Decision(escalate_reason=f"llm_{exc.reason}", detail=exc.detail, draft=offline)
                tracing.annotate(span, {"gen_ai.usage.input_tokens": completion.prompt_tokens,
                                        "gen_ai.usage.output_tokens": completion.completion_tokens})
            answer_text = completion.text
            if foreign is not None:
                both = multilingual.split_bilingual(completion.text)
                if both is None:
                    return Decision(escalate_reason="language", draft=offline,
                                    detail="the LLM did not give its answer in both languages")
                answer_text, translated = both
                shown = parse_llm_answer(translated, passages)
            draft = parse_llm_answer(answer_text, passages)
            if draft.escalate:
                return Decision(escalate_reason=draft.reason or "low_confidence", draft=offline)
        # The tenant's own rules first: a banned phrase is the precise reason, whatever else is wrong.
        banned = guardrails.find_banned(draft.text, policies.get("banned_phrases") or ())
        banned += guardrails.find_banned(shown.text, policies.get("banned_phrases") or ()) if shown else []
        if banned:
            return Decision(escalate_reason="banned_phrase", detail=", ".join(dict.fromkeys(banned)),
                            draft=shown or draft)
        if draft is not offline:
            # -- grounded or reviewed, PII restored (app/assistant/grounding.py) --------------------------------
            with tracing.span("grounding") as span:
                vetted = vet_llm_draft(draft, passages, ctx.persona, pii, self.grounding)
                if shown is not None:
                    vetted = _translated(vetted, shown, pii)
                tracing.annotate(span, {"switchboard.escalation.reason": vetted.escalate_reason})
            if vetted.escalate_reason is not None:
                return Decision(escalate_reason=vetted.escalate_reason, detail=vetted.detail, draft=vetted.draft,
                                meta=vetted.meta)
            draft = vetted.draft
            # ------------------------------------------------------------------------------------------------------
        max_chars = policies.get("max_reply_chars")
        if max_chars and len(draft.text) > int(max_chars):
            return Decision(escalate_reason="reply_too_long", draft=draft)
        return Decision(answer=draft)

    @staticmethod
    def _guardrails(text: str, policies: dict[str, Any]) -> Decision | None:
        """The customer's own words decide first: a request for a person, or an attempt to steer the model."""
        if guardrails.wants_human(text, policies.get("handoff_keywords") or ()):
            return Decision(escalate_reason="human_requested", detail="the customer asked for a person")
        verdict = guardrails.detect_injection(text, injection_threshold(policies))
        if verdict.flagged:
            metrics.injection_flagged("message")
            return Decision(escalate_reason="prompt_injection", detail=injection.reason(verdict))
        return None

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
           CONTACTS.c.channel.label("contact_channel"), PACK_VERSIONS.c.calibration)
    .join(CONVERSATIONS, (CONVERSATIONS.c.id == MESSAGES.c.conversation_id) & same_tenant(CONVERSATIONS, MESSAGES))
    .join(CONTACTS, (CONTACTS.c.id == CONVERSATIONS.c.contact_id) & same_tenant(CONTACTS, MESSAGES))
    .join(TENANTS, TENANTS.c.id == MESSAGES.c.tenant_id)
    .outerjoin(PACK_VERSIONS, (PACK_VERSIONS.c.tenant_id == TENANTS.c.id)
               & (PACK_VERSIONS.c.version == TENANTS.c.live_pack_version))
    .where(*IN_TENANT, MESSAGES.c.direction == "in")
)


def _translated(checked: Vetted, shown: Draft, pii: PiiVault) -> Vetted:
    """The customer's version of a translated answer whose pack-language version was `checked`: sent when that one
    passed and says the same (multilingual.translation_mismatch); an escalation keeps it as the draft an agent would
    send, with the checked version beside it."""
    meta = {**(checked.meta or {}), "checked_answer": checked.draft.text}
    restored = pii.restore(shown.text)
    draft = replace(checked.draft, text=restored.text)
    if checked.escalate_reason is not None:
        return Vetted(draft, checked.escalate_reason, checked.detail, meta)
    mismatch = multilingual.translation_mismatch(checked.draft, shown)
    if mismatch is not None:
        return Vetted(draft, "translation_mismatch", mismatch, meta)
    if restored.unresolved:
        unresolved = sorted(set(restored.unresolved))
        return Vetted(draft, "pii_placeholder",
                      f"the reply holds placeholders this customer gave no value for: {', '.join(unresolved)}",
                      {**meta, "pii_placeholders": unresolved})
    return Vetted(draft)


def injection_threshold(policies: dict[str, Any]) -> float | None:
    """The tenant's `injection_threshold` policy, or None for the model's own (chosen when it was trained)."""
    value = policies.get("injection_threshold")
    return None if value is None else float(value)


def screen_passages(passages: Sequence[Any], threshold: float | None) -> tuple[list[Any], list[tuple[Any, str]]]:
    """Retrieved passages that may reach the LLM or the offline composer, and the dropped ones with the reason.

    Chunks flagged at ingestion are quarantined and never indexed; this second look catches what an older pack
    (ingested before the scan existed) or a changed threshold lets through. A dropped passage is not shown to the
    LLM: the turn goes on without it (and escalates `no_knowledge` if nothing relevant is left); the dropped
    passage is kept on the escalation for reviewers. A chunk an admin released after review is not rescanned."""
    kept: list[Any] = []
    dropped: list[tuple[Any, str]] = []
    for p in passages:
        if getattr(p, "reviewed", False):
            kept.append(p)
            continue
        verdict = injection.passage_verdict(f"{getattr(p, 'heading', '')}\n{p.text}".strip(), threshold)
        if verdict.flagged:
            dropped.append((p, injection.reason(verdict)))
        else:
            kept.append(p)
    return kept, dropped


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def passage_record(p: Any) -> dict[str, Any]:
    """A retrieved passage as the review console shows it (stored on the escalation)."""
    return {"document": p.document, "heading": getattr(p, "heading", ""), "chunk_id": p.chunk_id,
            "text": getattr(p, "text", ""), "score": round(float(p.score), 4), "rank": getattr(p, "rank", None)}


def _top(passages: Sequence[Any]) -> str:
    if not passages:
        return "no passage found"
    best = passages[0]
    return f"best passage {best.document} scored {best.score:.2f}"
