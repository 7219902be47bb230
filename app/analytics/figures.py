"""The figures of one tenant per UTC day, each from one grouped SQL query over its rows (nothing is loaded row by
row): the database returns at most a few rows per day and figure. Definitions, with the rows each one reads:
docs/analytics.md. Durations are attributed to the day they ended (the reply, the decision, the release)."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from sqlalchemy import Select, and_, case, func, literal, or_, select, union_all
from sqlalchemy.orm import Session, aliased

from app.analytics.sql import seconds_between, utc_day
from app.models import Conversation, Escalation, Handoff, LLMCall, Message

# Inbound statuses that end with an outcome: the denominator of the deflection rate.
RESOLVED_BY_BOT = "answered"
NEEDED_A_HUMAN = ("escalated", "human")
OUTCOMES = (RESOLVED_BY_BOT, *NEEDED_A_HUMAN, "dead")


@dataclass
class Duration:
    """Seconds over `count` events: the mean and the longest. Sums, so that days add up to a range exactly."""

    count: int = 0
    total_s: float = 0.0
    max_s: float | None = None

    @property
    def avg_s(self) -> float | None:
        return self.total_s / self.count if self.count else None

    def add(self, other: Duration) -> None:
        self.count += other.count
        self.total_s += other.total_s
        if other.max_s is not None:
            self.max_s = other.max_s if self.max_s is None else max(self.max_s, other.max_s)


@dataclass
class ModelUsage:
    provider: str
    model: str
    calls: int = 0
    failed: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float | None = None  # None when no call had a price

    def add(self, other: ModelUsage) -> None:
        self.calls += other.calls
        self.failed += other.failed
        self.prompt_tokens += other.prompt_tokens
        self.completion_tokens += other.completion_tokens
        if other.cost is not None:
            self.cost = (self.cost or 0.0) + other.cost


@dataclass
class Figures:
    """One day's figures (or a range's, summed by `add`)."""

    conversations_started: int = 0
    conversations_active: int = 0  # only per day: a range's total counts a conversation once per day
    messages_in: int = 0
    messages_out: int = 0
    messages_out_bot: int = 0
    messages_out_agent: int = 0
    inbound: dict[str, int] = field(default_factory=dict)  # inbound messages by status
    conversations_with_outcome: int = 0  # conversations with an inbound message that day that reached an outcome
    conversations_bot_only: int = 0  # ... every one of which the bot answered
    escalations: int = 0
    escalations_by_reason: dict[str, int] = field(default_factory=dict)
    decisions: dict[str, int] = field(default_factory=dict)  # escalations decided, by decision
    bot_first_response: Duration = field(default_factory=Duration)
    bot_resolution: Duration = field(default_factory=Duration)
    human_first_response: Duration = field(default_factory=Duration)
    human_resolution: Duration = field(default_factory=Duration)
    agent_handling: Duration = field(default_factory=Duration)
    llm: dict[tuple[str, str], ModelUsage] = field(default_factory=dict)  # (provider, model) -> usage

    @property
    def deflection(self) -> float | None:
        """Inbound messages the bot answered, over those that reached an outcome (answered, escalated, routed to
        an agent, dead-lettered). None when there were none."""
        ended = sum(self.inbound.get(s, 0) for s in OUTCOMES)
        return self.inbound.get(RESOLVED_BY_BOT, 0) / ended if ended else None

    @property
    def conversation_deflection(self) -> float | None:
        """Conversations whose messages of the day the bot answered alone, over those with a message of the day
        that reached an outcome. None when there were none."""
        if not self.conversations_with_outcome:
            return None
        return self.conversations_bot_only / self.conversations_with_outcome

    @property
    def llm_cost(self) -> float:
        return sum(u.cost or 0.0 for u in self.llm.values())

    def add(self, other: Figures) -> None:
        for name in ("conversations_started", "conversations_active", "messages_in", "messages_out",
                     "messages_out_bot", "messages_out_agent", "escalations", "conversations_with_outcome",
                     "conversations_bot_only"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for mine, theirs in ((self.inbound, other.inbound), (self.escalations_by_reason, other.escalations_by_reason),
                             (self.decisions, other.decisions)):
            for key, n in theirs.items():
                mine[key] = mine.get(key, 0) + n
        for name in ("bot_first_response", "bot_resolution", "human_first_response", "human_resolution",
                     "agent_handling"):
            getattr(self, name).add(getattr(other, name))
        for (provider, model), usage in other.llm.items():
            self.llm.setdefault((provider, model), ModelUsage(provider, model)).add(usage)


@dataclass
class Report:
    since: date
    until: date
    days: list[tuple[date, Figures]]  # every day of the range, in order, empty ones included
    total: Figures


Days = dict[date, Figures]


def _bounds(since: date, until: date) -> tuple[datetime, datetime]:
    return datetime.combine(since, time(), UTC), datetime.combine(until + timedelta(days=1), time(), UTC)


def _day(value: Any) -> date:
    return value if isinstance(value, date) else date.fromisoformat(str(value))


def _duration(n: Any, total: Any, longest: Any) -> Duration:
    return Duration(int(n or 0), float(total or 0.0), float(longest) if longest is not None else None)


def _durations(session: Session, stmt: Select[Any]) -> dict[date, Duration]:
    """Rows of (day, count, sum of seconds, max seconds)."""
    return {_day(d): _duration(n, total, longest) for d, n, total, longest in session.execute(stmt)}


def _conversations(session: Session, tenant_id: str, start: datetime, end: datetime, days: Days) -> None:
    """Conversations started."""
    created = utc_day(Conversation.created_at)
    for d, n in session.execute(
        select(created, func.count()).where(Conversation.tenant_id == tenant_id, Conversation.created_at >= start,
                                            Conversation.created_at < end).group_by(created)
    ):
        days[_day(d)].conversations_started = int(n)


def _messages(session: Session, tenant_id: str, start: datetime, end: datetime, days: Days) -> None:
    """Messages by day, direction, status and author kind; conversations with an inbound message that day."""
    m_day = utc_day(Message.created_at)
    kind = case((Message.author == "bot", "bot"), (Message.author.like("agent:%"), "agent"), else_="other")
    in_range = (Message.tenant_id == tenant_id, Message.created_at >= start, Message.created_at < end)
    for d, direction, status, who, n in session.execute(
        select(m_day, Message.direction, Message.status, kind, func.count()).where(*in_range)
        .group_by(m_day, Message.direction, Message.status, kind)
    ):
        f, n = days[_day(d)], int(n)
        if direction == "in":
            f.messages_in += n
            f.inbound[status] = f.inbound.get(status, 0) + n
        else:
            f.messages_out += n
            if who == "bot":
                f.messages_out_bot += n
            elif who == "agent":
                f.messages_out_agent += n
    for d, n in session.execute(
        select(m_day, func.count(func.distinct(Message.conversation_id)))
        .where(*in_range, Message.direction == "in").group_by(m_day)
    ):
        days[_day(d)].conversations_active = int(n)


def _conversation_outcomes(session: Session, tenant_id: str, start: datetime, end: datetime, days: Days) -> None:
    """Per conversation and day: how many of its inbound messages reached an outcome, how many the bot answered;
    then per day, the conversations with an outcome and those the bot handled alone."""
    m_day = utc_day(Message.created_at)
    in_range = (Message.tenant_id == tenant_id, Message.created_at >= start, Message.created_at < end)
    ended = func.sum(case((Message.status.in_(OUTCOMES), 1), else_=0))
    by_bot = func.sum(case((Message.status == RESOLVED_BY_BOT, 1), else_=0))
    per_conversation = (
        select(m_day.label("day"), ended.label("ended"), by_bot.label("by_bot"))
        .where(*in_range, Message.direction == "in").group_by(m_day, Message.conversation_id).subquery()
    )
    bot_only = func.sum(case((per_conversation.c.by_bot == per_conversation.c.ended, 1), else_=0))
    for d, n, alone in session.execute(
        select(per_conversation.c.day, func.count(), bot_only).where(per_conversation.c.ended > 0)
        .group_by(per_conversation.c.day)
    ):
        f = days[_day(d)]
        f.conversations_with_outcome, f.conversations_bot_only = int(n), int(alone or 0)


def _escalations(session: Session, tenant_id: str, start: datetime, end: datetime, days: Days) -> None:
    """Escalations opened, by reason; decided, by decision."""
    e_day = utc_day(Escalation.created_at)
    for d, reason, n in session.execute(
        select(e_day, Escalation.reason, func.count())
        .where(Escalation.tenant_id == tenant_id, Escalation.created_at >= start, Escalation.created_at < end)
        .group_by(e_day, Escalation.reason)
    ):
        f = days[_day(d)]
        f.escalations += int(n)
        f.escalations_by_reason[reason] = int(n)
    decided_day = utc_day(Escalation.decided_at)
    for d, decision, n in session.execute(
        select(decided_day, Escalation.decision, func.count())
        .where(Escalation.tenant_id == tenant_id, Escalation.decided_at >= start, Escalation.decided_at < end)
        .group_by(decided_day, Escalation.decision)
    ):
        days[_day(d)].decisions[decision] = int(n)


def _bot_replies(session: Session, tenant_id: str, start: datetime, end: datetime, days: Days) -> None:
    """The bot's reply to each inbound message (an answer, or the notice of an escalation): from the message to the
    reply; the answers alone are the bot's resolutions."""
    reply, asked = aliased(Message), aliased(Message)
    r_day = utc_day(reply.created_at)
    waited = seconds_between(reply.created_at, asked.created_at)
    answered = case((asked.status == RESOLVED_BY_BOT, 1), else_=0)
    for d, is_answer, n, total, longest in session.execute(
        select(r_day, answered, func.count(), func.sum(waited), func.max(waited))
        .join(asked, and_(asked.id == reply.in_reply_to_id, asked.tenant_id == tenant_id))
        .where(reply.tenant_id == tenant_id, reply.direction == "out", reply.author == "bot",
               reply.created_at >= start, reply.created_at < end)
        .group_by(r_day, answered)
    ):
        f, measured = days[_day(d)], _duration(n, total, longest)
        f.bot_first_response.add(measured)
        if is_answer:
            f.bot_resolution.add(measured)


