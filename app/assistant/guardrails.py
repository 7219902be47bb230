"""Guardrails: pure, offline checks on customer text and on drafted answers.

* `redact_pii` replaces structured PII (emails, phone numbers, Luhn-valid card numbers, mod-97-valid IBANs,
  US SSNs, IP addresses) with typed placeholders before text is logged, sent to an LLM or shown to reviewers.
  Names and street addresses need a named-entity model; Presidio would bring spaCy plus a model that is not an
  official PyPI package, and nothing may be downloaded at run time, so those are left alone (measured in
  benchmarks/guardrails_eval.py). URLs are not redacted: in support chats they are product or order links.
* `detect_injection` (app/assistant/injection.py, re-exported here) scores text for prompt injection.
* `find_banned` and `wants_human` serve the tenant's policies.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from functools import lru_cache

from app.assistant.injection import InjectionVerdict as InjectionVerdict  # re-exported for callers
from app.assistant.injection import detect_injection as detect_injection

# --------------------------------------------------------------------------------------------------- PII


@dataclass(frozen=True)
class PiiSpan:
    kind: str  # EMAIL | PHONE | CREDIT_CARD | IBAN | US_SSN | IP_ADDRESS
    start: int
    end: int
    value: str


@dataclass(frozen=True)
class Redaction:
    text: str
    spans: list[PiiSpan] = field(default_factory=list)

    @property
    def kinds(self) -> set[str]:
        return {s.kind for s in self.spans}


_EMAIL = re.compile(r"(?<![\w.+-])[\w.+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b")
# URLs are found only so that digits inside them are not mistaken for phone numbers.
_URL = re.compile(r"\b(?:https?://|www\.)[^\s<>\"']+", re.IGNORECASE)
_IBAN = re.compile(r"\b[A-Za-z]{2}\d{2}(?:[ ]?[A-Za-z0-9]{4}){2,7}(?:[ ]?[A-Za-z0-9]{1,3})?\b")
_CARD = re.compile(r"(?<![\d+-])\d(?:[ -]?\d){11,18}(?![\d-])")
_SSN = re.compile(r"(?<![\d-])(\d{3})-(\d{2})-(\d{4})(?![\d-])")
_IPV4 = re.compile(r"(?<![\d.])(?:\d{1,3}\.){3}\d{1,3}(?!\d|\.\d)")
_IPV6 = re.compile(r"(?<![\w:])(?:[0-9A-Fa-f]{1,4}:){2,7}[0-9A-Fa-f]{0,4}(?![\w:])")
# A phone number: optional +country, then 7-15 digits in groups separated by space, dot, dash or parentheses,
# optional extension. Requires a separator or a leading + so plain order numbers stay readable.
_PHONE = re.compile(
    r"(?<![\w+])(?:\+\d{1,3}[ .-]?)?(?:\(\d{1,4}\)[ .-]?)?\d{1,5}(?:[ .-]\(?\d{1,8}\)?){1,5}"
    r"(?:\s?(?:x|ext\.?)\s?\d{1,5})?(?![\w])"
    r"|(?<![\w+])\+\d{7,15}(?!\w)"
    r"|(?<![\w+])\(\d{2,4}\)\s?\d{3,4}[ .-]?\d{3,4}(?!\w)"
    r"|(?<![\w.+-])\d{10,11}(?![\w.]|-\d)"
)
_DATE_LIKE = re.compile(r"^\d{1,4}[./-]\d{1,2}[./-]\d{1,4}$")
# Dates and times are masked out before phone matching so "2000-04-16 11:34" never reads as a number.
_DATETIME = re.compile(
    r"\b\d{4}-[01]?\d-[0-3]?\d(?:[ T]\d{1,2}:\d{2}(?::\d{2})?)?\b"
    r"|(?<![\d.])[0-3]?\d[/.][01]?\d[/.](?:\d{2}|\d{4})(?![\d.]?\d)"
    r"|\b\d{1,2}:\d{2}(?::\d{2})?\b"
)
# A short digit pair before a street name or after "Apt."/"Suite" is a house number, not a phone number.
_STREET_AFTER = re.compile(
    r"^,?[ \t]+(?:\w+[ \t]+){0,2}"
    r"(?:street|st|avenue|ave|road|rd|drive|dr|lane|ln|close|square|way|boulevard|blvd)\b",
    re.IGNORECASE,
)
_CAPITALISED_AFTER = re.compile(r"^,?[ \t]+[A-Z][a-z]")
_ADDRESS_BEFORE = re.compile(r"(?:apt|apartment|suite|unit|no|nr)\.?\s*\d*\s*$", re.IGNORECASE)


def luhn_valid(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2 == 1:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def iban_valid(candidate: str) -> bool:
    s = candidate.replace(" ", "").upper()
    if not 15 <= len(s) <= 34 or not s[:2].isalpha() or not s[2:4].isdigit():
        return False
    rearranged = s[4:] + s[:4]
    try:
        number = int("".join(str(int(ch, 36)) for ch in rearranged))
    except ValueError:
        return False
    return number % 97 == 1


def _ssn_valid(m: re.Match[str]) -> bool:
    area, group, serial = m.group(1), m.group(2), m.group(3)
    return area not in {"000", "666"} and not area.startswith("9") and group != "00" and serial != "0000"


def _ip_valid(candidate: str) -> bool:
    try:
        ipaddress.ip_address(candidate)
    except ValueError:
        return False
    return True


def _phone_valid(candidate: str) -> bool:
    digits = re.sub(r"\D", "", candidate.split("x")[0].split("ext")[0])
    if not 7 <= len(digits) <= 15:
        return False
    # 2024-05-01, 12.03.2023. Plain digit runs need 10+ digits (regex), so order numbers stay readable.
    return not _DATE_LIKE.match(candidate.strip())


def _house_number(text: str, m: re.Match[str]) -> bool:
    value = m.group(0)
    if len(re.sub(r"\D", "", value)) > 8 or value.startswith(("+", "(")):
        return False
    after = text[m.end() : m.end() + 40]
    # A capitalised next word ("370 3911 Fourth Avenue") is far more often a street than a sentence going on.
    if _CAPITALISED_AFTER.match(after) or _STREET_AFTER.match(after):
        return True
    return bool(_ADDRESS_BEFORE.search(text[max(0, m.start() - 20) : m.start()]))


def _find_spans(text: str) -> list[PiiSpan]:
    found: list[PiiSpan] = []
    taken: list[tuple[int, int]] = []

    def free(start: int, end: int) -> bool:
        return all(end <= s or start >= e for s, e in taken)

    def add(kind: str, m: re.Match[str], record: bool = True) -> None:
        start, end = m.span()
        if free(start, end):
            taken.append((start, end))
            if record:
                found.append(PiiSpan(kind, start, end, m.group(0)))

    for m in _EMAIL.finditer(text):
        add("EMAIL", m)
    for m in _URL.finditer(text):
        add("URL", m, record=False)
    for m in _IBAN.finditer(text):
        if iban_valid(m.group(0)):
            add("IBAN", m)
    for m in _CARD.finditer(text):
        digits = re.sub(r"\D", "", m.group(0))
        if 12 <= len(digits) <= 19 and luhn_valid(digits):
            add("CREDIT_CARD", m)
    for m in _SSN.finditer(text):
        if _ssn_valid(m):
            add("US_SSN", m)
    for rx in (_IPV4, _IPV6):
        for m in rx.finditer(text):
            if _ip_valid(m.group(0)):
                add("IP_ADDRESS", m)
    for m in _DATETIME.finditer(text):
        add("DATETIME", m, record=False)
    for m in _PHONE.finditer(text):
        if _phone_valid(m.group(0)) and not _house_number(text, m):
            add("PHONE", m)
    return sorted(found, key=lambda s: s.start)


def redact_pii(text: str, kinds: Collection[str] | None = None) -> Redaction:
    """Replace structured PII (of `kinds` only, when given) with `[KIND]` placeholders; spans refer to offsets in
    the original text."""
    spans = [s for s in _find_spans(text) if kinds is None or s.kind in kinds]
    out: list[str] = []
    pos = 0
    for s in spans:
        out.append(text[pos : s.start])
        out.append(f"[{s.kind}]")
        pos = s.end
    out.append(text[pos:])
    return Redaction("".join(out), spans)


# ----------------------------------------------------------------------------------------- tenant policy


@lru_cache(maxsize=4096)  # a tenant's phrases are checked on every message: compiled once each
def _phrase_pattern(phrase: str) -> re.Pattern[str]:
    words = [re.escape(w) for w in phrase.split()]
    # \b only where the phrase edge is a word character, so "$$$" or "A+" still match.
    left = r"\b" if re.match(r"\w", phrase) else ""
    right = r"\b" if re.search(r"\w$", phrase) else ""
    return re.compile(left + r"\s+".join(words) + right, re.IGNORECASE)


def find_banned(text: str, phrases: Iterable[str]) -> list[str]:
    """The banned phrases that occur in `text` (case-insensitive, whole words), in the order given."""
    return [p for p in phrases if p.strip() and _phrase_pattern(p.strip()).search(text)]


_HUMAN = re.compile(
    r"\b(?:talk|speak|chat|connect|transfer|put)\b[^.!?\n]{0,25}\b(?:human|person|agent|someone|somebody|"
    r"representative|rep|operator|staff|manager|supervisor|people)\b"
    r"|\b(?:real|live|actual)\s+(?:human|person|agent|people)\b"
    r"|\b(?:human|live)\s+(?:agent|support|help|being)\b"
    r"|\b(?:customer\s+(?:service|support)\s+)?(?:representative|operator)\b"
    r"|\b(?:not|stop)\s+(?:talking\s+to\s+)?(?:a\s+)?(?:bot|robot|machine)\b",
    re.IGNORECASE,
)


def wants_human(text: str, extra_keywords: Iterable[str] = ()) -> bool:
    """True when the customer asks for a person (or uses one of the tenant's own handoff keywords)."""
    if _HUMAN.search(text):
        return True
    return bool(find_banned(text, extra_keywords))
