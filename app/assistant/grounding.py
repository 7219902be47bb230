"""Is an LLM reply supported by the passages it cites? Measured, not taken from the model's brackets.

A reply is split into sentences. Each sentence's citations are the `[n]` markers inside it; a sentence without
its own marker takes the next marker of its paragraph (offline-composer style "A. B. C [1]."), or after the
paragraph's last marker that one ("A [1]. B."); a paragraph without any marker cites nothing. Then:

* **Non-factual** sentences need no citation: questions ("Anything else I can help with?"), the persona's
  greeting and sign-off, and sentences with no digit and no content word once stopwords, customer-service
  small talk (`CHAT_WORDS`: hello, thanks, happy, help, let, know, team, ...) and the persona's own name and
  brand are set aside. "Happy to help! Let me know if anything else comes up." is non-factual; "Happy to help:
  every boot has a lifetime guarantee." is not (guarantee, lifetime, boot).
* A **factual** sentence is supported by its cited passages when all of these hold:
  1. it cites something (a factual sentence after the last marker of its paragraph cites nothing);
  2. **numbers**: each clause's numbers (digits or number words, "$75", "thirty") occur in the passage sentence
     or clause that shares most of that clause's words (the shortest among equals): "2 years for footwear"
     fails against "1 year for footwear, 2 years for apparel";
  3. **names**: every capitalised word past its first (a product, brand, place, carrier) occurs in the passages;
  4. **negation**: among the words it shares with the passages, it negates those that the best-matching passage
     sentence or clause (never an FAQ's question) negates. A cue governs up to four words after it in its
     clause, or the two content words before it when it ends the clause ("the soles are not"). "Can be
     returned" against "cannot be returned" fails; "gift cards never expire" against "gift cards never expire,
     have no fees" passes;
  5. **words**, with content words = Snowball stems less stopwords, small talk, the persona's names and numbers:
     a. every clause (split at , ; and "but", "although", "while"...) of 2+ content words has at least
        `RULE.clause` of them in the passages: a true sentence with an invented clause appended fails;
     b. at least `RULE.local` of the sentence's content words occur in one place of a passage (a passage
        sentence with its neighbours), not scattered across it;
     c. if that share is below 1 (a word the passage does not use: a synonym, or an invention), the sentence's
        MiniLM embedding must be at least `RULE.similarity` close (cosine) to a passage sentence, adjacent pair
        or clause. With every word found in one place, similarity is not asked: restating PART of a passage
        sentence ("They have no fees and can be used online and in stores.") is supported even though its
        embedding differs from the whole sentence's.
  Words are the primary signal; the embedding only decides when words leave doubt. The three thresholds were
  chosen on one split and measured on another (benchmarks/grounding.py; results in docs/benchmarks.md).

A reply is grounded when it cites at least one passage and every factual sentence is supported. No LLM judge:
nothing leaves the machine, and the check costs one embedding call per reply at most (passage sentences are
cached; a sentence that quotes one of them takes its vector).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from functools import lru_cache
from typing import Any

import numpy as np

from app.assistant.passage_units import Embed, PassageCache, PassageUnits, Units, VectorStore
from app.assistant.pii_restore import PiiVault
from app.assistant.prompts import Draft, PassageLike
from app.assistant.text_measures import (
    CLAUSE,
    all_terms,
    content_terms,
    makes_claim,
    names_in,
    negated_terms,
    numbers_in,
    persona_words,
    plain_text,
    share_known,
    split_cited,
)


@dataclass(frozen=True)
class Rule:
    """The thresholds of the support rule (see the module's docstring)."""

    clause: float  # every clause: at least this share of its content words in the cited passages
    local: float  # at least this share of the sentence's content words in one place of a passage
    similarity: float  # MiniLM cosine needed when `local` is below 1


# Chosen by benchmarks/grounding.py on its tuning split (COVID-19 FAQ); see docs/benchmarks.md.
RULE = Rule(clause=0.5, local=0.6, similarity=0.88)

@dataclass(frozen=True)
class SentenceCheck:
    text: str
    citations: list[int]  # the reply's own 1-based numbers
    factual: bool
    supported: bool
    problem: str | None = None  # no_citation | number | name | negation | weak_support
    coverage: float = 0.0
    similarity: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"text": self.text, "citations": self.citations, "problem": self.problem,
                "coverage": round(self.coverage, 3), "similarity": round(self.similarity, 3)}


