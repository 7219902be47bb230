"""The answer path of one turn (app/assistant/orchestrator.py's phase 2, outside any transaction): the customer's
words through the guardrails, a foreign question rewritten into the pack's language, retrieval from the live pack
version, the tenant's plan, the LLM (or the offline composer) and the checks of what it wrote: banned phrases,
grounding, the translation, the reply's length. The result is a `Decision`: an answer, or an escalation with its
reason and the draft an agent starts from."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

from app import metrics, tracing
from app.assistant import guardrails, injection, multilingual, outcomes
from app.assistant.composer import compose_offline
from app.assistant.drafts import DraftStream
from app.assistant.grounding import GroundingChecker, Vetted, vet_llm_draft
from app.assistant.outcomes import Context, Decision
from app.assistant.passages import passage_record, screen_passages
from app.assistant.pii_ner import NerUnavailable, PiiNer
from app.assistant.pii_restore import PiiVault
from app.assistant.prompts import Draft, parse_llm_answer, render_messages
from app.config import Settings
from app.knowledge import calibration
from app.providers.llm.base import LLMError
from app.providers.llm.router import CallTag, LLMRouter
from app.ratelimit import LLM_CALLS_PER_TENANT, RateLimited, RateLimiter
from app.tenants.quota import QuotaGate

log = logging.getLogger(__name__)


class Answerer:
    def __init__(
        self,
        *,
        retrieve: Callable[..., Sequence[Any]],
        llm: LLMRouter,
        settings: Settings,
        limiter: RateLimiter,
        quota: QuotaGate,
        pii_ner: PiiNer,
        grounding: GroundingChecker,
    ) -> None:
        self.retrieve = retrieve
        self.llm = llm
        self.settings = settings
        self.limiter = limiter
        self.quota = quota
        self.pii_ner = pii_ner  # names and addresses masked too, for tenants that turn it on
        self.grounding = grounding

    def decide(self, ctx: Context, text: str, drafts: DraftStream | None = None,
               foreign: str | None = None) -> Decision:
        """The decision on `text` (the turn's words): guardrails, the rewrite of a foreign question, then
        `_answer`. `foreign`: the customer's language when it is not the pack's (app/assistant/multilingual.py)."""
        policies = ctx.policies
        with tracing.span("guardrails") as span:
            stop = _guardrails(text, policies)
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
            stop = _guardrails(query, policies)
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
        passages, dropped = screen_passages(passages, guardrails.injection_threshold(policies))
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
                vetted = vet_llm_draft(draft, passages, ctx.persona, pii, self.grounding, ctx.tenant_id)
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


def _guardrails(text: str, policies: dict[str, Any]) -> Decision | None:
    """The customer's own words decide first: a request for a person, or an attempt to steer the model."""
    if guardrails.wants_human(text, policies.get("handoff_keywords") or ()):
        return Decision(escalate_reason="human_requested", detail="the customer asked for a person")
    verdict = guardrails.detect_injection(text, guardrails.injection_threshold(policies))
    if verdict.flagged:
        metrics.injection_flagged("message")
        return Decision(escalate_reason="prompt_injection", detail=injection.reason(verdict))
    return None


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


def _top(passages: Sequence[Any]) -> str:
    if not passages:
        return "no passage found"
    best = passages[0]
    return f"best passage {best.document} scored {best.score:.2f}"
