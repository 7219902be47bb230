"""The grounding evaluation set: sentences labelled supported / unsupported by a passage, built from real data.

Passages come from three real corpora: the example tenant's pack (tenants/northwind/knowledge, chunked as
ingestion chunks it), the COVID-19 FAQ (../shared/data/qa/covid_faq) and DSTC11 track 5's hotel and restaurant
FAQs (../shared/data/qa/dstc11_track5, FAQ snippets as "Q: ...\\nA: ..."). For each passage, from one of its
sentences (at least 5 words, picked by a seeded RNG):

supported (label 1)
  verbatim     the sentence as the passage has it;
  paraphrase   the sentence rewritten by `paraphrase`: contractions and synonyms from `SYNONYMS`, "X if Y." turned
               into "If Y, X.", a parenthesis dropped, and a "Yes, " / "Good news: " opening (at least one rule
               must apply, else no case);
  part         one part of a longer sentence stated on its own (`part_of`): "Gift cards never expire, have no fees
               and can be used online and in stores." -> "Can be used online and in stores.", as a reply restates
               only what the question asked about.
unsupported (label 0)
  other        a sentence from another passage of the same corpus (another FAQ entry or document section);
  number       the sentence with one number changed (`swap_number`);
  negation     the sentence with its polarity flipped (`flip_negation`);
  invented     a claim from `INVENTED` about the passage's own topic word (its most frequent content word);
  extended     the sentence with an invented clause appended (`EXTENSIONS`): true start, false end.

Known label noise: an `other` sentence can happen to be true of the passage too (two FAQ entries that say the
same thing); it counts as unsupported.

    from benchmarks.grounding_cases import build_cases, northwind_passages
"""

from __future__ import annotations

import json
import random
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared" / "data"
NORTHWIND = REPO / "tenants" / "northwind"


@dataclass(frozen=True)
class EvalPassage:
    chunk_id: str
    document: str  # cases take their `other` sentences from passages of other documents
    heading: str
    text: str
    score: float = 1.0


@dataclass(frozen=True)
class Case:
    corpus: str
    passage: EvalPassage
    sentence: str
    kind: str  # verbatim | paraphrase | other | number | negation | invented | extended
    supported: bool


# -- passages ----------------------------------------------------------------------------------------------
def northwind_passages() -> list[EvalPassage]:
    from app.knowledge.chunk import chunk_document
    from app.knowledge.collect import collect
    from app.knowledge.parse import parse

    files, errors = collect([NORTHWIND / "knowledge"], max_bytes=10_000_000)
    assert not errors, errors
    out: list[EvalPassage] = []
    for source in files:
        doc = parse(source)
        for chunk in chunk_document(doc):
            # An FAQ entry is its own document: its neighbours answer other questions.
            document = f"{doc.path}#{chunk.ordinal}" if doc.kind == "faq" else f"{doc.path}#{chunk.heading}"
            out.append(EvalPassage(f"{doc.path}:{chunk.ordinal}", document, chunk.heading, chunk.text))
    return out


def covid_passages() -> list[EvalPassage]:
    out = []
    for line in (SHARED / "qa" / "covid_faq" / "faq_corpus.jsonl").open():
        row = json.loads(line)
        text = f"Q: {row['question'].strip()}\nA: {row['answer'].strip()}"
        out.append(EvalPassage(f"covid:{row['faq_id']}", f"covid:{row['faq_id']}", "", text))
    return out


def dstc11_passages(tenants: int = 40) -> list[EvalPassage]:
    """FAQ snippets of the first `tenants` hotels and restaurants (`other` sentences come from the same one)."""
    out = []
    seen: list[str] = []
    for line in (SHARED / "qa" / "dstc11_track5" / "kb_snippets.jsonl").open():
        row = json.loads(line)
        if row["doc_type"] != "faq":
            continue
        if row["tenant"] not in seen:
            if len(seen) >= tenants:
                continue
            seen.append(row["tenant"])
        text = f"Q: {row['question'].strip()}\nA: {row['text'].strip()}"
        out.append(EvalPassage(row["snippet_id"], row["snippet_id"], row["entity_name"].title(), text))
    return out


