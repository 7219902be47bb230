"""Customers who write another language than the pack's, end to end on the example tenant: without an LLM an
acknowledgement in their language and an escalation `language`; with one (the real `openai` SDK against a fake
OpenAI-compatible server that translates by a lookup table) the question rewritten for retrieval, the answer
checked in the pack's language and sent in the customer's."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import select

from app import operations
from app.assistant import multilingual
from app.assistant.language import detect
from app.bootstrap import container
from app.db import session_scope
from app.models import Escalation, Tenant
from tests.e2e.conftest import EXAMPLE, Stack
from tests.fakes.openai_server import FakeOpenAIServer, customer_question, first_sentence, prompt_passages

PERSONA = {"brand": "Northwind Outfitters"}
QUESTIONS = {  # the customer's words as the model sees them (PII masked) -> the fake model's rewrite
    "¿cuánto tardan los reembolsos?": "how long do refunds take?",
    "¿cuánto tardan los reembolsos? escribidme a [EMAIL_1]": "how long do refunds take? write to me at"
                                                                          " [EMAIL_1]",
    "¿alquiláis canoas para el fin de semana?": "do you rent canoes for the weekend?",
    "wie lange dauern Rückerstattungen?": "how long do refunds take?",
    "How long til my refund goes through?": "How long til my refund goes through?",  # English fastText calls "no"
    "Someone stole my phone.": "Someone stole my phone.",  # English fastText calls Thai
    "quiero poner una reclamación por mi pedido": "i want to file a complaint about my order",
}
SENTENCES = {  # the passage's first sentence -> its translation
    "We inspect returns within 3 business days of them reaching our warehouse and then issue the refund to your "
    "original payment method.": {
        "es": "Revisamos las devoluciones en un plazo de 3 días hábiles desde que llegan a nuestro almacén y luego "
              "emitimos el reembolso a tu método de pago original.",
        "de": "Wir prüfen Rücksendungen innerhalb von 3 Werktagen nach Eingang in unserem Lager und erstatten dann "
              "den Betrag auf deine ursprüngliche Zahlungsmethode.",
    },
}


class Translator:
    """The fake model: rewrites by QUESTIONS, answers with the first passage whose first sentence it can translate,
    in English then after <<TRANSLATION>> in the customer's language. `answer` may be replaced by a test."""

    def __init__(self, server: FakeOpenAIServer) -> None:
        self.server = server
        self.answer = self.faithful
        server.reply_with(self)

    def __call__(self, body: dict[str, Any]) -> str:
        system = body["messages"][0]["content"]
        if system.startswith("You translate a customer's message"):
            return QUESTIONS[customer_question(body)]
        return self.answer(body)

    @staticmethod
    def target(body: dict[str, Any]) -> str:
        system = body["messages"][0]["content"]
        return "de" if "writes in German" in system else "es"

    def faithful(self, body: dict[str, Any]) -> str:
        for n, passage in enumerate(prompt_passages(body), start=1):
            english = first_sentence(passage)
            if english in SENTENCES:
                if "<<TRANSLATION>>" not in body["messages"][0]["content"]:
                    return f"{english} [{n}]"
                return f"{english} [{n}]\n<<TRANSLATION>>\n{SENTENCES[english][self.target(body)]} [{n}]"
        return "I don't know. <<ESCALATE>>"


@pytest.fixture(scope="module")
def ml_tenant(stack: Stack) -> dict[str, Any]:
    created = operations.create_tenant("northwind-ml", folder=EXAMPLE)
    operations.ingest(container(), "northwind-ml", [EXAMPLE / "knowledge" / "faq.csv"])
    return created


@pytest.fixture
def translator(ml_tenant: dict[str, Any], openai_server: FakeOpenAIServer) -> Translator:
    with session_scope(cross_tenant="tests") as session:
        tenant = session.scalars(select(Tenant).where(Tenant.slug == "northwind-ml")).one()
        tenant.policies = {**tenant.policies, "llm": {
            "base_url": openai_server.base_url, "model": "test-model", "timeout_s": 5, "max_retries": 0}}
        from app.crypto import encrypt_json

        tenant.llm_api_key_encrypted = encrypt_json({"api_key": openai_server.api_key})
    return Translator(openai_server)


def _escalation(message_id: str) -> Escalation:
    with session_scope(cross_tenant="tests") as session:
        escalation = session.scalars(select(Escalation).where(Escalation.message_id == message_id)).one()
        session.expunge(escalation)
        return escalation


