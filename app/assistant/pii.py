"""Structured PII in customer text: where it is (`find_pii`) and the text with it replaced (`redact_pii`).

Each kind is found by a pattern and kept only when it passes the check that kind has:

* EMAIL: the address pattern.
* PHONE: Google's libphonenumber rules (the `phonenumbers` port). `PhoneNumberMatcher` runs at leniency
  POSSIBLE (a length the numbering plan allows; dates, times and page ranges rejected by the matcher) in each of
  the operator's regions (setting `SWITCHBOARD_PII_PHONE_REGIONS`, default `US,GB`; numbers written with `+` need
  none). A possible number is kept when libphonenumber calls it valid for its region (VALID), or when it is
  written the way people write phone numbers (a `+`, an area code in parentheses, three or more digit groups),
  or when a phone word precedes it ("call", "tel", "mobile"...). A run of digits after "order", "invoice",
  "ref"... is an identifier, not a number to call, unless it starts with `+`. VALID alone was measured and
  rejected: it misses numbers whose exchange is unassigned, which customers still type and which are still
  theirs (recall 0.18-0.67 on presidio_synth, see docs/benchmarks.md).
* CREDIT_CARD: 12-19 digits (Maestro has 12), one separator kind throughout, Luhn checksum.
* IBAN: ISO 13616 mod-97 checksum.
* US_SSN: `AAA-GG-SSSS` with one separator (dash, space or dot) used throughout, or nine bare digits after an
  SSN word ("SSN", "social security"); area 000, 666 and 900-999, group 00 and serial 0000 are never issued, a
  single repeated digit and the publicly voided sample numbers are rejected.
* IP_ADDRESS: IPv4 (a `/prefix` of a CIDR block is part of the span; a `:port` is not), IPv6 full, compressed,
  IPv4-mapped (`::ffff:192.0.2.1`), with a zone (`fe80::1%eth0`) or in brackets with a port; every candidate is
  checked by `ipaddress`. Dotted numbers after "version", "v" or "build" are version numbers.

URLs are not PII here (product and order links); digits inside them are never read as phone numbers. Names and
street addresses need a named-entity model: an optional extra (`app/assistant/pii_ner.py`), off by default.

Benchmark: benchmarks/pii_eval.py (rules chosen on one split of presidio_synth, reported on the other).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache

import phonenumbers
from phonenumbers import Leniency, PhoneNumberMatcher

from app.assistant.patterns import starting_with

STRUCTURED_KINDS = ("EMAIL", "PHONE", "CREDIT_CARD", "IBAN", "US_SSN", "IP_ADDRESS")
NER_KINDS = ("PERSON", "ADDRESS")  # only through the optional extra (app/assistant/pii_ner.py)
DEFAULT_PHONE_REGIONS = ("US", "GB")


@dataclass(frozen=True)
class PiiSpan:
    kind: str  # one of STRUCTURED_KINDS, or NER_KINDS when the named-entity extra is on
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


# A recognizer of other kinds (names, addresses): text in, spans out. See app/assistant/pii_ner.py.
Recognizer = Callable[[str], Iterable[PiiSpan]]

_EMAIL = re.compile(r"(?<![\w.+-])[\w.+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b")
# URLs are found only so that digits inside them are not mistaken for phone numbers.
_URL = re.compile(r"\b(?:https?://|www\.)[^\s<>\"']+", re.IGNORECASE)
_IBAN = re.compile(r"\b[A-Za-z]{2}\d{2}(?:[ ]?[A-Za-z0-9]{4}){2,7}(?:[ ]?[A-Za-z0-9]{1,3})?\b")
_CARD = re.compile(r"(?<![\d+-])\d(?:[ -]?\d){11,18}(?![\d-])")

_SSN = re.compile(r"(?<![\w.-])(\d{3})([- .])(\d{2})([- .])(\d{4})(?![\w-]|\.\d)")
_SSN_BARE = re.compile(r"(?<![\w.-])(\d{3})(\d{2})(\d{4})(?![\w-]|\.\d)")
_SSN_WORDS = re.compile(r"\b(?:ssn|ss#|ss\s?no|social\s+security(?:\s+(?:number|no|#))?|social\s+sec)\b\W{0,10}"
                        r"(?:\w+\W{1,3}){0,4}$", re.IGNORECASE)
# Publicly voided numbers (the Woolworth wallet card, SSA advertising, textbook samples).
_SSN_VOID = {"078051120", "219099999", "123456789", "111111111"}

_IPV4 = re.compile(
    r"(?<![\w.])(?:\d{1,3}\.){3}\d{1,3}(?P<cidr>/\d{1,2}(?!\d))?(?![\w]|\.\d)"
)
# Candidates only (hex, colons, dots for a mapped IPv4 tail, a zone); `ipaddress` decides.
_IPV6 = re.compile(r"(?<![\w:.])(?=[0-9A-Fa-f.]*:[0-9A-Fa-f.]*:)[0-9A-Fa-f:.]{2,45}(?:%[\w.-]{1,15})?(?![\w:])")
_VERSION_BEFORE = re.compile(r"(?:\bversion|\bv|\bbuild|\brelease|\bver\.?)\s*$", re.IGNORECASE)

_DATETIME = starting_with(r"\d", re.compile(
    r"\b\d{4}-[01]?\d-[0-3]?\d(?:[ T]\d{1,2}:\d{2}(?::\d{2})?)?\b"
    r"|(?<![\d.])[0-3]?\d[/.][01]?\d[/.](?:\d{2}|\d{4})(?![\d.]?\d)"
    r"|\b\d{1,2}:\d{2}(?::\d{2})?\b"
))
# Something phone-shaped: at least 7 digits in one run of digits and phone punctuation. Only texts with one pay
# for libphonenumber.
_PHONE_CANDIDATE = re.compile(r"(?<![\w.])[+(]?\d[\d \t().\-/]{5,}\d(?:\s?(?:x|ext\.?)\s?\d{1,5}\b)?", re.IGNORECASE)
_PHONE_WORDS = re.compile(
    r"\b(?:call|calling|phone|tel|telephone|mobile|mob|cell|cellphone|fax|whatsapp|sms|text\s+me|my\s+number|"
    r"reach\s+me|contact|landline|ring|dial|hotline|answer|answering|answered|(?:office|direct|help|support|phone)\s+line)\b[^\d]{0,20}$",
    re.IGNORECASE,
)
# The label after the number, as contact cards write it: `555 0100-Office`, `0490 39 07 81 (mobile)`,
# `213627978 - Home`, `48154443 is my cell`.
_PHONE_LABEL_AFTER = re.compile(
    r"^(?:[ \t]{0,2}[-\u2013|/,]?[ \t]{0,2}\(?(?:office|fax|home|mobile|mob|cell|work|direct|main|landline|tel|phone|"
    r"desk|whatsapp)\b|\s+is\s+my\s+(?:cell|mobile|phone|number|landline|home|work))",
    re.IGNORECASE,
)
_ID_WORDS = re.compile(
    r"\b(?:order|invoice|inv|ref|reference|tracking|account|acct|ticket|case|booking|confirmation|serial|sku|"
    r"item|model|part|po|transaction|customer\s+id|id|licen[cs]e|passport|permit|policy|membership|member|"
    r"loyalty|voucher|coupon|isbn)\b\W{0,6}(?:(?:no|number|nr|num|#)\W{0,4})?(?:is\W{0,3})?$",
    re.IGNORECASE,
)
_CURRENCY_BEFORE = re.compile(r"(?:[$€£¥]|\b(?:usd|eur|gbp|chf|paid|pay|cost|costs|price|total|amount|balance)"
                              r"(?:\s+(?:was|is|of))?)\s*$", re.IGNORECASE)
_QUANTITY_AFTER = re.compile(
    r"\s*(?:%|(?:dollars?|euros?|pounds?|usd|eur|gbp|chf|yen|items?|units?|pieces?|pcs|people|users|customers|km|"
    r"miles?|kg|lbs?|points?|times|copies|views|downloads|rows|records|bytes|kb|mb|gb)\b)",
    re.IGNORECASE,
)
# A short digit pair before a street name or after "Apt."/"Suite" is a house number, not a phone number.
_STREET_AFTER = re.compile(
    r"^,?[ \t]+(?:\w+[ \t]+){0,2}"
    r"(?:street|st|avenue|ave|road|rd|drive|dr|lane|ln|close|square|way|boulevard|blvd)\b",
    re.IGNORECASE,
)
_CAPITALISED_AFTER = re.compile(r"^,?[ \t]+[A-Z][a-z]")
_DIGIT = re.compile(r"\d")  # the same digits (any script's) as the patterns' \d
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


def ssn_valid(area: str, group: str, serial: str) -> bool:
    """The SSA's structure: no area 000, 666 or 900-999, no group 00, no serial 0000; not one digit repeated, not a
    publicly voided sample."""
    digits = area + group + serial
    return (
        area not in {"000", "666"} and not area.startswith("9") and group != "00" and serial != "0000"
        and len(set(digits)) > 1 and digits not in _SSN_VOID
    )


def _ip_valid(candidate: str) -> bool:
    try:
        ipaddress.ip_address(candidate)
    except ValueError:
        return False
    return True


def _house_number(text: str, start: int, end: int) -> bool:
    value = text[start:end]
    if sum(c.isdigit() for c in value) > 8 or value.startswith(("+", "(")):
        return False
    after = text[end : end + 40]
    if _PHONE_LABEL_AFTER.match(after):  # "52 94 12 22 Main" on a contact card: the line's label
        return False
    # A capitalised next word ("370 3911 Fourth Avenue") is far more often a street than a sentence going on.
    if _CAPITALISED_AFTER.match(after) or _STREET_AFTER.match(after):
        return True
    return bool(_ADDRESS_BEFORE.search(text[max(0, start - 20) : start]))


class _Spans:
    """Spans found so far; a later kind never overlaps an earlier one."""

    def __init__(self) -> None:
        self.found: list[PiiSpan] = []
        self.taken: list[tuple[int, int]] = []

    def free(self, start: int, end: int) -> bool:
        return all(end <= s or start >= e for s, e in self.taken)

    def add(self, kind: str, text: str, start: int, end: int, record: bool = True) -> bool:
        if not self.free(start, end):
            return False
        self.taken.append((start, end))
        if record:
            self.found.append(PiiSpan(kind, start, end, text[start:end]))
        return True


def _find_ssns(text: str, spans: _Spans) -> None:
    for m in _SSN.finditer(text):
        # Written as an SSN but never issued (or with mixed separators): set aside, not read as a phone number.
        valid = m.group(2) == m.group(4) and ssn_valid(m.group(1), m.group(3), m.group(5))
        spans.add("US_SSN", text, m.start(), m.end(), record=valid)
    for m in _SSN_BARE.finditer(text):
        # Nine bare digits are an order number as often as an SSN: only after an SSN word.
        if ssn_valid(*m.groups()) and _SSN_WORDS.search(text[max(0, m.start() - 60) : m.start()]):
            spans.add("US_SSN", text, m.start(), m.end())


def _find_ips(text: str, spans: _Spans) -> None:
    # IPv6 first: an IPv4-mapped address (::ffff:192.0.2.1) is one address, not an IPv4 one. It has two colons.
    for m in _IPV6.finditer(text) if text.count(":") >= 2 else ():
        candidate = m.group(0).rstrip(".")
        address = candidate.split("%")[0]
        if address == "::" or not any(c.isdigit() for c in address) or not _ip_valid(address):
            continue
        spans.add("IP_ADDRESS", text, m.start(), m.start() + len(candidate))
    for m in _IPV4.finditer(text):
        address = m.group(0).split("/")[0]
        if not _ip_valid(address) or _VERSION_BEFORE.search(text[max(0, m.start() - 12) : m.start()]):
            continue
        cidr = m.group("cidr")
        if cidr and int(cidr[1:]) > 32:
            spans.add("IP_ADDRESS", text, m.start(), m.start() + len(address))
        else:
            spans.add("IP_ADDRESS", text, m.start(), m.end())


def _phone_formatted(raw: str) -> bool:
    """Written the way people write phone numbers: a +, an area code in parentheses, three or more digit groups,
    a national trunk prefix 0 before a separator (`0961-7596216`) or the North American local form `NXX-XXXX`."""
    if raw.startswith("+") or "(" in raw:
        return True
    groups = re.findall(r"\d+", raw)
    if len(groups) >= 3:
        return True
    return len(groups) == 2 and (groups[0].startswith("0") or bool(re.fullmatch(r"[2-9]\d{2}[-. ]\d{4}", raw)))


def _not_a_phone(text: str, start: int, end: int) -> bool:
    """Numbers that only look like phone numbers: dotted numbers mixed with other separators (`256.1.1.1 1.2.3`),
    amounts and counts with thousands separators (`$1 200 000`, `12 345 678 items`)."""
    raw = re.sub(r"(?i)\s*(?:x|ext\.?)\s*\d{1,5}$", "", text[start:end])  # an extension is not a separator
    if raw.startswith(("+", "(")):
        return False
    separators = set(re.sub(r"[\d()]", "", raw))
    if "." in separators and (len(separators) > 1 or _VERSION_BEFORE.search(text[max(0, start - 12) : start])):
        return True
    return bool(_CURRENCY_BEFORE.search(text[max(0, start - 12) : start]) or _QUANTITY_AFTER.match(text[end:end + 20]))


def _phone_context(text: str, start: int, end: int) -> tuple[bool, bool]:
    """(a phone word just before or a phone label just after, an identifier word just before)."""
    before = text[max(0, start - 40) : start]
    labelled = bool(_PHONE_WORDS.search(before) or _PHONE_LABEL_AFTER.match(text[end:end + 30]))
    return labelled, bool(_ID_WORDS.search(before))


def _find_phones(text: str, spans: _Spans, regions: Sequence[str]) -> None:
    for c in _PHONE_CANDIDATE.finditer(text):
        if not 7 <= sum(ch.isdigit() for ch in c.group(0)) <= 20:
            continue
        # The matcher reads a window around the candidate (it checks the characters either side).
        lo, hi = max(0, c.start() - 2), min(len(text), c.end() + 2)
        window = text[lo:hi]
        accepted = False
        # A number written with + reads the same in every region: one pass of the matcher is enough.
        for region in regions[:1] if c.group(0).startswith("+") else regions:
            for match in PhoneNumberMatcher(window, region, leniency=Leniency.POSSIBLE):
                start, end = lo + match.start, lo + match.end
                raw = match.raw_string
                if (sum(ch.isdigit() for ch in raw) < 7 or not spans.free(start, end)
                        or _house_number(text, start, end) or _not_a_phone(text, start, end)):
                    continue
                phone_word, id_word = _phone_context(text, start, end)
                if id_word and not raw.startswith("+"):
                    continue
                if phonenumbers.is_valid_number(match.number) or _phone_formatted(raw) or phone_word:
                    accepted = spans.add("PHONE", text, start, end) or accepted
            if accepted:
                break
        if not accepted:
            # Labelled as a phone number ("Phone: 21 284 698 2548", "3660170548-Fax") but in no configured
            # region's plan: the customer says what it is; 7-15 digits is what ITU-T E.164 allows.
            start, end = c.span()
            phone_word, id_word = _phone_context(text, start, end)
            if (phone_word and not id_word and 7 <= sum(ch.isdigit() for ch in c.group(0)) <= 15
                    and not _house_number(text, start, end) and not _not_a_phone(text, start, end)):
                spans.add("PHONE", text, start, end)


def _find_numeric(text: str, spans: _Spans, regions: Sequence[str], kinds: Collection[str] | None) -> None:
    for m in _IBAN.finditer(text):
        # An IBAN-shaped string with a bad checksum is set aside too: its digits are not a phone number either.
        spans.add("IBAN", text, *m.span(), record=iban_valid(m.group(0)))
    for m in _CARD.finditer(text):
        digits = re.sub(r"\D", "", m.group(0))
        separators = set(re.sub(r"\d", "", m.group(0)))
        if 12 <= len(digits) <= 19 and len(separators) <= 1 and luhn_valid(digits):
            spans.add("CREDIT_CARD", text, *m.span())
    _find_ssns(text, spans)
    _find_ips(text, spans)
    for m in _DATETIME.finditer(text):
        spans.add("DATETIME", text, *m.span(), record=False)
    if kinds is None or "PHONE" in kinds:
        _find_phones(text, spans, regions)


def find_pii(text: str, kinds: Collection[str] | None = None, *,
             phone_regions: Sequence[str] | None = None,
             recognizers: Iterable[Recognizer] = ()) -> list[PiiSpan]:
    """The PII spans in `text` (of `kinds` only, when given), in order, never overlapping. `phone_regions`: where
    numbers written without a country code are read (default: the operator's setting). `recognizers`: the
    named-entity extra's (app/assistant/pii_ner.py), run after the structured kinds."""
    regions = tuple(phone_regions) if phone_regions is not None else operator_phone_regions()
    spans = _Spans()
    for m in _EMAIL.finditer(text) if "@" in text else ():  # (no scan without the one character it needs)
        spans.add("EMAIL", text, *m.span())
    for m in _URL.finditer(text):
        spans.add("URL", text, *m.span(), record=False)
    # Every kind below needs a digit (an IPv6 address is kept only with one): most customer messages have none,
    # and skip these eight scans.
    if _DIGIT.search(text):
        _find_numeric(text, spans, regions, kinds)
    for recognize in recognizers:
        for span in recognize(text):
            if spans.free(span.start, span.end):
                spans.add(span.kind, text, span.start, span.end)
    return sorted((s for s in spans.found if kinds is None or s.kind in kinds), key=lambda s: s.start)


def redact_pii(text: str, kinds: Collection[str] | None = None, *,
               recognizers: Iterable[Recognizer] = ()) -> Redaction:
    """Replace PII (of `kinds` only, when given) with `[KIND]` placeholders; spans refer to offsets in the
    original text."""
    spans = find_pii(text, kinds, recognizers=recognizers)
    out: list[str] = []
    pos = 0
    for s in spans:
        out.append(text[pos : s.start])
        out.append(f"[{s.kind}]")
        pos = s.end
    out.append(text[pos:])
    return Redaction("".join(out), spans)


@lru_cache(maxsize=1)
def _regions(setting: str) -> tuple[str, ...]:
    return parse_phone_regions(setting)


def parse_phone_regions(setting: str) -> tuple[str, ...]:
    """`"US, gb"` -> `("US", "GB")`; an unknown region is an error naming the valid form."""
    regions = tuple(r.strip().upper() for r in setting.split(",") if r.strip())
    unknown = [r for r in regions if r not in phonenumbers.SUPPORTED_REGIONS]
    if unknown:
        raise ValueError(f"unknown phone region(s) {', '.join(unknown)}: use ISO 3166 two-letter codes such as "
                         "US, GB, DE, separated by commas")
    return regions or DEFAULT_PHONE_REGIONS


def operator_phone_regions() -> tuple[str, ...]:
    from app.config import get_settings

    return _regions(get_settings().pii_phone_regions)
