"""Question/answer units: one definition of a FAQ entry, whatever file it came in.

A FAQ arrives in many shapes: rows of a CSV or JSON file, a Markdown file with a question per heading, one file
per question (its title is the question), an HTML help-centre page (headings, definition lists, accordions,
schema.org FAQPage JSON-LD), a Word document with question headings. Every parser reduces its file either to
(question, answer) pairs (CSV, JSON, JSONL) or to Markdown-shaped sections (app/knowledge/formats.py turns HTML
markup and DOCX heading styles into headings); this module is the one place that decides which sections are
question/answer units, and the one shape a unit takes as a chunk, so every format yields the same units and the
same indexed views (app/knowledge/representation.py):

- a section whose own heading is question-shaped (`is_question`) is a unit: the heading is the question, the
  body the answer; sub-sections below it belong to its answer;
- text before the first heading of a document whose title is question-shaped (one file per question, the title
  from its name, front matter, `<title>` or the DOCX core properties) is a unit under that title;
- every unit is one chunk, headed by its question alone, with the text "Q: <question>\\nA: <answer>"
  (`unit_text`); an answer too long for one passage is cut like any long section, each piece under the question.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# A heading asks something when it ends with "?", starts with an auxiliary verb ("Can I pay later", "Do you ship
# abroad") or with a question word and then an auxiliary or a quantity ("How do refunds work", "Where is my order",
# "How long does delivery take"). "How to measure", "What the warranty covers": topics, not questions.
AUXILIARIES = frozenset((
    "can", "could", "do", "does", "did", "is", "are", "was", "were", "will", "would", "should", "shall", "may",
    "might", "must", "am", "have", "has", "had", "isn't", "aren't", "don't", "doesn't", "can't", "won't",
))
WH_WORDS = frozenset(("how", "what", "why", "when", "where", "who", "whom", "whose", "which"))
QUANTITIES = frozenset(("long", "much", "many", "often", "soon", "far", "old", "big", "late", "early"))
# "Q:", "Q1.", "Question 3:", "1.", "2)" in front of a question: numbering, not part of it.
_PREFIX = re.compile(r"^\s*(?:(?:q(?:uestion)?\s*\d*\s*[:.)-])|(?:\d+\s*[.):-]))\s*", re.IGNORECASE)
_WORD = re.compile(r"[^\W\d_]+(?:['\u2019][^\W\d_]+)?", re.UNICODE)
MIN_WORDS = 3  # without a "?", "Is it" is too short to tell


@dataclass(frozen=True)
class Unit:
    question: str
    answer: str


def question_of(title: str) -> str | None:
    """The question a heading or title asks (numbering and "Q:" removed), or None when it is a topic."""
    text = " ".join(_PREFIX.sub("", title, count=1).split())
    if not text:
        return None
    if text.endswith("?"):
        return text
    words = _WORD.findall(text.lower())
    if len(words) < MIN_WORDS:
        return None
    if words[0] in AUXILIARIES or (words[0] in WH_WORDS and (words[1] in AUXILIARIES or words[1] in QUANTITIES)):
        return text
    return None


def is_question(title: str) -> bool:
    return question_of(title) is not None


def unit_text(question: str, answer: str) -> str:
    """A unit as its chunk's text: what the CSV/JSON path has always indexed."""
    return f"Q: {question}\nA: {answer}"


def unit_question(heading: str, text: str) -> str | None:
    """The question of a chunk shaped as a unit (headed by its question, text "Q: <question>\\nA: ..."), or None.
    Read from the chunk itself, so a chunk carried into a new version from its stored row keeps its view."""
    question = heading.strip()
    if question and text.startswith(f"Q: {question}\nA: "):
        return question
    return None


@dataclass(frozen=True)
class Section:
    level: int  # 1-6 for a heading, 0 for the text before the first one
    title: str  # the section's own heading ("" before the first one)
    path: str  # the heading path ("Returns > Refunds")
    body: str


def split_units(sections: list[Section], doc_title: str | None) -> list[Section | Unit]:
    """Sections in order, those that are question/answer units replaced by their unit. Sub-sections of a
    question join its answer (with their heading as a line); a section at the question's level or above ends it."""
    out: list[Section | Unit] = []
    open_unit: tuple[int, str, list[str]] | None = None  # (level, question, answer parts)

    def close() -> None:
        nonlocal open_unit
        if open_unit is not None:
            _, question, parts = open_unit
            answer = "\n\n".join(p for p in parts if p.strip()).strip()
            if answer:
                out.append(Unit(question, answer))
            open_unit = None

    for section in sections:
        if open_unit is not None and section.level > open_unit[0]:
            open_unit[2].extend([section.title, section.body])
            continue
        close()
        question = question_of(section.title) if section.level else (question_of(doc_title) if doc_title else None)
        if question is not None:
            open_unit = (section.level or 0, question, [section.body])
            if section.level == 0:
                close()  # leading text: nothing below it can be its sub-section
        else:
            out.append(section)
    close()
    return out