# -- without an LLM ------------------------------------------------------------------------------------------
def test_without_an_llm_a_spanish_question_is_acknowledged_in_spanish_and_escalated(stack: Stack) -> None:
    outcome = operations.chat(container(), "northwind", "¿cuánto tardan los reembolsos?", "ml-es", timeout_s=30)
    assert outcome["status"] == "escalated" and outcome["reason"] == "language"
    assert outcome["text"] == multilingual.notice("es", "language", PERSONA)
    assert detect(outcome["text"]).language == "es" and "español" in outcome["text"]
    assert "es" in (_escalation(outcome["message_id"]).detail or "")


@pytest.mark.parametrize("text", ["ok", "thanks", "order #48213"])
def test_without_an_llm_short_english_is_never_taken_for_another_language(stack: Stack, text: str) -> None:
    outcome = operations.chat(container(), "northwind", text, f"ml-en-{text}", timeout_s=30)
    assert outcome.get("reason") != "language"
    assert outcome["text"] is None or detect(outcome["text"]).language in (None, "en")


def test_without_an_llm_a_short_follow_up_keeps_the_conversations_language(stack: Stack) -> None:
    first = operations.chat(container(), "northwind", "¿hacen envíos a México?", "ml-follow", timeout_s=30)
    assert first["reason"] == "language"
    again = operations.chat(container(), "northwind", "ok gracias", "ml-follow", timeout_s=30)
    assert again["reason"] == "language" and again["text"] == multilingual.notice("es", "language", PERSONA)


# -- with an LLM ---------------------------------------------------------------------------------------------
def test_with_an_llm_the_answer_is_in_the_customers_language_grounded_and_cited(translator: Translator) -> None:
    outcome = operations.chat(container(), "northwind-ml",
                              "¿cuánto tardan los reembolsos? escribidme a ana.garcia@example.com", "ml-llm-1",
                              timeout_s=30)
    assert outcome["status"] == "answered", outcome
    assert outcome["text"].startswith("Revisamos las devoluciones en un plazo de 3 días hábiles")
    assert detect(outcome["text"]).language == "es"
    assert [c["document"] for c in outcome["citations"]] == ["faq.csv"]
    rewrite, answer = translator.server.completion_requests
    # The rewrite call: the customer's words, PII masked, asked into the pack's language.
    assert "from Spanish into English" in rewrite.messages[0]["content"]
    prompt = "\n".join(m["content"] for m in rewrite.messages + answer.messages)
    assert "ana.garcia@example.com" not in prompt and "[EMAIL_1]" in prompt
    # The answer call: the passages retrieved for the English rewrite, the answer asked in both languages.
    assert "The customer writes in Spanish" in answer.messages[0]["content"]
    assert any(p.startswith("Q: How long do refunds take?") for p in prompt_passages(answer.body or {}))


def test_with_an_llm_german_works_the_same(translator: Translator) -> None:
    outcome = operations.chat(container(), "northwind-ml", "wie lange dauern Rückerstattungen?", "ml-llm-de",
                              timeout_s=30)
    assert outcome["status"] == "answered", outcome
    assert detect(outcome["text"]).language == "de" and outcome["text"].startswith("Wir prüfen Rücksendungen")


def test_with_an_llm_an_ungrounded_checked_answer_is_escalated_with_a_notice_in_spanish(
        translator: Translator) -> None:
    translator.answer = lambda body: ("Refunds are instant and we add a $20 voucher [1].\n<<TRANSLATION>>\n"
                                      "Los reembolsos son inmediatos y añadimos un vale de $20 [1].")
    outcome = operations.chat(container(), "northwind-ml", "¿cuánto tardan los reembolsos?", "ml-llm-2", timeout_s=30)
    assert outcome["status"] == "escalated" and outcome["reason"] == "ungrounded"
    assert outcome["text"] == multilingual.notice("es", "escalated", PERSONA)
    escalation = _escalation(outcome["message_id"])
    assert escalation.draft and escalation.draft.startswith("Los reembolsos son inmediatos")  # what an agent sends
    assert (escalation.meta or {})["checked_answer"].startswith("Refunds are instant")


