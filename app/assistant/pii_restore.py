"""PII both ways: the LLM sees numbered placeholders, the customer sees their own values again.

`PiiVault.mask` replaces the PII that `pii.find_pii` finds (emails, phone numbers, cards, IBANs, US SSNs, IP
addresses; names and addresses too when the tenant has the named-entity extra on, app/assistant/pii_ner.py) with
`[KIND_n]`; the same value always gets the same placeholder within one vault,
so the question and the history sent in one LLM call agree. The raw values stay in this object, in memory, for
the length of one answer: never logged, never sent.

`PiiVault.restore` puts the values back into the model's reply: `[EMAIL_1]` becomes the customer's address, and a
bare `[EMAIL]` too when the customer gave exactly one address. A placeholder that names no value this customer
gave (`[PHONE]` when they gave none, `[EMAIL]` when they gave two) cannot be restored: the reply is then
escalated (reason `pii_placeholder`) rather than the placeholder dropped, because a sentence with a hole in it
("we will email the label to .") misleads more than it helps; the agent fixes it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from app.assistant.pii import NER_KINDS, STRUCTURED_KINDS, Recognizer, find_pii, redact_pii

PII_KINDS = STRUCTURED_KINDS + NER_KINDS
# Our placeholders, numbered or bare, and the generic ones models write when they copy the style.
PLACEHOLDER = re.compile(r"\[(?P<kind>" + "|".join(PII_KINDS) + r"|REDACTED)(?:_(?P<n>\d{1,3}))?\]")


@dataclass
class Restored:
    text: str
    unresolved: list[str] = field(default_factory=list)  # the placeholders left in `text`


class PiiVault:
    def __init__(self, recognizers: Iterable[Recognizer] = ()) -> None:
        self._recognizers = list(recognizers)  # the named-entity extra's, when the tenant has it on
        self._placeholder: dict[tuple[str, str], str] = {}  # (kind, value) -> "[KIND_n]"
        self._value: dict[str, str] = {}  # "[KIND_n]" -> value

    def mask(self, text: str) -> str:
        spans = find_pii(text, recognizers=self._recognizers)
        out: list[str] = []
        pos = 0
        for span in spans:
            out.append(text[pos : span.start])
            out.append(self._name(span.kind, span.value))
            pos = span.end
        out.append(text[pos:])
        return "".join(out)

    def _name(self, kind: str, value: str) -> str:
        key = (kind, value)
        if key not in self._placeholder:
            n = sum(k == kind for k, _ in self._placeholder) + 1
            self._placeholder[key] = f"[{kind}_{n}]"
            self._value[self._placeholder[key]] = value
        return self._placeholder[key]

    def restore(self, text: str) -> Restored:
        unresolved: list[str] = []

        def put_back(m: re.Match[str]) -> str:
            value = self._value.get(m.group(0))
            if value is None and m.group("n") is None:
                values = {v for (kind, v) in self._placeholder if kind == m.group("kind")}
                value = values.pop() if len(values) == 1 else None
            if value is None:
                unresolved.append(m.group(0))
                return m.group(0)
            return value

        return Restored(PLACEHOLDER.sub(put_back, text), unresolved)


def has_placeholder(text: str) -> bool:
    return PLACEHOLDER.search(text) is not None


def mask_for_agents(text: str | None) -> str | None:
    """What an agent sees by default: the structured PII of `text` as `[KIND]` placeholders."""
    return redact_pii(text).text if text else text