# -- rewriting rules ---------------------------------------------------------------------------------------
CONTRACTIONS = [("do not", "don't"), ("does not", "doesn't"), ("cannot", "can't"), ("will not", "won't"),
                ("is not", "isn't"), ("are not", "aren't"), ("you will", "you'll"), ("we will", "we'll"),
                ("it is", "it's"), ("we are", "we're"), ("you are", "you're")]
SYNONYMS = [("purchase", "buy"), ("buy", "purchase"), ("receive", "get"), ("items", "products"),
            ("item", "product"), ("within", "inside"), ("contact", "get in touch with"), ("help", "assist"),
            ("customers", "shoppers"), ("quickly", "fast"), ("must", "have to"), ("start", "begin"),
            ("large", "big"), ("small", "little"), ("choose", "pick"), ("show", "display"), ("also", "as well"),
            ("however", "but"), ("approximately", "about"), ("people", "individuals"), ("often", "frequently"),
            ("usually", "typically"), ("allowed", "permitted"), ("available", "offered"), ("provide", "offer"),
            ("need", "require"), ("use", "make use of"), ("ask", "request"), ("send", "ship"),
            ("check", "verify"), ("answer", "reply"), ("illness", "sickness"), ("disease", "illness")]
INVENTED = [
    "All {w} purchases come with a lifetime free-repair guarantee.",
    "We offer free same-day delivery on every {w} order.",
    "You can get a full cash refund on {w} at any time, with no receipt needed.",
    "Members get a discount on {w} every weekend.",
    "Our {w} service is available around the clock, including public holidays.",
    "There is never a charge for {w}, and nobody will ask you for proof of it.",
    "The {w} is certified by an independent laboratory every month.",
    "Any {w} can be exchanged in store for store credit of equal value.",
]
EXTENSIONS = [
    ", and this comes with a lifetime guarantee.",
    ", and we refund the full price if you are not satisfied.",
    ", and it is free for loyalty members.",
    ", although exceptions are made on request at no extra charge.",
]
_WORD = re.compile(r"[A-Za-z][a-z]+")
_TOPIC_STOP_TEXT = """this that with from your have will which their there they what when where about
    would could should these those into than then them also more other some such only been were being does
    please return returns order orders"""
_TOPIC_STOP = frozenset(_TOPIC_STOP_TEXT.split())


def _replace_word(sentence: str, old: str, new: str) -> str:
    def sub(m: re.Match[str]) -> str:
        word = m.group(0)
        return new[0].upper() + new[1:] if word[0].isupper() else new

    return re.sub(rf"\b{re.escape(old)}\b", sub, sentence, count=1, flags=re.IGNORECASE)


def paraphrase(sentence: str, rng: random.Random) -> str | None:
    """A deterministic rewrite (given the RNG's state) that keeps the meaning; None when no rule applies."""
    s = sentence
    for old, new in CONTRACTIONS:
        s = _replace_word(s, old, new)
    for old, new in SYNONYMS:
        if rng.random() < 0.7:
            s = _replace_word(s, old, new)
    s = re.sub(r"\s*\([^)]{1,60}\)", "", s)
    m = re.match(r"^(?P<main>[^,;]{8,}?) (?P<cond>if|when|unless) (?P<rest>[^,;]+)\.$", s)
    if m:
        main = m.group("main")
        s = f"{m.group('cond').capitalize()} {m.group('rest')}, {main[0].lower() + main[1:]}."
    if s == sentence:
        opener = rng.choice(["Yes, ", "Good news: "])
        first = s.split()[0]
        lowered = s if first.isupper() or first in {"I"} else s[0].lower() + s[1:]
        s = opener + lowered
    return s if s != sentence else None


# A part that starts with one of these depends on the rest of its sentence ("unless ...", "but ...").
_DEPENDENT_TEXT = """if unless except but although though when while so because or then which who whose
    that where whereas otherwise until before after including such as than"""
_DEPENDENT = frozenset(_DEPENDENT_TEXT.split())


_VERBS_TEXT = "is are was were has have can cannot can't will must may should do does never"
_VERBS = frozenset(_VERBS_TEXT.split())


