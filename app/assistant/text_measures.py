"""The text measures of the grounding check (app/assistant/grounding.py): sentence and clause splitting, citation
markers, content terms, numbers, names and negation, and the small talk that makes no claim."""

from __future__ import annotations

import re
from typing import Any

from app.assistant.patterns import starting_with
from app.providers.embeddings.sparse import STOPWORDS, tokenize

_CITATION = re.compile(r"\[(\d{1,2}(?:\s*,\s*\d{1,2})*)\]")
# A PII placeholder the reply may carry ([EMAIL], [PHONE_2]): neither a claim nor a number.
_PLACEHOLDER = re.compile(r"\[[A-Z][A-Z_]*?(?:_\d+)?\]")
# A sentence ends at . ! ? or, in a reply, at a citation marker followed by a capital ("a list item [1] Next").
# (`starting_with`, here and below: the same matches, found faster.)
_SENTENCE_END = starting_with(r"\s", re.compile(r"(?<=[.!?])\s+(?=[\"'(\[]?[A-Z0-9])|(?<=\])\s+(?=[A-Z])"))
# "Foo. [1]" and "Foo.[1][2]": the markers move before the full stop, so they stay with their sentence.
_TRAILING_MARKERS = re.compile(r"([.!?]+)\s*((?:\[\d{1,2}(?:\s*,\s*\d{1,2})*\]\s*)+)")
# A reply sentence's clauses: "X, and Y", "X; Y", "X but Y". A bare "and" joins words as often as clauses; a
# colon joins a table row's cells ("Duluth: Monday-Saturday 10 am-7 pm"), whose numbers belong to its first cell.
CLAUSE = starting_with(r",;\s",
                       re.compile(r"[,;]\s+|\s+(?:but|although|though|while|whereas)\s+|\s+[-\u2013\u2014]\s+"))
_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")
_CAPITALISED = starting_with("A-Z", re.compile(r"\b[A-Z][A-Za-z0-9&'-]*[A-Za-z0-9]\b"))
_BLOCK_START = re.compile(r"\s*(?:[-*•]\s|\d+[.)]\s|#|>|\||(?:Q|A|Question|Answer)\s*[:.]\s)")
_MARKDOWN = starting_with(r"*_`\s\-•\d#>",
                          re.compile(r"\*\*|__|`|^\s*(?:[-*•]|\d+[.)])\s+|^\s*#+\s*|^\s*>\s*", re.MULTILINE))

_NUMBER_WORDS = {
    "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6", "seven": "7", "eight": "8",
    "nine": "9", "ten": "10", "eleven": "11", "twelve": "12", "fifteen": "15", "twenty": "20", "thirty": "30",
    "forty": "40", "fifty": "50", "sixty": "60", "ninety": "90", "hundred": "100", "once": "1", "twice": "2",
    "single": "1", "double": "2", "half": "0.5",
}
# The lookahead only skips, at once, the words whose first letter starts no number word (same matches, twice as
# fast: the alternatives are otherwise tried one by one at every word).
_NUMBER_WORD = re.compile(r"\b(?=[" + "".join(sorted({w[0] for w in _NUMBER_WORDS})) + r"])(?:"
                          + "|".join(_NUMBER_WORDS) + r")\b", re.IGNORECASE)
# Negation cues, as `tokenize` leaves them (apostrophes dropped: "can't" -> "cant").
_NEGATIONS_TEXT = """
    not no never cannot cant dont doesnt didnt isnt arent wasnt werent wont wouldnt shouldnt couldnt
    hasnt havent hadnt without none nothing neither nor non
"""
_NEGATIONS = frozenset(_NEGATIONS_TEXT.split())
# Customer-service small talk: words that make no claim about the brand's policies or products.
CHAT_WORDS_TEXT = """
    hi hello hey dear yes news thanks thank welcome glad happy pleased help helps helpful hope let know anything else
    everything something feel ask asking question questions query sure great good nice day today morning
    afternoon evening assist assistance please sorry apologise apologize apologies inconvenience understand
    understood certainly absolutely course regards cheers best wish wishes enjoy reach contact touch team
    colleague colleagues connect connecting pass passing passed further need needs want like
    ok okay sounds look looking forward glad note information info details detail more check checking
    answer answers reply replies response quick quickly shortly soon right away again also just us we
    our ours me my i you your yours chat chatting message messages hear heard great wonderful awesome
    come comes arise arises else theres heres thats whats lets youre youll ill id ive im
    """
