"""Prompt-injection detection, offline, in two layers.

1. Rules (`rule_hits`): regular expressions for attack techniques (overriding instructions, extracting the
   system prompt, known jailbreak personas, chat-template delimiters, encoded payloads, instructions addressed to
   the assistant inside a document). Weighted; weights adding up to RULE_FLAG flag the text on their own.
2. A learned linear model (`InjectionModel`): logistic regression over hashed word and character n-grams,
   trained in the repo on public data kept apart from the evaluation set
   (benchmarks/train_injection.py rebuilds `injection_model.npz` deterministically; docs/injection.md names the
   sources and licences). Inference is a sparse dot product in numpy: no scikit-learn at run time.

`detect_injection(text)` combines them into one score in [0, 1]: the model's probability, raised to at least
the threshold when the rules flag the text, so `flagged == score >= threshold` always holds. The default
threshold was chosen on a tuning split (never on the reported one) and ships inside the model file; a tenant can
set its own (`injection_threshold` in its policies).
"""

from __future__ import annotations

import base64
import binascii
import itertools
import math
import re
import unicodedata
import zlib
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

from app.assistant.patterns import starting_with

MODEL_FILE = Path(__file__).with_name("injection_model.npz")
HASH_BITS = 17  # 131,072 hashed n-gram features
MAX_HEAD, MAX_TAIL = 3000, 1000  # characters of a long text the model reads (the rules read all of it)


@dataclass(frozen=True)
class InjectionVerdict:
    flagged: bool
    score: float  # combined, in [0, 1]; flagged exactly when score >= threshold
    rules: list[str] = field(default_factory=list)
    model_score: float | None = None  # the learned model's probability alone
    threshold: float = 0.5


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
            r"(?:instructions?|prompts?|rules|guidelines|directives|programming|restrictions|polic(?:y|ies)\s+above|"
            r"policies|messages|"
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



# What every match of these rules starts with: a word beginning with one of these letters.
RULE_FIRST_LETTERS = {"override_instructions": "bdfios", "prompt_extraction": "dghilmoprstw",
                      "persona_override": "abdfhlnprsty", "no_limits": "abcdfnoruw", "model_addressing": "acgl"}
_INJECTION_RULES = [(name, weight, starting_with(RULE_FIRST_LETTERS[name], pattern)
                     if name in RULE_FIRST_LETTERS else pattern) for name, weight, pattern in _INJECTION_RULES]
_BASE64 = re.compile(r"(?<![A-Za-z0-9+/])[A-Za-z0-9+/]{40,}={0,2}(?![A-Za-z0-9+/=])")
_SECOND_PERSON = starting_with("y", re.compile(
    r"\byou(?:'ll|\s+will|\s+must|\s+are|\s+should|\s+can|\s+have\s+to)\b|\byour\s+(?:responses?|answers?|replies)\b",
    _I,
))
RULE_FLAG = 1.0  # the rules alone flag a text whose weights add up to this


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


_ADDRESSED = re.compile(
    # Text in a knowledge document that talks to the assistant rather than to the reader: the mark of an
    # indirect injection planted in a file the assistant will retrieve.
    r"\b(?:note|message|instructions?|reminder|attention|important)\s+(?:to|for)\s+(?:the\s+|any\s+|all\s+)?"
    r"(?:AI|assistants?|chat\s?bots?|bots?|LLMs?|(?:language\s+)?models?|agents?)\b"
    r"|\bif\s+you\s+are\s+(?:an?\s+)?(?:AI|assistant|chat\s?bot|bot|LLM|language\s+model|automated\s+agent)\b"
    r"|\b(?:AI|assistant|chat\s?bot|LLM|language\s+model)s?\s+(?:reading|processing|summari[sz]ing|answering)"
    r"\s+(?:this|these|from\s+this)\b"
    r"|(?:^|[.!?]\s+)\s*(?:assistant|AI|system|chatbot)\s*(?:instructions?)?\s*:\s*(?:ignore|you\s+must|always|never|do\s+not|"
    r"don'?t|tell|say|respond|reply|answer|instead)\b",
    _I | re.MULTILINE,
)
_INJECTION_RULES.append(("addressed_to_assistant", 1.0, _ADDRESSED))


def rule_hits(text: str) -> tuple[list[str], float]:
    """The rules that match `text` and their summed weight."""
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
    return rules, score


# ------------------------------------------------------------------------------------------ learned model

_TOKEN = re.compile(r"\w+|[^\w\s]")
_MASK = (1 << HASH_BITS) - 1


def _clip(text: str) -> str:
    text = unicodedata.normalize("NFKC", text).lower()
    if len(text) > MAX_HEAD + MAX_TAIL:
        text = text[:MAX_HEAD] + " " + text[-MAX_TAIL:]
    return text