def part_of(sentence: str, rng: random.Random) -> str | None:
    """One part of a sentence split at its commas and semicolons, at least 4 words long, that stands on its own
    (does not open with a `_DEPENDENT` word); None when the sentence has no such part. A part that opens with a
    verb ("have no fees and ...") gets "They" as its subject, as a reply would write it."""
    pieces = [p.strip() for p in re.split(r"[,;]\s+(?:and\s+)?", sentence.rstrip(".!:")) if p.strip()]
    if len(pieces) < 2:
        return None
    fit = [p for p in pieces if len(p.split()) >= 4 and p.split()[0].lower() not in _DEPENDENT
           and "(" not in p and ")" not in p]
    if not fit:
        return None
    part = rng.choice(fit)
    if part != pieces[0] and part.split()[0] in _VERBS:
        part = "They " + part
    return part[0].upper() + part[1:] + "."


def swap_number(sentence: str, rng: random.Random) -> str | None:
    numbers = list(re.finditer(r"\d+(?:\.\d+)?", sentence))
    if not numbers:
        return None
    m = rng.choice(numbers)
    value = float(m.group(0))
    new = value * 2 if value <= 50 else value + 10
    text = f"{new:.2f}" if "." in m.group(0) else str(int(new))
    return sentence[: m.start()] + text + sentence[m.end():]


_FLIPS = [(r"\bcannot\b", "can"), (r"\bcan't\b", "can"), (r"\bdo not\b", "do"), (r"\bdoes not\b", "does"),
          (r"\bdon't\b", "do"), (r"\bis not\b", "is"), (r"\bare not\b", "are"), (r"\bnever\b", "always"),
          (r"\bnot\b ", ""), (r"(?<!^)\bno\b", "a"), (r"\bcan\b", "cannot"), (r"\bis\b", "is not"),
          (r"\bare\b", "are not"),
          (r"\bwill\b", "will not"), (r"\bmust\b", "must not"), (r"\bshould\b", "should not"), (r"\bhas\b", "has no"),
          (r"\bhave\b", "do not have")]


def flip_negation(sentence: str) -> str | None:
    for pattern, new in _FLIPS:
        if re.search(pattern, sentence, flags=re.IGNORECASE):
            return re.sub(pattern, new, sentence, count=1, flags=re.IGNORECASE)
    return None


def topic_word(text: str) -> str:
    words = [w.lower() for w in _WORD.findall(text) if len(w) > 4 and w.lower() not in _TOPIC_STOP]
    return Counter(words).most_common(1)[0][0] if words else "product"


# -- cases -------------------------------------------------------------------------------------------------
def build_cases(corpus: str, passages: list[EvalPassage], seed: int = 7) -> list[Case]:
    from app.assistant.text_measures import is_factual, passage_sentences

    rng = random.Random(seed)
    part_rng = random.Random(seed + 1)  # its own generator: the other kinds stay the cases they were
    sentences = {p.chunk_id: [s for s in passage_sentences(p.text)
                              if len(s.split()) >= 5 and not s.endswith("?") and is_factual(s)]
                 for p in passages}
    cases: list[Case] = []
    for p in passages:
        own = sentences[p.chunk_id]
        if not own:
            continue
        s = rng.choice(own)
        cases.append(Case(corpus, p, s, "verbatim", True))
        if (para := paraphrase(s, rng)) is not None:
            cases.append(Case(corpus, p, para, "paraphrase", True))
        if (part := part_of(s, part_rng)) is not None:
            cases.append(Case(corpus, p, part, "part", True))
        others = [t for q in passages if q.document != p.document for t in sentences[q.chunk_id]
                  if t not in p.text]
        if others:
            cases.append(Case(corpus, p, rng.choice(others), "other", False))
        numbered = [t for t in own if re.search(r"\d", t)]
        if numbered and (swapped := swap_number(rng.choice(numbered), rng)) is not None:
            cases.append(Case(corpus, p, swapped, "number", False))
        if (flipped := flip_negation(s)) is not None and flipped != s:
            cases.append(Case(corpus, p, flipped, "negation", False))
        cases.append(Case(corpus, p, rng.choice(INVENTED).format(w=topic_word(p.text)), "invented", False))
        cases.append(Case(corpus, p, s.rstrip(".!") + rng.choice(EXTENSIONS), "extended", False))
    return cases