@dataclass(frozen=True)
class Verdict:
    grounded: bool
    sentences: list[SentenceCheck] = field(default_factory=list)
    cites_nothing: bool = False

    @property
    def unsupported(self) -> list[SentenceCheck]:
        return [s for s in self.sentences if s.factual and not s.supported]

    def summary(self) -> str:
        if self.cites_nothing:
            return "the reply cites no retrieved passage"
        factual = sum(s.factual for s in self.sentences)
        return f"{len(self.unsupported)} of {factual} factual sentences not supported by the passage they cite"

    def meta(self) -> dict[str, Any]:
        """What an escalation keeps for the console to highlight."""
        return {"grounding": {
            "cites_nothing": self.cites_nothing,
            "unsupported": [s.to_dict() for s in self.unsupported],
            "sentences": len(self.sentences),
        }}


@dataclass(frozen=True)
class _Reading:
    """A reply sentence read once: its plain text and content terms say whether it is factual and start its
    measures."""

    text: str
    citations: list[int]
    clean: str  # plain_text(text)
    terms: frozenset[str]  # content_terms(clean, persona_words)
    factual: bool  # is_factual(text, persona_words)

    @classmethod
    def of(cls, sentence: str, citations: list[int], persona_words: frozenset[str]) -> _Reading:
        clean = plain_text(sentence)
        terms = content_terms(clean, persona_words)
        return cls(sentence, citations, clean, terms, makes_claim(clean, terms))


