"""Chat prompts for the LLM path, and parsing of what the LLM answers.

The system prompt carries the brand persona, the rules and the numbered, fenced knowledge passages; each
customer turn is a user message whose text sits between `<customer_message>` tags. Anything that could close a
fence early (`</passage>` inside a passage, `</customer_message>` typed by a customer) is neutralised, so
injected text stays data. The model signals "the passages do not answer this" with the exact token
`<<ESCALATE>>`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import jinja2

ESCALATE_TOKEN = "<<ESCALATE>>"  # noqa: S105 - a marker in the model's reply, not a secret
# Between the pack-language answer and its translation (app/assistant/multilingual.py).
TRANSLATION_TOKEN = "<<TRANSLATION>>"  # noqa: S105 - a marker in the model's reply, not a secret
# A citation group: [1], [1][2], [1, 2] or [1,2,3].
_CITATION = re.compile(r"\[(\d{1,2}(?:\s*,\s*\d{1,2})*)\]")
# The tidying of an answer's text once markers are resolved (compiled once: drafts parse the answer per streamed piece).
_SPACE_BEFORE_PUNCTUATION = re.compile(r"[ \t]+([.,;:!?])")
_SPACES = re.compile(r"[ \t]{2,}")
_BLANK_LINES = re.compile(r"\n{3,}")


class PassageLike(Protocol):
    """What retrieval hands over (app.knowledge.retrieval.Passage satisfies this)."""

    @property
    def chunk_id(self) -> str: ...
    @property
    def document(self) -> str: ...
    @property
    def heading(self) -> str: ...
    @property
    def text(self) -> str: ...
    @property
    def score(self) -> float: ...


@dataclass
class Draft:
    """An answer before guardrails and the send/escalate decision.

    `citations` are in the order the text numbers them: `[1]` in `text` is `citations[0]`.
    """

    text: str
    citations: list[dict[str, Any]] = field(default_factory=list)
    confidence: float = 0.0
    escalate: bool = False
    reason: str | None = None


DEFAULT_PERSONA: dict[str, str] = {
    "name": "the assistant",
    "brand": "our company",
    "tone": "friendly, clear and concise",
    "greeting": "",
    "sign_off": "",
    "language": "en",
}


def persona_with_defaults(persona: dict[str, Any] | None) -> dict[str, Any]:
    merged: dict[str, Any] = dict(DEFAULT_PERSONA)
    merged.update({k: v for k, v in (persona or {}).items() if v not in (None, "")})
    return merged


_FENCE_TAGS = re.compile(r"<\s*(/?)\s*(passage|customer_message)\b", re.IGNORECASE)


def _fence(text: str) -> str:
    # Break every tag of our fences, so text can neither end its own block nor fake a new one.
    text = _FENCE_TAGS.sub(lambda m: f"<{m.group(1)}_{m.group(2)}", text)
    # Nor may quoted text carry our escalation marker into the model's context.
    return text.replace(ESCALATE_TOKEN, "<<_ESCALATE>>").replace(TRANSLATION_TOKEN, "<<_TRANSLATION>>").strip()


def _attr_safe(value: str) -> str:
    return re.sub(r"[\"<>\n\r]", " ", value).strip()


_env = jinja2.Environment(
    loader=jinja2.PackageLoader("app.assistant", "templates"),
    autoescape=False,  # noqa: S701 - plain-text prompts and chat replies, never HTML
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
    keep_trailing_newline=False,
    auto_reload=False,  # the templates ship with the package: compiled once, never stat-ed again per message
)
_env.filters["fence"] = _fence
_env.filters["attr_safe"] = _attr_safe


def template_env() -> jinja2.Environment:
    return _env


def render_messages(
    persona: dict[str, Any] | None,
    policies: dict[str, Any] | None,
    history: list[tuple[str, str]],
    passages: Sequence[PassageLike],
    question: str,
    *,
    bilingual: tuple[str, str] | None = None,
) -> list[dict[str, str]]:
    """Chat-completion messages: system (persona, rules, passages), past turns, then the customer's question.

    `history` holds (role, text) pairs, role "customer" or "assistant", oldest first, without the question.
    `bilingual` = (customer's language, pack's language), by name, asks for the answer in both
    (app/assistant/multilingual.py).
    """
    policies = policies or {}
    system = _env.get_template("system.j2").render(
        persona=persona_with_defaults(persona),
        passages=passages,
        banned_phrases=[p for p in policies.get("banned_phrases", []) if p],
        escalate_token=ESCALATE_TOKEN,
        reply_language=bilingual[0] if bilingual else None,
        pack_language=bilingual[1] if bilingual else None,
        translation_token=TRANSLATION_TOKEN,
    )
    user_template = _env.get_template("user.j2")
    messages = [{"role": "system", "content": system.strip()}]
    for role, text in history:
        if role == "assistant":
            messages.append({"role": "assistant", "content": text})
        else:
            content = user_template.render(text=text, reminder=False).strip()
            messages.append({"role": "user", "content": content})
    messages.append({"role": "user", "content": user_template.render(text=question, reminder=True).strip()})
    return messages


def citation(p: PassageLike) -> dict[str, Any]:
    return {"document": p.document, "chunk_id": p.chunk_id, "score": round(float(p.score), 4)}


def parse_llm_answer(text: str, passages: Sequence[PassageLike]) -> Draft:
    """Turn the model's reply into a Draft: citations resolved and renumbered, the escalation token stripped.

    Citation numbers that point at no passage are dropped from the text (the model made them up). Confidence
    is the best cited passage's score; an answer citing nothing gets a low confidence (0.2) for the caller.
    """
    escalate = ESCALATE_TOKEN in text
    body = text.replace(ESCALATE_TOKEN, "")
    order: list[int] = []  # passage indexes (0-based) in order of first citation

    def renumber(m: re.Match[str]) -> str:
        out = []
        for raw in m.group(1).split(","):
            idx = int(raw) - 1
            if not 0 <= idx < len(passages):
                continue
            if idx not in order:
                order.append(idx)
            out.append(f"[{order.index(idx) + 1}]")
        return "".join(dict.fromkeys(out))

    # A pass runs only when the text holds what it would change (a substring test is far cheaper than a regex scan,
    # and drafts parse the answer again as it grows).
    if "[" in body:
        body = _CITATION.sub(renumber, body)
    body = _SPACE_BEFORE_PUNCTUATION.sub(r"\1", body)  # "text [9]." with [9] dropped leaves "text ."
    if "  " in body or "\t" in body:
        body = _SPACES.sub(" ", body)
    if "\n\n\n" in body:
        body = _BLANK_LINES.sub("\n\n", body)
    body = body.strip()
    cited = [passages[i] for i in order]
    citations = [citation(p) for p in cited]
    if not body:
        return Draft(text="", citations=[], confidence=0.0, escalate=True, reason="empty_answer")
    if escalate:
        return Draft(text=body, citations=citations, confidence=0.0, escalate=True, reason="llm_escalated")
    confidence = max((float(p.score) for p in cited), default=0.0) if cited else 0.2
    return Draft(text=body, citations=citations, confidence=round(min(max(confidence, 0.0), 1.0), 3))
