"""Guardrails: pure, offline checks on customer text and on drafted answers.

* PII detection and redaction live in app/assistant/pii.py (`find_pii`, `redact_pii`).
* `detect_injection` scores a message against general prompt-injection/jailbreak patterns.
* `find_banned` and `wants_human` serve the tenant's policies.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache

# --------------------------------------------------------------------------------------------- injection


@dataclass(frozen=True)
class InjectionVerdict:
    flagged: bool
    score: float
    rules: list[str]


_I = re.IGNORECASE
# (rule name, weight, pattern). Each rule describes an attack technique, not a data set's phrasing: the words
# alone ("ignore", "jailbreak", "system") are common in benign questions, so rules require the construction.
_INJECTION_RULES: list[tuple[str, float, re.Pattern[str]]] = [
    (
        "override_instructions",
        1.0,
        re.compile(
            r"\b(?:ignore|disregard|forget|override|bypass|skip)\b[^.!?\n]{0,40}?\b(?:all\s+|any\s+|the\s+|your\s+|my\s+)?"
            r"(?:previous|prior|above|earlier|preceding|original|initial|old|system|safety|pre-?programmed)?\s*"
            r"(?:instructions?|prompts?|rules|guidelines|directives|programming|restrictions|policies|messages|"
            r"conversation|context|everything\s+(?:before|above|from|you\s+(?:were|have\s+been)\s+told)|"
            r"what\s+you\s+(?:were|have\s+been)\s+told)\b",
            _I,
        ),
    ),
    (
        "prompt_extraction",
        1.0,
        re.compile(
            r"\b(?:reveal|show|print|repeat|output|display|dump|leak|tell\s+me|give\s+me|what\s+(?:is|are|was|were))\b"
            r"[^.!?\n]{0,30}?\b(?:your|the)\s+(?:(?:initial|original|hidden|secret|full|exact|system|first)\s+)*"
            r"(?:system\s+prompt|prompt|instructions|system\s+message|rules\s+you\s+were\s+given)"
            r"|\b(?:repeat|print|output)\b[^.!?\n]{0,30}\b(?:words|text|everything|conversation)\s+(?:above|back)\b"
            r"|\b(?:repeat|print|output)\s+the\s+above\b"
            r"|\bsystem[\s_]?(?:prompt|configuration|instructions|message)\b|\bsystemPrompt\b"
            r"|\b(?:initial|starting|original|hidden|secret|pre-?prompt)\s+(?:instructions|prompt|configuration)\b"
            r"|\binitiali[sz]ation\s+(?:string|prompt)\b"
            r"|\b(?:what\s+were\s+you\s+told|I\s+was\s+instructed\s+to|my\s+instructions\s+are)\b",
            _I,
        ),
    ),
    (
        "known_jailbreak",
        1.0,
        re.compile(
            r"\bDAN\b|\bdo\s+anything\s+now\b|\bdeveloper\s+mode\b|\bjailbr(?:eak|oken)\s+(?:mode|version|AI)\b"
            r"|\b(?:STAN|DUDE|AIM|AntiGPT|BetterDAN|EvilBOT)\b|\bopposite\s+mode\b",
            re.UNICODE,
        ),
    ),
    (
        "persona_override",
        0.6,
        re.compile(
            r"\b(?:from\s+now\s+on|for\s+the\s+rest\s+of\s+(?:this|our)\s+conversation|you\s+are\s+(?:now|going\s+to\s+"
            r"(?:act|be|pretend))|you\s+will\s+(?:now\s+)?(?:act|pretend|respond|answer|roleplay)\s+as|"
            r"(?:act|behave|respond)\s+as\s+(?:if\s+you\s+(?:were|are)|an?\s+(?:AI|assistant|chatbot|character))|"
            r"pretend\s+(?:to\s+be|you\s+are)|role-?play\s+as|stay\s+in\s+character|"
            r"simulate\s+(?:an?\s+)?(?:AI|chatbot|character)|(?:play|take\s+on|assume)\s+the\s+role\s+of|(?:have|do)\s+a\s+role-?play\b|you\s+(?:now\s+)?act\s+as|let'?s\s+play\s+a\s+game|"
            r"(?:never|don'?t|do\s+not)\s+break\s+character|(?:now\s+)?acts?\s+like\s+(?:you\s+are\s+)?an?\b|"
            r"(?:respond|answer|reply)\s+(?:only\s+)?as\s+(?:if\s+you\s+were\s+)?[A-Z\"])",
            _I,
        ),
    ),
    (
        "no_limits",
        0.6,
        re.compile(
            r"\b(?:no|without(?:\s+any)?|free\s+(?:from|of)|not\s+bound\s+by|beyond|break(?:ing)?\s+(?:free\s+of|out\s+of)?)"
            r"\s+(?:any\s+|the\s+|its\s+|your\s+)?(?:typical\s+|usual\s+)?(?:rules|restrictions|limitations|limits|"
            r"filters?|filtering|censorship|guidelines|boundaries|morals|ethics|constraints|confines)\b"
            r"|\b(?:never|cannot|can'?t|won'?t)\s+(?:refuse|decline)s?\b|\b(?:amoral|unfiltered|uncensored)\b"
            r"|\bwithout\s+(?:any\s+)?regard\s+(?:for|to)\b|\bregardless\s+of\s+(?:its\s+|the\s+)?(?:ethic|moral|legal)"
            r"|\b(?:does\s+not|doesn't|don't|do\s+not)\s+have\s+(?:a|any)\s+(?:content\s+)?(?:filter|restrictions|limits)"
            r"|\bunrestricted\s+(?:access|AI|mode|version)\b"
            r"|\b(?:openai|anthropic)(?:'s)?\s+(?:content\s+)?polic(?:y|ies)\b"
            r"|\bdoes(?:n't|\s+not)\s+(?:give\s+a\s+\w+|care)\s+about\s+(?:ethic|moral|legal|rules)",
            _I,
        ),
    ),
    (
        "chat_delimiter",
        1.0,
        re.compile(
            r"(?:^|\n)\s*#{2,}\s*(?:system|instruction|assistant)\b|<\|(?:im_start|im_end|system|endoftext)\|>"
            r"|\[/?(?:SYSTEM|INST)\]|<</?SYS>>|</?system>|\bBEGIN\s+SYSTEM\s+PROMPT\b|^\s*system\s*:",
            _I | re.MULTILINE,
        ),
    ),
    (
        "dual_response",
        0.5,
        re.compile(
            r"\b(?:two|2|both)\s+(?:different\s+|separate\s+)?(?:responses|answers|paragraphs|ways)\b"
            r"|\[(?:🔒|🔓|CLASSIC|JAILBREAK|GPT|ChatGPT)[^\]]{0,20}\]",
            _I,
        ),
    ),
    (
        "model_addressing",
        0.4,
        re.compile(r"\b(?:ChatGPT|GPT-?[34]|language\s+model|large\s+language\s+model|LLM|AI\s+model)\b", _I),
    ),
]
_BASE64 = re.compile(r"(?<![A-Za-z0-9+/])[A-Za-z0-9+/]{40,}={0,2}(?![A-Za-z0-9+/=])")
_SECOND_PERSON = re.compile(
    r"\byou(?:'ll|\s+will|\s+must|\s+are|\s+should|\s+can|\s+have\s+to)\b|\byour\s+(?:responses?|answers?|replies)\b",
    _I,
)
FLAG_THRESHOLD = 1.0


def _base64_payload(text: str) -> bool:
    for m in _BASE64.finditer(text):
        chunk = m.group(0)
        try:
            raw = base64.b64decode(chunk + "=" * (-len(chunk) % 4), validate=True)
        except (binascii.Error, ValueError):
            continue
        printable = sum(32 <= b < 127 or b in (9, 10, 13) for b in raw)
        if raw and printable / len(raw) > 0.9:
            return True
    return False


def detect_injection(text: str) -> InjectionVerdict:
    """Score `text` for prompt-injection techniques; flagged when the weighted rules reach 1.0."""
    rules: list[str] = []
    score = 0.0
    for name, weight, pattern in _INJECTION_RULES:
        if pattern.search(text):
            rules.append(name)
            score += weight
    if _base64_payload(text):
        rules.append("encoded_payload")
        score += 1.0
    # A customer question is short; a long message that keeps telling the assistant what it "will" and "must"
    # do is rewriting its instructions, whatever words it uses.
    directives = len(_SECOND_PERSON.findall(text))
    if len(text) > 400 and directives >= 3:
        rules.append("instruction_rewrite")
        score += 0.6
    # `score` is the weighted sum squashed into 0..1 (three strong signals = 1.0); `flagged` uses the raw sum.
    squashed = round(min(score, 3.0) / 3.0, 3)
    return InjectionVerdict(flagged=score >= FLAG_THRESHOLD, score=squashed, rules=rules)


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