CHAT_WORDS = frozenset(tokenize(CHAT_WORDS_TEXT)) | frozenset(CHAT_WORDS_TEXT.split())
_NOT_CONTENT = CHAT_WORDS | _NEGATIONS
# "free" and "member" are claims ("free returns", "members get 10 %") except in these phrases.
# (The lookahead on their first letters, as for `_NUMBER_WORD`.)
_SMALL_TALK = re.compile(r"\b(?=[ftm])(?:feel free\b|(?:team )?members? of (?:our|the|my) team\b|team members?\b)",
                         re.I)

_SPACE_BEFORE_PUNCT = re.compile(r"\s+([.,;:!?])")
_SPACES = re.compile(r"\s{2,}")
_ANY_WORD_CHAR = re.compile(r"\w")


def split_cited(text: str) -> list[tuple[str, list[int]]]:
    """The reply's sentences (markers removed) with the citation numbers each is checked against."""
    out: list[tuple[str, list[int]]] = []
    for paragraph in text.split("\n"):
        paragraph = _TRAILING_MARKERS.sub(lambda m: f" {m.group(2).strip()}{m.group(1)} ", paragraph)
        pending: list[str] = []  # sentences of this paragraph waiting for the next marker
        last: list[int] = []  # the paragraph's latest marker
        for raw in _SENTENCE_END.split(_MARKDOWN.sub("", paragraph).strip()):
            numbers = [int(n) for group in _CITATION.findall(raw) for n in group.split(",")]
            sentence = _SPACE_BEFORE_PUNCT.sub(r"\1", _CITATION.sub("", raw)).strip()
            sentence = _SPACES.sub(" ", sentence)
            if not _ANY_WORD_CHAR.search(sentence):
                if numbers and out:  # a marker alone: it belongs to what came before
                    out[-1] = (out[-1][0], list(dict.fromkeys(out[-1][1] + numbers)))
                continue
            if numbers:
                last = list(dict.fromkeys(numbers))
                out.extend((waiting, last) for waiting in pending)
                pending = []
                out.append((sentence, last))
            else:
                pending.append(sentence)
        out.extend((s, last) for s in pending)  # after the paragraph's last marker: checked against it
    return out


def passage_sentences(text: str) -> list[str]:
    """A passage's sentences. Markdown wraps a paragraph over several lines: those lines are joined; a list
    item, a table row, a heading and an FAQ's "Q:"/"A:" line each start anew."""
    paragraphs: list[list[str]] = []
    joinable = False  # may the next line continue the current paragraph?
    for line in text.splitlines():
        if not line.strip():
            joinable = False
            continue
        if joinable and not _BLOCK_START.match(line):
            paragraphs[-1].append(line.strip())
        else:
            paragraphs.append([line])
        joinable = not re.match(r"\s*(?:#|\|)", line)  # headings and table rows stand alone
    parts: list[str] = []
    for paragraph in paragraphs:
        line = _MARKDOWN.sub("", " ".join(paragraph)).strip().strip("|").strip()
        if not line or set(line) <= set("|-: "):
            continue  # a markdown table's rule
        line = re.sub(r"\s*\|\s*", ": ", line)  # a table row reads as "cell: cell"
        line = re.sub(r"^(?:Q|A|Question|Answer)\s*[:.]\s*", "", line)
        parts.extend(p.strip() for p in _SENTENCE_END.split(line) if p.strip())
    return parts or [text.strip()]


def is_factual(sentence: str, persona_words: frozenset[str] = frozenset()) -> bool:
    """False for sentences that make no claim: questions and small talk (see the module's docstring)."""
    clean = plain_text(sentence)
    return makes_claim(clean, content_terms(clean, persona_words))