class GroundingChecker:
    def __init__(self, embed: Embed, *, embed_sentences: Embed | None = None, rule: Rule = RULE,
                 cache_size: int = 2048, shared: PassageCache | None = None, store: VectorStore | None = None) -> None:
        """`embed`: the answering embedder's `embed_documents` (one checker per process: `Container.grounding`);
        `embed_sentences`: the same vectors for a reply's few sentences, in model calls shared with concurrent
        work (`MiniLMEmbedder.embed_sentences`); `embed` when not given. `shared`: a second cache behind the
        process's own, which other processes fill too (embedded `serve`'s, for its answering processes:
        app/answerers.py), so a passage is embedded once, not once per process. `store`: where passages' vectors
        are kept per tenant across restarts and replicas (`StoredVectors`), for checks given their tenant."""
        self._embed = embed
        self._embed_sentences = embed_sentences or embed
        self.rule = rule
        self._passages = PassageUnits(embed, cache_size=cache_size, shared=shared, store=store)

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        return self._embed(list(texts)) if texts else []

    # -- the check ---------------------------------------------------------------------------------------
    def check(self, text: str, cited: Sequence[PassageLike], persona: dict[str, Any] | None = None,
              tenant_id: str | None = None) -> Verdict:
        """`cited[n - 1]` is the passage the reply's `[n]` points at (the order of `Draft.citations`); `tenant_id`:
        the passages' tenant, whose kept vectors the check may read and add to."""
        own, voice = _persona_parts(persona)
        sentences = [_Reading.of(s, nums, own) for s, nums in split_cited(text) if s not in voice]
        # Only a factual sentence that cites a passage is measured, so only those need an embedding.
        measured: dict[str, list[Units]] = {}
        for r in sentences:
            passages = [cited[n - 1] for n in r.citations if 0 < n <= len(cited)]
            if passages and r.factual:
                measured.setdefault(r.text, []).extend(self._units(p, tenant_id) for p in passages)
        vectors = self.sentence_vectors(measured)
        scored = [self._score(r, cited, own, vectors.get(r.text), tenant_id) for r in sentences]
        cites_nothing = not any(s.citations for s in scored if 0 < min(s.citations, default=0) <= len(cited))
        grounded = not cites_nothing and all(s.supported for s in scored if s.factual)
        return Verdict(grounded=grounded, sentences=scored, cites_nothing=cites_nothing)

    def score_sentence(self, sentence: str, numbers: list[int], cited: Sequence[PassageLike],
                       persona_words: frozenset[str] = frozenset(),
                       vector: Sequence[float] | np.ndarray | None = None) -> SentenceCheck:
        return self._score(_Reading.of(sentence, numbers, persona_words), cited, persona_words, vector)

    def _score(self, r: _Reading, cited: Sequence[PassageLike], persona_words: frozenset[str],
               vector: Sequence[float] | np.ndarray | None, tenant_id: str | None = None) -> SentenceCheck:
        if not r.factual:
            return SentenceCheck(r.text, r.citations, factual=False, supported=True)
        passages = [cited[n - 1] for n in r.citations if 0 < n <= len(cited)]
        if not passages:
            return SentenceCheck(r.text, r.citations, True, False, "no_citation")
        measures = self._measure(r, passages, persona_words, vector, tenant_id)
        return SentenceCheck(r.text, r.citations, True, measures.problem is None, measures.problem,
                             measures.coverage, measures.similarity)

    def measure(self, sentence: str, passages: Sequence[PassageLike],
                persona_words: frozenset[str] = frozenset(),
                vector: Sequence[float] | np.ndarray | None = None) -> Measures:
        """The support signals of one factual sentence against the passages it cites."""
        return self._measure(_Reading.of(sentence, [], persona_words), passages, persona_words, vector)

    def _measure(self, r: _Reading, passages: Sequence[PassageLike], persona_words: frozenset[str],
                 vector: Sequence[float] | np.ndarray | None, tenant_id: str | None = None) -> Measures:
        units = [self._units(p, tenant_id) for p in passages]
        sentence, clean, terms = r.text, r.clean, r.terms
        known_terms = frozenset().union(*(u.terms for u in units))
        coverage = share_known(terms, known_terms)
        # Each clause's terms and numbers once: the clause share and the number check both read them.
        clauses = [(content_terms(c, persona_words), numbers_in(c)) for c in CLAUSE.split(clean)]
        clause = min((share_known(t, known_terms) for t, _ in clauses if len(t) >= 2), default=1.0)
        local = max(share_known(terms, window) for u in units for window in u.windows)
        query = np.asarray(vector, dtype=np.float32) if vector is not None else \
            self.sentence_vectors({sentence: units})[sentence]
        best, best_single, best_negated = -1.0, -1.0, frozenset[str]()
        for u in units:
            sims = u.vectors @ query
            best = max(best, float(sims.max()))
            # Negation is compared with one sentence or clause: a pair brings its neighbour's negations along.
            i = int(np.argmax(np.where(u.single, sims, -1.0)))
            if float(sims[i]) > best_single:
                best_single, best_negated = float(sims[i]), u.negated[i]
        similarity = max(best, 0.0)
        shared = all_terms(clean) & frozenset().union(*(u.all_terms for u in units))
        mismatch: str | None = None
        if not all(_numbers_placed(n, t, units) for t, n in clauses):
            mismatch = "number"
        elif not names_in(clean, persona_words) <= frozenset().union(*(u.words for u in units)):
            mismatch = "name"
        elif negated_terms(clean) & shared != best_negated & shared:
            mismatch = "negation"
        measures = Measures(coverage, similarity, mismatch, None, local, clause)
        problem = mismatch or self.verdict(measures)
        return Measures(coverage, similarity, mismatch, problem, local, clause)

    def verdict(self, m: Measures) -> str | None:
        return None if scores_support(m, self.rule) else "weak_support"

    def sentence_vectors(self, sentences: dict[str, list[Units]]) -> dict[str, np.ndarray]:
        """The embeddings of reply sentences (each with its cited passages' units), in one model call at most.

        A sentence that is, character for character once `plain_text`, one of its passages' units (a quoted
        FAQ sentence) takes that unit's row: the same text through the same `embed` gives the same vector,
        bit for bit (tests/assistant/test_grounding_vectors.py), so the quote costs no model call."""
        vectors: dict[str, np.ndarray] = {}
        missing: dict[str, list[str]] = {}  # plain text -> the sentences that read so
        for sentence, units in sentences.items():
            clean = plain_text(sentence)
            row = next((u.vectors[u.texts.index(clean)] for u in units if clean in u.texts), None)
            if row is not None:
                vectors[sentence] = row
            else:
                missing.setdefault(clean, []).append(sentence)
        embedded = self._embed_sentences(list(missing)) if missing else []
        for same, vector in zip(missing.values(), embedded, strict=True):
            vectors.update(dict.fromkeys(same, np.asarray(vector, dtype=np.float32)))
        return vectors

    def _units(self, passage: PassageLike, tenant_id: str | None = None) -> Units:
        return self._passages.get(passage, tenant_id)


