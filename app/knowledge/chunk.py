"""Structure-aware chunking.

- Markdown: split at ATX headings (outside fenced code); each chunk keeps its heading path
  ("Returns > Refunds"). Within a section, whole paragraphs are packed up to `max_words`; a paragraph longer
  than that is cut at line breaks (table rows keep the table's header), then sentences, then words, and
  consecutive pieces of one cut paragraph share `overlap` words so no sentence loses its context.
- HTML, PDF, DOCX: parsed to Markdown-shaped text first (app/knowledge/formats.py), then as Markdown.
- Plain text: the same, with no headings.
- Question/answer units (app/knowledge/units.py), from a FAQ file's rows or from question-shaped headings and
  titles in any of the formats above: one unit per chunk, "Q: ...\nA: ...", headed by the question alone.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass

from app.knowledge.parse import ParsedDocument
from app.knowledge.units import Section, Unit, split_units, unit_text

_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
_FENCE = re.compile(r"^\s*(```|~~~)")
_SENTENCE = re.compile(r"(?<=[.!?])\s+")
HEADING_SEP = " > "
# A question's answer stays one passage up to this many times `max_words` (the CSV path has always kept a FAQ
# answer whole: COVID-QA's longest is ~700 words); past it, it is cut like any section, each piece under the question.
UNIT_MAX_FACTOR = 8


@dataclass(frozen=True)
class TextChunk:
    ordinal: int
    heading: str
    text: str

    @property
    def words(self) -> int:
        return len(self.text.split())

    def embedding_text(self) -> str:
        """What gets embedded: the heading path gives a short passage its topic."""
        return f"{self.heading}\n{self.text}" if self.heading else self.text


def _word_count(text: str) -> int:
    return len(text.split())


def sections_of(text: str) -> list[Section]:
    """The sections of Markdown-shaped text, in order, with their level, own heading and heading path; the text
    before the first heading is a level-0 section with no heading. Sections with no body are left out."""
    sections: list[Section] = []
    path: list[tuple[int, str]] = []
    body: list[str] = []
    in_fence = False

    def close() -> None:
        content = "\n".join(body).strip()
        if content:
            level, title = path[-1] if path else (0, "")
            sections.append(Section(level, title, HEADING_SEP.join(t for _, t in path), content))
        body.clear()

    for line in text.split("\n"):
        if _FENCE.match(line):
            in_fence = not in_fence
        match = None if in_fence else _HEADING.match(line)
        if match:
            close()
            level, title = len(match.group(1)), match.group(2).strip()
            path = [(lvl, t) for lvl, t in path if lvl < level] + [(level, title)]
        else:
            body.append(line)
    close()
    return sections


def markdown_sections(text: str) -> list[tuple[str, str]]:
    """(heading path, body) per section, in order; the text before the first heading has an empty path."""
    return [(s.path, s.body) for s in sections_of(text)]


def _paragraphs(body: str) -> list[str]:
    return [p.strip() for p in re.split(r"\n\s*\n", body) if p.strip()]


def _split_words(text: str, max_words: int, overlap: int) -> list[str]:
    words = text.split()
    step = max(1, max_words - overlap)
    pieces = []
    for start in range(0, len(words), step):
        pieces.append(" ".join(words[start : start + max_words]))
        if start + max_words >= len(words):
            break
    return pieces


def _pack(units: list[str], max_words: int, sep: str) -> list[str]:
    """Greedy: consecutive units joined while they fit."""
    out: list[str] = []
    current: list[str] = []
    for unit in units:
        if current and _word_count(sep.join([*current, unit])) > max_words:
            out.append(sep.join(current))
            current = []
        current.append(unit)
    if current:
        out.append(sep.join(current))
    return out


def _with_overlap(pieces: list[str], overlap: int) -> list[str]:
    if overlap <= 0:
        return pieces
    out = [pieces[0]]
    for prev, piece in itertools.pairwise(pieces):
        tail = prev.split()[-overlap:]
        out.append(" ".join([*tail, piece]))
    return out


def split_long(paragraph: str, max_words: int, overlap: int) -> list[str]:
    """A paragraph over `max_words`, cut at the most natural boundary that works."""
    lines = [ln for ln in paragraph.split("\n") if ln.strip()]
    if len(lines) > 1 and all(_word_count(ln) <= max_words for ln in lines):
        if lines[0].lstrip().startswith("|") and len(lines) > 2 and set(lines[1].replace(" ", "")) <= set("|:-"):
            header, rows = lines[:2], lines[2:]  # a Markdown table: every piece repeats the header
            budget = max(1, max_words - _word_count("\n".join(header)))
            return ["\n".join([*header, piece]) for piece in _pack(rows, budget, "\n")]
        return _pack(lines, max_words, "\n")
    flat = " ".join(paragraph.split())
    sentences = _SENTENCE.split(flat)
    if len(sentences) > 1 and all(_word_count(s) <= max_words - overlap for s in sentences):
        return _with_overlap(_pack(sentences, max_words - overlap, " "), overlap)
    return _split_words(flat, max_words, overlap)


def chunk_body(body: str, max_words: int, overlap: int) -> list[str]:
    units: list[str] = []
    for paragraph in _paragraphs(body):
        units.extend([paragraph] if _word_count(paragraph) <= max_words else split_long(paragraph, max_words, overlap))
    return _pack(units, max_words, "\n\n")


def chunk_document(doc: ParsedDocument, max_words: int = 120, overlap: int | None = None) -> list[TextChunk]:
    if max_words < 10:
        raise ValueError("max_words must be at least 10")
    overlap = max(0, min(overlap if overlap is not None else max_words // 8, max_words // 2))
    if doc.kind == "faq":
        parts: list[Section | Unit] = [Unit(q, a) for q, a in doc.faqs]
    elif doc.kind in ("markdown", "html", "pdf", "docx"):  # the parsers give these Markdown-shaped text
        parts = split_units(sections_of(doc.text), doc.title)
    else:  # plain text: no headings, but a file titled with a question is that question's answer
        parts = split_units([Section(0, "", "", doc.text)], doc.title)
    pieces: list[tuple[str, str]] = []
    for part in parts:
        if isinstance(part, Unit):
            pieces.extend((part.question, unit_text(part.question, answer))
                          for answer in unit_answers(part.answer, max_words, overlap))
        else:
            pieces.extend((part.path, text) for text in chunk_body(part.body, max_words, overlap))
    return [TextChunk(i, heading[:500], text) for i, (heading, text) in enumerate(pieces)]


def unit_answers(answer: str, max_words: int, overlap: int) -> list[str]:
    """A unit's answer as one passage, or cut like a long section when it is over UNIT_MAX_FACTOR times the
    chunk size (a long help article under a question heading), so no passage grows without bound."""
    if _word_count(answer) <= max_words * UNIT_MAX_FACTOR:
        return [answer]
    return chunk_body(answer, max_words, overlap)