def _escalation_times(session: Session, tenant_id: str, start: datetime, end: datetime, days: Days) -> None:
    """Escalations: resolved when decided (approve, edit, reject) or, taken over, when the agent released the
    conversation (the end of the handoff open at the decision); first answered by a person with the first agent
    message in the conversation from the escalation's opening to its resolution."""
    asked = aliased(Message)
    handoff = aliased(Handoff)
    resolved_at = case((Escalation.decision == "takeover", handoff.ended_at), else_=Escalation.decided_at)
    agent_reply = aliased(Message)
    first_agent = (
        select(func.min(agent_reply.created_at))
        # By conversation only (the escalation's, so the tenant's): a tenant filter here would lead SQLite to
        # scan the tenant's messages by time instead of the conversation's few.
        .where(agent_reply.conversation_id == Escalation.conversation_id,
               agent_reply.direction == "out", agent_reply.author.like("agent:%"),
               agent_reply.created_at >= Escalation.created_at,
               or_(resolved_at.is_(None), agent_reply.created_at <= resolved_at))
        .correlate(Escalation, handoff).scalar_subquery()
    )
    escalated = (
        select(asked.created_at.label("asked"), resolved_at.label("resolved"), first_agent.label("first_agent"))
        .select_from(Escalation)
        .join(asked, and_(asked.id == Escalation.message_id, asked.tenant_id == tenant_id))
        .outerjoin(handoff, and_(handoff.tenant_id == tenant_id, Escalation.decision == "takeover",
                                 handoff.conversation_id == Escalation.conversation_id,
                                 handoff.started_at <= Escalation.decided_at,
                                 or_(handoff.ended_at.is_(None), handoff.ended_at >= Escalation.decided_at)))
        # Both figures end at or before the resolution: escalations resolved before the range need no lookup.
        .where(Escalation.tenant_id == tenant_id, Escalation.created_at < end,
               or_(resolved_at.is_(None), resolved_at >= start))
        # Materialized: computed once per escalation. Inlined, SQLite would run the first-reply lookup once for
        # every place the outer queries name it (the day, the sum, the max, the filter).
        .cte("escalated").prefix_with("MATERIALIZED")
    )
    parts = []
    for column, target in ((escalated.c.first_agent, "human_first_response"),
                           (escalated.c.resolved, "human_resolution")):
        span = seconds_between(column, escalated.c.asked)
        parts.append(select(literal(target).label("figure"), utc_day(column).label("day"), func.count(),
                            func.sum(span), func.max(span))
                     .where(column >= start, column < end).group_by(utc_day(column)))
    for target, d, n, total, longest in session.execute(union_all(*parts)):
        setattr(days[_day(d)], target, _duration(n, total, longest))