@dataclass(frozen=True)
class Measures:
    coverage: float  # share of the sentence's content words found anywhere in the cited passages
    similarity: float  # best MiniLM cosine against a passage sentence, adjacent pair or clause
    mismatch: str | None  # number | name | negation: fails whatever the scores
    problem: str | None  # the mismatch, or weak_support, or None when supported
    local: float = 0.0  # best share found in one place: a passage sentence with its neighbours
    clause: float = 1.0  # the worst clause's share (clauses of 2+ content words)


def _numbers_placed(numbers: frozenset[str], terms: frozenset[str], units: Sequence[Units]) -> bool:
    """A clause's `numbers` all occur in the passage sentence or clause that matches it best (most of its content
    `terms`, then the shortest): "a flat $30" is no return-shipping price because the sentence before mentions
    repairs over $30, and "2 years for footwear" is not what "1 year for footwear, 2 years for apparel" says."""
    if not numbers:
        return True
    places = [(share_known(terms, t), -len(t), n) for u in units for t, n in u.places]
    best = max((share, size) for share, size, _ in places)
    return any((share, size) == best and numbers <= n for share, size, n in places)


def _persona_parts(persona: dict[str, Any] | None) -> tuple[frozenset[str], frozenset[str]]:
    """The persona's own words (`persona_words`) and the sentences of its greeting and sign-off ("Happy trails,
    Ava"): its voice, not claims."""
    persona = persona or {}
    return _persona_parts_of(*(str(persona.get(k) or "") for k in ("name", "brand", "greeting", "sign_off")))


@lru_cache(maxsize=256)  # the same few personas on every reply; keyed by texts their customers read anyway
def _persona_parts_of(name: str, brand: str, greeting: str, sign_off: str) -> tuple[frozenset[str], frozenset[str]]:
    voice = frozenset(s for line in (greeting, sign_off) if line for s, _ in split_cited(line))
    return persona_words({"name": name, "brand": brand}), voice


def scores_support(m: Measures, rule: Rule) -> bool:
    """The scores part of the rule (the number, name and negation checks are `Measures.mismatch`)."""
    return m.clause >= rule.clause and m.local >= rule.local and (m.local >= 1.0 or m.similarity >= rule.similarity)


def check_reply(text: str, citations: Sequence[dict[str, Any]], passages: Sequence[PassageLike],
                persona: dict[str, Any] | None, checker: GroundingChecker, tenant_id: str | None = None) -> Verdict:
    """Check a reply whose `citations` (a Draft's, in the text's [n] order) name chunks among `passages`."""
    by_chunk = {p.chunk_id: p for p in passages}
    cited = [by_chunk[c["chunk_id"]] for c in citations if c.get("chunk_id") in by_chunk]
    return checker.check(text, cited, persona, tenant_id)


@dataclass(frozen=True)
class Vetted:
    """An LLM draft after the grounding check and PII restoration: send `draft`, or escalate with it."""

    draft: Draft
    escalate_reason: str | None = None  # ungrounded | pii_placeholder
    detail: str | None = None
    meta: dict[str, Any] | None = None


def vet_llm_draft(draft: Draft, passages: Sequence[PassageLike], persona: dict[str, Any] | None,
                  vault: PiiVault, checker: GroundingChecker, tenant_id: str | None = None) -> Vetted:
    """Grounded or reviewed, and no placeholder ever reaches a customer. The check reads the model's own text
    (placeholders are neither claims nor numbers); the draft kept, sent or approved later carries the customer's
    values back in place, so what agents approve is what the customer should read."""
    verdict = check_reply(draft.text, draft.citations, passages, persona, checker, tenant_id)
    restored = vault.restore(draft.text)
    vetted = replace(draft, text=restored.text)
    if not verdict.grounded:
        return Vetted(vetted, "ungrounded", verdict.summary(), verdict.meta())
    if restored.unresolved:
        unresolved = sorted(set(restored.unresolved))
        return Vetted(vetted, "pii_placeholder",
                      f"the reply holds placeholders this customer gave no value for: {', '.join(unresolved)}",
                      {"pii_placeholders": unresolved})
    return Vetted(vetted)