def test_with_an_llm_a_translation_that_changes_a_number_is_escalated(translator: Translator) -> None:
    def wrong_number(body: dict[str, Any]) -> str:
        return translator.faithful(body).replace("3 días", "5 días")

    translator.answer = wrong_number
    outcome = operations.chat(container(), "northwind-ml", "¿cuánto tardan los reembolsos?", "ml-llm-3", timeout_s=30)
    assert outcome["status"] == "escalated" and outcome["reason"] == "translation_mismatch"
    assert detect(outcome["text"]).language == "es"
    assert "numbers" in (_escalation(outcome["message_id"]).detail or "")


def test_with_an_llm_an_answer_not_given_in_both_languages_is_escalated(translator: Translator) -> None:
    translator.answer = lambda body: "Revisamos las devoluciones en un plazo de 3 días hábiles [1]."
    outcome = operations.chat(container(), "northwind-ml", "¿cuánto tardan los reembolsos?", "ml-llm-4", timeout_s=30)
    assert outcome["status"] == "escalated" and outcome["reason"] == "language"
    assert outcome["text"] == multilingual.notice("es", "escalated", PERSONA)


def test_with_an_llm_nothing_in_the_pack_still_escalates_no_knowledge_in_spanish(translator: Translator) -> None:
    outcome = operations.chat(container(), "northwind-ml", "¿alquiláis canoas para el fin de semana?", "ml-llm-5",
                              timeout_s=30)
    assert outcome["status"] == "escalated" and outcome["reason"] == "no_knowledge"
    assert outcome["text"] == multilingual.notice("es", "escalated", PERSONA)
    meta = _escalation(outcome["message_id"]).meta or {}
    assert meta["question_translated"] == "do you rent canoes for the weekend?"
    assert len(translator.server.completion_requests) == 1  # the rewrite only: no answer call without knowledge


def test_with_an_llm_english_takes_one_call_as_before(translator: Translator) -> None:
    outcome = operations.chat(container(), "northwind-ml", "how long do refunds take?", "ml-llm-en", timeout_s=30)
    assert outcome["status"] == "answered", outcome
    assert outcome["text"].startswith("We inspect returns within 3 business days")
    [only] = translator.server.completion_requests
    assert "<<TRANSLATION>>" not in only.messages[0]["content"]


def test_with_an_llm_english_taken_for_another_language_is_answered_in_english(translator: Translator) -> None:
    """fastText's lite model takes ~0.1% of English support messages for another language (BANKING77: 4 of 3080).
    The rewrite then changes nothing: the message is answered as written, in one language."""
    text = "How long til my refund goes through?"
    assert detect(text).language == "no"
    outcome = operations.chat(container(), "northwind-ml", text, "ml-llm-false", timeout_s=30)
    assert outcome["status"] == "answered", outcome
    assert outcome["text"].startswith("We inspect returns within 3 business days")
    rewrite, answer = translator.server.completion_requests
    assert "from Norwegian into English" in rewrite.messages[0]["content"]
    assert "<<TRANSLATION>>" not in answer.messages[0]["content"]
    # Escalated, it gets the tenant's own notice, not a Norwegian or Thai one.
    escalated = operations.chat(container(), "northwind-ml", "Someone stole my phone.", "ml-llm-false-2", timeout_s=30)
    assert escalated["status"] == "escalated" and escalated["reason"] == "no_knowledge"
    assert escalated["text"].startswith("Thanks for your patience. I've passed this to someone on the Northwind team")


def test_with_an_llm_the_brands_handoff_words_read_the_translation(translator: Translator) -> None:
    """northwind's handoff keywords are English ("complaint"): the Spanish words miss them, the rewrite does not."""
    outcome = operations.chat(container(), "northwind-ml", "quiero poner una reclamación por mi pedido", "ml-llm-6",
                              timeout_s=30)
    assert outcome["status"] == "escalated" and outcome["reason"] == "human_requested"
    assert outcome["text"] == multilingual.notice("es", "escalated", PERSONA)
    assert len(translator.server.completion_requests) == 1  # the rewrite; no answer is written


def test_with_an_llm_a_failed_rewrite_escalates_with_a_notice_in_spanish(translator: Translator) -> None:
    translator.server.fail_always(503)
    outcome = operations.chat(container(), "northwind-ml", "¿cuánto tardan los reembolsos?", "ml-llm-7", timeout_s=30)
    assert outcome["status"] == "escalated" and outcome["reason"].startswith("llm_")
    assert outcome["text"] == multilingual.notice("es", "escalated", PERSONA)
