"""The CSV export: one row per UTC day, a fixed set of columns followed by one per escalation reason and per LLM
model seen in the range (so a spreadsheet can sum or chart any of them)."""

from __future__ import annotations

import csv
import io

from app.analytics.figures import Duration, Report

FIXED = ["day", "conversations_started", "conversations_active", "messages_in", "messages_out",
         "messages_out_bot", "messages_out_agent", "answered", "escalated", "routed_to_agent", "dead", "merged",
         "deflection", "conversations_with_outcome", "conversations_bot_only", "conversation_deflection",
         "escalations"]
DURATIONS = ["bot_first_response", "bot_resolution", "human_first_response", "human_resolution", "agent_handling"]
LLM = ["llm_calls", "llm_prompt_tokens", "llm_completion_tokens", "llm_cost"]


def _seconds(value: float | None) -> str:
    return "" if value is None else f"{value:.3f}"


def to_csv(report: Report) -> str:
    reasons = sorted({r for _, f in report.days for r in f.escalations_by_reason})
    models = sorted({key for _, f in report.days for key in f.llm})
    header = [*FIXED, *(f"escalations:{r}" for r in reasons)]
    for name in DURATIONS:
        header += [f"{name}_count", f"{name}_avg_s", f"{name}_max_s"]
    header += LLM
    for provider, model in models:
        header += [f"{suffix}:{provider}/{model}" for suffix in ("llm_prompt_tokens", "llm_completion_tokens",
                                                                 "llm_cost")]
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(header)
    for day, f in report.days:
        row: list[object] = [
            day.isoformat(), f.conversations_started, f.conversations_active, f.messages_in, f.messages_out,
            f.messages_out_bot, f.messages_out_agent, f.inbound.get("answered", 0), f.inbound.get("escalated", 0),
            f.inbound.get("human", 0), f.inbound.get("dead", 0), f.inbound.get("merged", 0),
            "" if f.deflection is None else f"{f.deflection:.4f}", f.conversations_with_outcome,
            f.conversations_bot_only, "" if f.conversation_deflection is None else f"{f.conversation_deflection:.4f}",
            f.escalations,
            *(f.escalations_by_reason.get(r, 0) for r in reasons),
        ]
        for name in DURATIONS:
            d: Duration = getattr(f, name)
            row += [d.count, _seconds(d.avg_s), _seconds(d.max_s)]
        usage = f.llm.values()
        row += [sum(u.calls for u in usage), sum(u.prompt_tokens for u in usage),
                sum(u.completion_tokens for u in usage), f"{f.llm_cost:.6f}"]
        for key in models:
            u = f.llm.get(key)
            row += [u.prompt_tokens, u.completion_tokens, "" if u.cost is None else f"{u.cost:.6f}"] if u else [
                0, 0, ""]
        writer.writerow(row)
    return out.getvalue()
