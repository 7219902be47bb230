"""The analytics responses: per day, and the range's total. Every figure is defined in docs/analytics.md."""

from __future__ import annotations

from datetime import date

from pydantic import BaseModel, Field

from app.analytics.figures import Duration, Figures


class DurationOut(BaseModel):
    count: int = Field(description="Events measured.")
    avg_s: float | None = Field(description="Mean seconds; null when none.")
    max_s: float | None
    total_s: float = Field(description="Sum of seconds, so ranges can be re-averaged: total_s / count.")

    @classmethod
    def of(cls, d: Duration) -> DurationOut:
        return cls(count=d.count, avg_s=d.avg_s, max_s=d.max_s, total_s=d.total_s)


class ModelUsageOut(BaseModel):
    provider: str
    model: str
    calls: int = Field(description="Attempts, failed ones included.")
    failed: int
    prompt_tokens: int
    completion_tokens: int
    cost: float | None = Field(description="From the price table; null when no call had a price.")


class FiguresOut(BaseModel):
    conversations_started: int
    conversations_active: int = Field(description="Per day: conversations with an inbound message that day. In "
                                                  "`total`, the sum of the days (a conversation once per day).")
    messages_in: int
    messages_out: int
    messages_out_bot: int
    messages_out_agent: int
    inbound_by_status: dict[str, int] = Field(description="answered, escalated, human, dead, merged, received...")
    deflection: float | None = Field(description="answered / (answered + escalated + human + dead); null "
                                                 "without any.")
    conversations_with_outcome: int = Field(description="Conversations with an inbound message that day that "
                                                        "reached an outcome (a range's total adds the days up).")
    conversations_bot_only: int = Field(description="Of those, the ones whose every such message the bot answered.")
    conversation_deflection: float | None = Field(description="conversations_bot_only / conversations_with_outcome; "
                                                              "null without any.")
    escalations: int
    escalations_by_reason: dict[str, int]
    decisions: dict[str, int] = Field(description="Escalations decided, by decision.")
    bot_first_response: DurationOut
    bot_resolution: DurationOut
    human_first_response: DurationOut
    human_resolution: DurationOut
    agent_handling: DurationOut
    llm_prompt_tokens: int
    llm_completion_tokens: int
    llm_cost: float
    llm_by_model: list[ModelUsageOut]

    @classmethod
    def of(cls, f: Figures) -> FiguresOut:
        return cls(
            conversations_started=f.conversations_started, conversations_active=f.conversations_active,
            messages_in=f.messages_in, messages_out=f.messages_out, messages_out_bot=f.messages_out_bot,
            messages_out_agent=f.messages_out_agent, inbound_by_status=dict(sorted(f.inbound.items())),
            deflection=f.deflection, conversations_with_outcome=f.conversations_with_outcome,
            conversations_bot_only=f.conversations_bot_only, conversation_deflection=f.conversation_deflection,
            escalations=f.escalations,
            escalations_by_reason=dict(sorted(f.escalations_by_reason.items())),
            decisions=dict(sorted(f.decisions.items())),
            bot_first_response=DurationOut.of(f.bot_first_response), bot_resolution=DurationOut.of(f.bot_resolution),
            human_first_response=DurationOut.of(f.human_first_response),
            human_resolution=DurationOut.of(f.human_resolution), agent_handling=DurationOut.of(f.agent_handling),
            llm_prompt_tokens=sum(u.prompt_tokens for u in f.llm.values()),
            llm_completion_tokens=sum(u.completion_tokens for u in f.llm.values()),
            llm_cost=f.llm_cost,
            llm_by_model=[ModelUsageOut(**vars(u)) for _, u in sorted(f.llm.items())],
        )


class DayOut(FiguresOut):
    day: date


class AnalyticsOut(BaseModel):
    since: date
    until: date
    days: list[DayOut] = Field(description="Every UTC day of the range, in order, days without activity included.")
    total: FiguresOut = Field(description="The range: sums of the days; averages re-computed from the sums.")
