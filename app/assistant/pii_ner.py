"""Names and street addresses in PII detection: the optional `[ner]` extra, off by default.

Structured PII (app/assistant/pii.py) needs no model. Names and addresses do: this module runs Microsoft Presidio's
analyzer over a spaCy model the operator installs. Nothing is downloaded at run time: the model must already be an
installed package, or turning the feature on fails with an error that says what to install.

    pip install 'switchboard[ner]'                      # presidio-analyzer, spaCy
    pip install <the en_core_web_lg wheel>              # or en_core_web_sm / _md; SWITCHBOARD_PII_NER_MODEL
    SWITCHBOARD_PII_NER=true                            # every tenant; or a tenant's policy `pii_ner: true`

A tenant's policy `pii_ner` (true/false) overrides the operator's `SWITCHBOARD_PII_NER` for that tenant. Found
spans are `PERSON` (Presidio's PERSON) and `ADDRESS` (Presidio's LOCATION: the places spaCy recognises, plus a
pattern for street addresses, a house number before a street name). They are masked before the LLM like the
structured kinds, and restored in its reply (app/assistant/pii_restore.py).
"""

from __future__ import annotations

import importlib.util
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from app.assistant.pii import PiiSpan, Recognizer
from app.config import Settings

# Presidio's entity -> our kind.
ENTITIES = {"PERSON": "PERSON", "LOCATION": "ADDRESS", "STREET_ADDRESS": "ADDRESS"}
_STREET = (
    r"\b\d{1,6}[A-Za-z]?\s+(?:[A-Z][\w'.-]*\s+){1,4}"
    r"(?:Street|St|Avenue|Ave|Road|Rd|Drive|Dr|Lane|Ln|Boulevard|Blvd|Way|Court|Ct|Place|Pl|Square|Sq|Close|"
    r"Terrace|Crescent|Highway|Hwy|Parkway|Pkwy)\b\.?"
)


class NerUnavailable(RuntimeError):
    """Names and addresses are turned on, but the extra or its spaCy model is not installed."""


def install_hint(model: str) -> str:
    return (
        "names and addresses in PII detection are turned on but the optional NER extra is not installed: run "
        f"`pip install 'switchboard[ner]'` and install the spaCy model package `{model}` (its wheel; nothing is "
        "downloaded at run time; SWITCHBOARD_PII_NER_MODEL names another model), or turn it off "
        "(SWITCHBOARD_PII_NER=false, tenant policy `pii_ner`: false)"
    )


class PresidioRecognizer:
    """PERSON and ADDRESS spans from Presidio's analyzer (spaCy NER plus a street-address pattern)."""

    def __init__(self, analyzer: Any, score_threshold: float = 0.5) -> None:
        self.analyzer = analyzer
        self.score_threshold = score_threshold

    def __call__(self, text: str) -> Iterable[PiiSpan]:
        results = self.analyzer.analyze(text=text, language="en", entities=list(ENTITIES),
                                        score_threshold=self.score_threshold)
        for r in sorted(results, key=lambda r: (r.start, -r.end)):
            yield PiiSpan(ENTITIES[r.entity_type], r.start, r.end, text[r.start : r.end])


def load_presidio(model: str) -> Recognizer:
    """Presidio's analyzer over the installed spaCy package `model`; NerUnavailable (naming the fix) when either
    is missing. The model is checked first because Presidio would otherwise try to download it."""
    if importlib.util.find_spec("presidio_analyzer") is None or importlib.util.find_spec(model) is None:
        raise NerUnavailable(install_hint(model))
    from presidio_analyzer import AnalyzerEngine, Pattern, PatternRecognizer
    from presidio_analyzer.nlp_engine import SpacyNlpEngine

    engine = SpacyNlpEngine(models=[{"lang_code": "en", "model_name": model}])
    engine.load()  # the model is installed (checked above): spaCy loads it, nothing is fetched
    analyzer = AnalyzerEngine(nlp_engine=engine, supported_languages=["en"])
    analyzer.registry.add_recognizer(
        PatternRecognizer(supported_entity="STREET_ADDRESS", patterns=[Pattern("street", _STREET, 0.6)]))
    return PresidioRecognizer(analyzer)


class PiiNer:
    """Whether a tenant gets names and addresses, and the recognizer, loaded once on first use. Built by the
    container (`Container.pii_ner`); tests give it a `load` of their own."""

    def __init__(self, settings: Settings, load: Callable[[str], Recognizer] = load_presidio) -> None:
        self.settings = settings
        self._load = load
        self._recognizer: Recognizer | None = None
        self._lock = threading.Lock()

    def enabled(self, policies: Mapping[str, Any] | None) -> bool:
        value = (policies or {}).get("pii_ner")
        return self.settings.pii_ner if value is None else bool(value)

    def recognizer(self) -> Recognizer:
        """The loaded recognizer; NerUnavailable when the extra or the model is missing."""
        with self._lock:
            if self._recognizer is None:
                self._recognizer = self._load(self.settings.pii_ner_model)
            return self._recognizer

    def recognizers(self, policies: Mapping[str, Any] | None) -> list[Recognizer]:
        """What `find_pii`/`redact_pii` take for this tenant: none when off, the NER recognizer when on."""
        return [self.recognizer()] if self.enabled(policies) else []