def _handoffs(session: Session, tenant_id: str, start: datetime, end: datetime, days: Days) -> None:
    """Agent handling: handoffs ended that day, from takeover to release."""
    released = utc_day(Handoff.ended_at)
    held = seconds_between(Handoff.ended_at, Handoff.started_at)
    for d, measured in _durations(session, select(released, func.count(), func.sum(held), func.max(held)).where(
        Handoff.tenant_id == tenant_id, Handoff.ended_at >= start, Handoff.ended_at < end,
    ).group_by(released)).items():
        days[d].agent_handling = measured


def _llm(session: Session, tenant_id: str, start: datetime, end: datetime, days: Days) -> None:
    """LLM attempts by provider and model (failed ones included: they are paid for too)."""
    failed = func.sum(case((LLMCall.outcome != "ok", 1), else_=0))
    for d, provider, model, n, bad, prompt, output, cost in session.execute(
        select(LLMCall.day, LLMCall.provider, LLMCall.model, func.count(), failed, func.sum(LLMCall.prompt_tokens),
               func.sum(LLMCall.completion_tokens), func.sum(LLMCall.cost))
        .where(LLMCall.tenant_id == tenant_id, LLMCall.day >= start.date(), LLMCall.day < end.date())
        .group_by(LLMCall.day, LLMCall.provider, LLMCall.model)
    ):
        days[_day(d)].llm[(provider, model)] = ModelUsage(
            provider, model, int(n), int(bad or 0), int(prompt or 0), int(output or 0),
            float(cost) if cost is not None else None)


FAMILIES = (_conversations, _messages, _conversation_outcomes, _escalations, _bot_replies, _escalation_times,
            _handoffs, _llm)


def compute(session: Session, tenant_id: str, since: date, until: date) -> Report:
    """The tenant's figures for each UTC day from `since` to `until`, both included: one grouped query (or two)
    per family of figures, each filling in the days it has rows for."""
    start, end = _bounds(since, until)
    days: Days = defaultdict(Figures)
    for family in FAMILIES:
        family(session, tenant_id, start, end, days)
    ordered = [(since + timedelta(days=i), days.get(since + timedelta(days=i)) or Figures())
               for i in range((until - since).days + 1)]
    total = Figures()
    for _, f in ordered:
        total.add(f)
    return Report(since, until, ordered, total)


__all__ = ["Duration", "Figures", "ModelUsage", "Report", "compute"]
