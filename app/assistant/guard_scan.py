"""`switchboard guard scan`: the orchestrator's detectors over a JSONL file of texts, one verdict per line.

Each line is `{"text": "..."}`; the answer for it is `{"injection": bool, "score": float, "pii": [{"kind",
"start", "end"}]}`, in the same order. The detectors and settings are the orchestrator's: `detect_injection`
with the tenant's `injection_threshold` when a tenant is given, and the PII finder the redaction uses. Every bad
line is reported with its number and nothing is printed for a file with any: a partial array would shift every
answer after the bad line.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

from app.assistant import injection
from app.assistant.pii import find_pii

MAX_TEXT_CHARS = 100_000


class ScanError(ValueError):
    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


def _pii(text: str, recognizers: Sequence[Any]) -> list[dict[str, Any]]:
    return [{"kind": s.kind, "start": s.start, "end": s.end} for s in find_pii(text, recognizers=recognizers)]


def parse_lines(lines: Iterable[str]) -> list[str]:
    """The texts of a JSONL file, or ScanError naming every bad line (1-based) and how to fix it."""
    texts: list[str] = []
    problems: list[str] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            problems.append(f"line {number}: empty; every line must be a JSON object like {{\"text\": \"...\"}}")
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            problems.append(f"line {number}: not valid JSON ({exc.msg} at column {exc.colno})")
            continue
        if not isinstance(row, dict) or "text" not in row:
            problems.append(f"line {number}: needs a \"text\" field, e.g. {{\"text\": \"...\"}}")
            continue
        if not isinstance(row["text"], str):
            problems.append(f"line {number}: \"text\" must be a string, not {type(row['text']).__name__}")
            continue
        if len(row["text"]) > MAX_TEXT_CHARS:
            problems.append(f"line {number}: text has {len(row['text'])} characters; at most {MAX_TEXT_CHARS}")
            continue
        texts.append(row["text"])
    if problems:
        raise ScanError(problems)
    return texts


def scan(texts: Iterable[str], policies: dict[str, Any] | None = None,
         recognizers: Sequence[Any] = ()) -> list[dict[str, Any]]:
    """`recognizers`: names and addresses too, as the orchestrator adds them for a tenant with `pii_ner` on
    (`container().pii_ner.recognizers(policies)`, app/assistant/pii_ner.py)."""
    value = (policies or {}).get("injection_threshold")
    threshold = None if value is None else float(value)
    out = []
    for text in texts:
        verdict = injection.detect_injection(text, threshold)
        out.append({"injection": verdict.flagged, "score": verdict.score, "pii": _pii(text, recognizers)})
    return out
