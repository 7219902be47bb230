from __future__ import annotations

from dataclasses import dataclass


@dataclass
class FakePassage:
    """Shape of app.knowledge.retrieval.Passage (composer and prompts accept anything with these fields)."""

    chunk_id: str
    document: str
    heading: str
    text: str
    score: float
    rank: int = 0


PERSONA = {
    "name": "Ava",
    "brand": "Northwind Outfitters",
    "tone": "warm, concise",
    "greeting": "Hi, I'm Ava from Northwind Outfitters!",
    "sign_off": "Happy trails, Ava",
    "language": "en",
}

RETURNS_DOC = """## Returns policy
You can return unworn items within 30 days of delivery for a full refund. Items must have their tags.
Sale items are final sale and cannot be returned.
- Refunds go back to the original payment method within 5-7 business days.
"""
SHIPPING_FAQ = (
    "Q: Do you ship abroad?\n"
    "A: Yes, we ship to 30 countries. International delivery takes 5-10 business days."
)
