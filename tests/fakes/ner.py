"""A stand-in for the `[ner]` extra's recognizer (Presidio over a spaCy model, app/assistant/pii_ner.py), which CI
does not install: it marks the names and streets it is given, exactly where they occur. Only the wiring around the
recognizer is under test with it (who calls it, for which tenant, what happens to its spans)."""

from __future__ import annotations

from collections.abc import Iterable

from app.assistant.pii import PiiSpan


class FakeRecognizer:
    def __init__(self, names: Iterable[str], streets: Iterable[str] = ()) -> None:
        self.targets = [("PERSON", n) for n in names] + [("ADDRESS", s) for s in streets]
        self.calls = 0

    def __call__(self, text: str) -> list[PiiSpan]:
        self.calls += 1
        out = []
        for kind, value in self.targets:
            at = text.find(value)
            if at >= 0:
                out.append(PiiSpan(kind, at, at + len(value), value))
        return out
