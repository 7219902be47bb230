"""Guardrails: pure, offline checks on customer text and on drafted answers.

* PII detection and redaction live in app/assistant/pii.py (`find_pii`, `redact_pii`).
* `detect_injection` (app/assistant/injection.py, re-exported here) scores text for prompt injection.
* `find_banned`, `wants_human` and `injection_threshold` serve the tenant's policies.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from functools import lru_cache
from typing import Any

from app.assistant.injection import InjectionVerdict as InjectionVerdict  # re-exported for callers
from app.assistant.injection import detect_injection as detect_injection
from app.assistant.patterns import starting_with

# ----------------------------------------------------------------------------------------- tenant policy


@lru_cache(maxsize=4096)  # a tenant's phrases are checked on every message: compiled once each
def _phrase_pattern(phrase: str) -> re.Pattern[str]:
    words = [re.escape(w) for w in phrase.split()]
    # \b only where the phrase edge is a word character, so "$$$" or "A+" still match.
    left = r"\b" if re.match(r"\w", phrase) else ""
    right = r"\b" if re.search(r"\w$", phrase) else ""
    return re.compile(left + r"\s+".join(words) + right, re.IGNORECASE)


@lru_cache(maxsize=1024)
def banned_pattern(phrases: tuple[str, ...]) -> re.Pattern[str] | None:
    """One pattern that matches where any of `phrases` would (their patterns as alternatives), None for no phrase:
    one scan of the text says whether any occurs, instead of one scan per phrase."""
    patterns = [_phrase_pattern(p.strip()).pattern for p in phrases if p.strip()]
    return re.compile("|".join(f"(?:{p})" for p in patterns), re.IGNORECASE) if patterns else None


def find_banned(text: str, phrases: Iterable[str]) -> list[str]:
    """The banned phrases that occur in `text` (case-insensitive, whole words), in the order given."""
    phrases = tuple(phrases)
    pattern = banned_pattern(phrases)
    if pattern is None or not pattern.search(text):  # the usual answer, in one scan
        return []
    return [p for p in phrases if p.strip() and _phrase_pattern(p.strip()).search(text)]


_HUMAN = starting_with("achlnoprst", re.compile(
    r"\b(?:talk|speak|chat|connect|transfer|put)\b[^.!?\n]{0,25}\b(?:human|person|agent|someone|somebody|"
    r"representative|rep|operator|staff|manager|supervisor|people)\b"
    r"|\b(?:real|live|actual)\s+(?:human|person|agent|people)\b"
    r"|\b(?:human|live)\s+(?:agent|support|help|being)\b"
    r"|\b(?:customer\s+(?:service|support)\s+)?(?:representative|operator)\b"
    r"|\b(?:not|stop)\s+(?:talking\s+to\s+)?(?:a\s+)?(?:bot|robot|machine)\b",
    re.IGNORECASE,
))


def wants_human(text: str, extra_keywords: Iterable[str] = ()) -> bool:
    """True when the customer asks for a person (or uses one of the tenant's own handoff keywords)."""
    if _HUMAN.search(text):
        return True
    return bool(find_banned(text, extra_keywords))


def injection_threshold(policies: dict[str, Any]) -> float | None:
    """The tenant's `injection_threshold` policy, or None for the model's own (chosen when it was trained)."""
    value = policies.get("injection_threshold")
    return None if value is None else float(value)
