"""Customers who write in another language than the knowledge pack's.

The pack's language is the tenant's `persona.language` (a BCP 47 tag, "en" by default; app/assistant/prompts.py);
the customer's comes from app/assistant/language.py. When they differ:

- **without an LLM** the message is acknowledged in the customer's language from a shipped template
  (`templates/notices/<lang>.language.j2`) and escalated with reason `language`: the offline composer can only
  quote the pack, and the pack's embedder (English MiniLM) does not match a question across languages;
- **with an LLM**, one extra call rewrites the question into the pack's language (`templates/rewrite.j2`); the
  guardrails and retrieval read that rewrite; the answer call asks for the answer twice, in the pack's language,
  then after `TRANSLATION_TOKEN` in the customer's (`templates/system.j2`). The grounding check
  (app/assistant/grounding.py) measures the pack-language version against the passages, as for any answer; the
  customer's version must carry the same citations in the same order and the same digits
  (`translation_mismatch`), and is what the customer reads. An escalation of such a message tells the customer
  in their language (`templates/notices/<lang>.escalated.j2`).
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

from app.assistant.language import letter_words, primary
from app.assistant.prompts import TRANSLATION_TOKEN, Draft, persona_with_defaults, template_env

NAMES = {"en": "English", "es": "Spanish", "fr": "French", "de": "German", "pt": "Portuguese", "it": "Italian",
         "nl": "Dutch", "ca": "Catalan", "pl": "Polish", "sv": "Swedish", "da": "Danish", "no": "Norwegian",
         "fi": "Finnish", "ro": "Romanian", "tr": "Turkish", "ru": "Russian", "uk": "Ukrainian", "ar": "Arabic",
         "zh": "Chinese", "ja": "Japanese", "ko": "Korean", "hi": "Hindi", "id": "Indonesian", "vi": "Vietnamese"}


def pack_language(persona: dict[str, Any] | None) -> str:
    return primary(persona_with_defaults(persona).get("language"))


def name(language: str) -> str:
    return NAMES.get(language, language)


def notice(language: str, kind: str, persona: dict[str, Any] | None) -> str | None:
    """The shipped acknowledgement `kind` (`language`: we cannot answer in it; `escalated`: a person will) in
    `language`, or None when none ships for it (the tenant's own notice then applies)."""
    try:
        template = template_env().get_template(f"notices/{language}.{kind}.j2")
    except Exception:  # jinja2.TemplateNotFound: no template for this language
        return None
    brand = persona_with_defaults(persona).get("brand") or "our"
    return template.render(brand=brand).strip()


def rewrite_messages(question: str, customer: str, pack: str, persona: dict[str, Any] | None) -> list[dict[str, str]]:
    """The one call that turns the customer's question into the pack's language for retrieval."""
    env = template_env()
    system = env.get_template("rewrite.j2").render(persona=persona_with_defaults(persona), pack_language=name(pack),
                                                   customer_language=name(customer))
    user = env.get_template("user.j2").render(text=question, reminder=False)
    return [{"role": "system", "content": system.strip()}, {"role": "user", "content": user.strip()}]


def clean_rewrite(text: str) -> str:
    """The model's translation as a search query: one line, no quotes or labels around it."""
    line = " ".join(text.split())
    line = re.sub(r"^(?:translation|query)\s*:\s*", "", line, flags=re.IGNORECASE)
    return line.strip().strip("\"'“”«»").strip()


def same_words(a: str, b: str) -> bool:
    """The same words, whatever the case and punctuation: a "translation" that changed nothing."""
    return [w.lower() for w in letter_words(a)] == [w.lower() for w in letter_words(b)]


def split_bilingual(text: str) -> tuple[str, str] | None:
    """(pack-language answer, customer-language answer), or None when the reply is not in that shape."""
    if text.count(TRANSLATION_TOKEN) != 1:
        return None
    pack, customer = (part.strip() for part in text.split(TRANSLATION_TOKEN))
    return (pack, customer) if pack and customer else None


_DIGITS = re.compile(r"\d+")


def translation_mismatch(pack: Draft, shown: Draft) -> str | None:
    """Why the customer's version does not say what the checked one says, as far as it can be measured without
    reading the language: the same passages cited in the same order, the same digits (12.50 and 12,50 alike)."""
    if [c["chunk_id"] for c in pack.citations] != [c["chunk_id"] for c in shown.citations]:
        return "the translation cites other passages than the checked answer"
    if Counter(_DIGITS.findall(_uncited(pack.text))) != Counter(_DIGITS.findall(_uncited(shown.text))):
        return "the translation's numbers differ from the checked answer's"
    return None


def _uncited(text: str) -> str:
    return re.sub(r"\[\d{1,2}\]", " ", text)
