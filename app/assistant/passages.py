"""Retrieved passages on their way to the LLM: screened for injected instructions, and recorded as the review
console shows them (kept on an escalation, dropped ones with their reason)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from app.assistant import injection


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


def passage_record(p: Any) -> dict[str, Any]:
    """A retrieved passage as the review console shows it (stored on the escalation)."""
    return {"document": p.document, "heading": getattr(p, "heading", ""), "chunk_id": p.chunk_id,
            "text": getattr(p, "text", ""), "score": round(float(p.score), 4), "rank": getattr(p, "rank", None)}