def features(text: str) -> tuple[np.ndarray, np.ndarray]:
    """Sparse feature vector (indices, values) of `text`: word 1-2-grams and character 3-5-grams hashed into
    2**HASH_BITS buckets, log counts, L2-normalised. The rule hits are not features: fed to the model they
    became near-certain attack signals (no benign training text says "uncensored"), and benign prompts full of
    trigger words were flagged; the rules stay a separate layer with their own weights."""
    words = _TOKEN.findall(_clip(text))
    grams = [f"w {w}" for w in words]
    grams += [f"b {a} {b}" for a, b in itertools.pairwise(words)]
    padded = " " + " ".join(words) + " "
    for n in (3, 4, 5):
        grams += [padded[i : i + n] for i in range(len(padded) - n + 1)]
    counts = Counter(zlib.crc32(g.encode()) & _MASK for g in grams)
    idx = np.fromiter(counts.keys(), dtype=np.int64, count=len(counts))
    val = np.log1p(np.fromiter(counts.values(), dtype=np.float64, count=len(counts)))
    norm = math.sqrt(float(val @ val)) or 1.0
    return idx, val / norm


N_FEATURES = 1 << HASH_BITS


class InjectionModel:
    """Logistic regression weights over `features`, with the threshold chosen when it was trained."""

    def __init__(self, weights: np.ndarray, bias: float, threshold: float, meta: str = "") -> None:
        if weights.shape != (N_FEATURES,):
            raise ValueError(f"model has {weights.shape} weights, the features need {N_FEATURES}: retrain it "
                             "(benchmarks/train_injection.py)")
        self.weights = weights.astype(np.float64)
        self.bias = float(bias)
        self.threshold = float(threshold)
        self.meta = meta

    @classmethod
    def load(cls, path: Path = MODEL_FILE) -> InjectionModel:
        with np.load(path) as data:
            return cls(data["weights"], float(data["bias"]), float(data["threshold"]), str(data["meta"]))

    def save(self, path: Path) -> None:
        np.savez_compressed(path, weights=self.weights.astype(np.float16), bias=np.float64(self.bias),
                            threshold=np.float64(self.threshold), meta=np.str_(self.meta))

    def probability(self, text: str) -> float:
        idx, val = features(text)
        z = float(self.weights[idx] @ val) + self.bias
        return 1.0 / (1.0 + math.exp(-max(-30.0, min(30.0, z))))


@lru_cache(maxsize=1)
def default_model() -> InjectionModel:
    return InjectionModel.load()


# ---------------------------------------------------------------------------------------------- combined


def detect_injection(text: str, threshold: float | None = None, model: InjectionModel | None = None
                     ) -> InjectionVerdict:
    """Rules and model together (see the module docstring). `threshold` overrides the model's own."""
    model = model or default_model()
    limit = model.threshold if threshold is None else float(threshold)
    rules, weight = rule_hits(text)
    p = model.probability(text)
    score = p
    if weight >= RULE_FLAG:
        # A rule flag lifts the score into the flagged band, higher the more rules agree.
        score = max(p, limit + (1.0 - limit) * min(weight, 3.0) / 3.0)
    score = round(score, 4)
    return InjectionVerdict(flagged=score >= limit, score=score, rules=rules, model_score=round(p, 4),
                            threshold=limit)


def detect_with_rules(text: str) -> InjectionVerdict:
    """The rules alone (the earlier detector), for comparisons in benchmarks/guardrails_eval.py."""
    rules, weight = rule_hits(text)
    return InjectionVerdict(flagged=weight >= RULE_FLAG, score=round(min(weight, 3.0) / 3.0, 3), rules=rules,
                            threshold=RULE_FLAG / 3.0)


@lru_cache(maxsize=8192)
def _passage_verdict(text: str) -> InjectionVerdict:
    return detect_with_rules(text)


def passage_verdict(text: str, threshold: float | None = None) -> InjectionVerdict:
    """The verdict on knowledge text (at ingestion and on retrieved passages), cached: the same chunks come back
    for many questions. The rules alone, whatever the threshold: the model was trained on customer messages,
    and on long benign documents it scores like on jailbreaks (34 of the 213 COVID-QA answers over its
    threshold, "What are the symptoms of COVID-19?" at 0.90), while on text planted in documents it adds
    little (0.025 alone, leave-one-family-out, docs/injection.md). The rules include the ones written for
    instructions addressed to the assistant inside a document."""
    return _passage_verdict(text)


def reason(verdict: InjectionVerdict) -> str:
    """One line for admins and reviewers: why the text was flagged."""
    by = f"rules {', '.join(verdict.rules)}" if verdict.rules else "no rule"
    return f"prompt injection suspected (score {verdict.score:.2f} >= {verdict.threshold:.2f}; {by}; " \
           f"model {verdict.model_score if verdict.model_score is not None else 'n/a'})"
