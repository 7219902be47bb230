"""The analytics figures recomputed from the raw rows in plain Python, written apart from app/analytics (no shared
code, no SQL aggregate): what docs/analytics.md defines, row by row."""

from __future__ import annotations

from collections import defaultdict
from datetime import date, datetime
from typing import Any

from sqlalchemy import select

OUTCOMES = ("answered", "escalated", "human", "dead")


def _durations(values: list[float]) -> dict[str, Any]:
    return {"count": len(values), "total_s": sum(values), "max_s": max(values) if values else None,
            "avg_s": sum(values) / len(values) if values else None}


def rows(tenant_id: str) -> dict[str, list[Any]]:
    from app.db import session_scope
    from app.models import Conversation, Escalation, Handoff, LLMCall, Message

    with session_scope(cross_tenant="tests") as session:
        out = {name: list(session.scalars(select(model).where(model.tenant_id == tenant_id)))
               for name, model in (("conversations", Conversation), ("messages", Message),
                                   ("escalations", Escalation), ("handoffs", Handoff), ("llm_calls", LLMCall))}
        session.expunge_all()
    return out


def expected(tenant_id: str, days: list[date]) -> dict[date, dict[str, Any]]:
    data = rows(tenant_id)
    messages = data["messages"]
    inbound = {m.id: m for m in messages if m.direction == "in"}
    out: dict[date, dict[str, Any]] = {}
    durations: dict[tuple[date, str], list[float]] = defaultdict(list)

    def secs(later: datetime, earlier: datetime) -> float:
        return (later - earlier).total_seconds()

    for o in messages:
        if o.direction == "out" and o.author == "bot" and o.in_reply_to_id in inbound:
            asked = inbound[o.in_reply_to_id]
            durations[(o.created_at.date(), "bot_first_response")].append(secs(o.created_at, asked.created_at))
            if asked.status == "answered":
                durations[(o.created_at.date(), "bot_resolution")].append(secs(o.created_at, asked.created_at))
    for e in data["escalations"]:
        asked = inbound[e.message_id]
        resolved = e.decided_at
        if e.decision == "takeover":
            held = [h for h in data["handoffs"] if h.conversation_id == e.conversation_id
                    and h.started_at <= e.decided_at and (h.ended_at is None or h.ended_at >= e.decided_at)]
            assert len(held) <= 1
            resolved = held[0].ended_at if held else None
        if resolved is not None:
            durations[(resolved.date(), "human_resolution")].append(secs(resolved, asked.created_at))
        agent_times = [m.created_at for m in messages if m.direction == "out" and m.conversation_id == e.conversation_id
                       and (m.author or "").startswith("agent:") and m.created_at >= e.created_at
                       and (resolved is None or m.created_at <= resolved)]
        if agent_times:
            first = min(agent_times)
            durations[(first.date(), "human_first_response")].append(secs(first, asked.created_at))
    for h in data["handoffs"]:
        if h.ended_at is not None:
            durations[(h.ended_at.date(), "agent_handling")].append(secs(h.ended_at, h.started_at))

    for d in days:
        of_day = [m for m in messages if m.created_at.date() == d]
        ins = [m for m in of_day if m.direction == "in"]
        outs = [m for m in of_day if m.direction == "out"]
        statuses: dict[str, int] = defaultdict(int)
        for m in ins:
            statuses[m.status] += 1
        ended = sum(statuses.get(s, 0) for s in OUTCOMES)
        per_conversation: dict[str, list[str]] = defaultdict(list)
        for m in ins:
            if m.status in OUTCOMES:
                per_conversation[m.conversation_id].append(m.status)
        bot_only = sum(1 for found in per_conversation.values() if all(s == "answered" for s in found))
        escalations = [e for e in data["escalations"] if e.created_at.date() == d]
        reasons: dict[str, int] = defaultdict(int)
        for e in escalations:
            reasons[e.reason] += 1
        decisions: dict[str, int] = defaultdict(int)
        for e in data["escalations"]:
            if e.decided_at is not None and e.decided_at.date() == d:
                decisions[e.decision] += 1
        models: dict[tuple[str, str], dict[str, Any]] = {}
        for c in data["llm_calls"]:
            if c.day == d:
                u = models.setdefault((c.provider, c.model), {"provider": c.provider, "model": c.model, "calls": 0,
                                                              "failed": 0, "prompt_tokens": 0, "completion_tokens": 0,
                                                              "cost": None})
                u["calls"] += 1
                u["failed"] += c.outcome != "ok"
                u["prompt_tokens"] += c.prompt_tokens
                u["completion_tokens"] += c.completion_tokens
                if c.cost is not None:
                    u["cost"] = (u["cost"] or 0.0) + c.cost
        out[d] = {
            "conversations_started": sum(1 for c in data["conversations"] if c.created_at.date() == d),
            "conversations_active": len({m.conversation_id for m in ins}),
            "messages_in": len(ins),
            "messages_out": len(outs),
            "messages_out_bot": sum(1 for m in outs if m.author == "bot"),
            "messages_out_agent": sum(1 for m in outs if (m.author or "").startswith("agent:")),
            "inbound_by_status": dict(statuses),
            "deflection": statuses.get("answered", 0) / ended if ended else None,
            "conversations_with_outcome": len(per_conversation),
            "conversations_bot_only": bot_only,
            "conversation_deflection": bot_only / len(per_conversation) if per_conversation else None,
            "escalations": len(escalations),
            "escalations_by_reason": dict(reasons),
            "decisions": dict(decisions),
            **{name: _durations(durations[(d, name)]) for name in (
                "bot_first_response", "bot_resolution", "human_first_response", "human_resolution", "agent_handling")},
            "llm_prompt_tokens": sum(u["prompt_tokens"] for u in models.values()),
            "llm_completion_tokens": sum(u["completion_tokens"] for u in models.values()),
            "llm_cost": sum(u["cost"] or 0.0 for u in models.values()),
            "llm_by_model": [models[k] for k in sorted(models)],
        }
    return out


def total(days: dict[date, dict[str, Any]]) -> dict[str, Any]:
    """The range: counts summed, durations re-averaged from their sums."""
    result: dict[str, Any] = {}
    values = list(days.values())
    for key in ("conversations_started", "conversations_active", "messages_in", "messages_out", "messages_out_bot",
                "messages_out_agent", "escalations", "llm_prompt_tokens", "llm_completion_tokens", "llm_cost",
                "conversations_with_outcome", "conversations_bot_only"):
        result[key] = sum(v[key] for v in values)
    for key in ("inbound_by_status", "escalations_by_reason", "decisions"):
        merged: dict[str, int] = defaultdict(int)
        for v in values:
            for k, n in v[key].items():
                merged[k] += n
        result[key] = dict(merged)
    ended = sum(result["inbound_by_status"].get(s, 0) for s in OUTCOMES)
    result["deflection"] = result["inbound_by_status"].get("answered", 0) / ended if ended else None
    with_outcome = result["conversations_with_outcome"]
    result["conversation_deflection"] = result["conversations_bot_only"] / with_outcome if with_outcome else None
    for key in ("bot_first_response", "bot_resolution", "human_first_response", "human_resolution", "agent_handling"):
        count = sum(v[key]["count"] for v in values)
        summed = sum(v[key]["total_s"] for v in values)
        maxima = [v[key]["max_s"] for v in values if v[key]["max_s"] is not None]
        result[key] = {"count": count, "total_s": summed, "avg_s": summed / count if count else None,
                       "max_s": max(maxima) if maxima else None}
    return result