def makes_claim(clean: str, terms: frozenset[str]) -> bool:
    """`is_factual` of a sentence already `plain_text`, given its `content_terms` (the grounding check reads both
    once for the verdict and the measures)."""
    return not clean.rstrip().endswith("?") and bool(terms or numbers_in(clean))


def plain_text(text: str) -> str:
    return _PLACEHOLDER.sub(" ", _CITATION.sub(" ", text)).replace("\u2019", "'")


def content_terms(text: str, persona_words: frozenset[str]) -> frozenset[str]:
    # Numbers and negations are checked on their own (an "ill" or "thirty" is no invented word).
    terms = frozenset(tokenize(_NUMBER_WORD.sub(" ", _SMALL_TALK.sub(" ", text)))) - _NOT_CONTENT - persona_words
    return frozenset(t for t in terms if len(t) > 1 and not t.isdigit())


def share_known(terms: frozenset[str], known: frozenset[str]) -> float:
    return len(terms & known) / len(terms) if terms else 1.0


def all_terms(text: str) -> frozenset[str]:
    return frozenset(tokenize(text))


def numbers_in(text: str) -> frozenset[str]:
    found = {_norm_number(n) for n in _NUMBER.findall(text)}
    # casefold, not lower: the pattern ignores case as Unicode does (a long s, U+017F, matches "s"), lower() does not
    found |= {_NUMBER_WORDS[w.casefold()] for w in _NUMBER_WORD.findall(text)}
    return frozenset(found)


def _norm_number(raw: str) -> str:
    value = raw.replace(",", "")
    if "." in value:
        value = value.rstrip("0").rstrip(".") or "0"
    return value.lstrip("0") or "0"


def names_in(text: str, persona_words: frozenset[str]) -> frozenset[str]:
    """Capitalised words past a sentence's first word: products, brands, places, carriers."""
    names: set[str] = set()
    for sentence in _SENTENCE_END.split(text.strip()):
        for m in _CAPITALISED.finditer(sentence):
            word = m.group(0).lower()
            if m.start() == 0 or sentence[:m.start()].strip() in {'"', "'", "("}:
                continue
            if word in persona_words or word in _TITLE_WORDS or len(word) < 2:
                continue
            names.add(word)
    return frozenset(names)


# Capitalised for grammar, not as names.
_TITLE_WORDS = frozenset({"i", "i'm", "i've", "i'll", "i'd", "ok", "yes", "no", "please", "thanks", "hi", "hello"})


NEGATION_SCOPE = 4  # words after a negation cue, within its clause, that it negates
_NEGATION_CLAUSE = re.compile(r"[,.;:!?()]")
_WORDS = re.compile(r"\w+")


def negated_terms(text: str) -> frozenset[str]:
    """The content terms that a negation governs: "cannot be returned" -> {return}. A cue that ends its clause
    governs the two content words before it: "boots with wear on the soles are not" -> {wear, sole}."""
    negated: set[str] = set()
    for clause in _NEGATION_CLAUSE.split(text.lower().replace("'", "").replace("\u2019", "")):
        words = _WORDS.findall(clause)
        cues = [i for i, word in enumerate(words) if word in _NEGATIONS]
        for i, nxt in zip(cues, [*cues[1:], len(words)], strict=False):
            # Counted in content words before the cue: "the soles are not" and "the soles aren't" agree.
            governed = words[i + 1:nxt][:NEGATION_SCOPE] or [
                w for w in words[:i] if w not in _NEGATIONS and w not in STOPWORDS][-NEGATION_SCOPE // 2:]
            negated.update(t for w in governed for t in tokenize(w))
    return frozenset(negated)


def persona_words(persona: dict[str, Any] | None) -> frozenset[str]:
    persona = persona or {}
    words = " ".join(str(persona.get(k) or "") for k in ("name", "brand"))
    return frozenset(tokenize(words)) | frozenset(w.lower() for w in re.findall(r"[A-Za-z0-9&'-]+", words))
