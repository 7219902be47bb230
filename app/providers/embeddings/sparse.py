"""Sparse term vectors for the keyword half of hybrid search (BM25, with IDF applied by Qdrant).

Documents get BM25's saturated term frequency, `tf * (k1 + 1) / (tf + k1 * (1 - b + b * len / avg_len))`;
queries get 1.0 per distinct term. The vector stores declare the sparse vector with `Modifier.IDF`, so the dot
product Qdrant computes is BM25. Term indices are crc32 of the stemmed term: stable across processes and
machines (Python's `hash()` is salted per process), and u32 as Qdrant requires.
"""

from __future__ import annotations

import re
import zlib
from collections import Counter
from collections.abc import Sequence
from functools import lru_cache

from py_rust_stemmers import SnowballStemmer

from app.providers.embeddings.base import SparseVector

_WORD = re.compile(r"\w+", re.UNICODE)

# A short English list: articles, pronouns, auxiliaries, prepositions. Question words ("how", "when") and
# negations stay: they change what a customer asks. Contractions lose their apostrophe before this check;
# the ones that spell real words ("ill", "id", "well", "shell") are kept.
_STOPWORD_TEXT = """
    a an the and or but if then else of at by for with about against between into through during before
    after above below to from up down in out on off over under again further once here there all any
    both each few more most other some such only own same so than too very s t can will just should now
    i me my myself we our ours ourselves you your yours yourself yourselves he him his himself she her
    hers herself it its itself they them their theirs themselves this that these those am is are was
    were be been being have has had having do does did doing would could ought im youre hes shes theyre
    ive youve weve theyve youd theyd youll theyll as until while because
"""
STOPWORDS = frozenset(_STOPWORD_TEXT.split())


@lru_cache(maxsize=1)
def _stemmer() -> SnowballStemmer:
    return SnowballStemmer("english")


# `_stem` remembers words of at most this many letters. A longer or digit-bearing "word" is rarely seen twice (an
# order, card or phone number, a run of characters as long as a message); caching it would keep customers' numbers
# in a process-wide cache past their erasure, and let one 4,000-character token take 8 KB of it.
_CACHED_WORD_CHARS = 24


@lru_cache(maxsize=1 << 15)  # ~3 MB when full: 32,768 words of at most 24 letters, and their stems
def _cached_stem(word: str) -> str:
    return _stemmer().stem_word(word)


def _stem(word: str) -> str:
    """A word's Snowball stem, remembered for short words of letters: the same few thousand come back in every
    question, passage and reply, and a lookup costs a fraction of the stemmer's call. The stem is a function of the
    word alone, and a hit saves well under a microsecond: nothing one tenant could time to learn another's words."""
    if len(word) <= _CACHED_WORD_CHARS and word.isalpha():
        return _cached_stem(word)
    return _stemmer().stem_word(word)


def tokenize(text: str) -> list[str]:
    """Lower-cased Unicode words, stopwords removed, Snowball-stemmed (English)."""
    return [_stem(w) for w in _WORD.findall(text.lower().replace("'", "").replace("\u2019", "")) if w not in STOPWORDS]


def term_index(term: str) -> int:
    return zlib.crc32(term.encode("utf-8"))


class TermFrequencyEncoder:
    """`SparseEncoder`: BM25 term weights without IDF (the store applies it over the indexed corpus)."""

    def __init__(self, k1: float = 1.2, b: float = 0.75, avg_len: float = 40.0) -> None:
        self.k1 = k1
        self.b = b
        self.avg_len = avg_len

    def _vector(self, weights: dict[int, float]) -> SparseVector:
        indices = sorted(weights)
        return SparseVector(indices=indices, values=[weights[i] for i in indices])

    def encode_document(self, text: str) -> SparseVector:
        terms = tokenize(text)
        norm = self.k1 * (1 - self.b + self.b * len(terms) / self.avg_len)
        weights: dict[int, float] = {}
        # Two terms whose crc32 collide share one dimension: add them up rather than drop one.
        for term, tf in Counter(terms).items():
            idx = term_index(term)
            weights[idx] = weights.get(idx, 0.0) + tf * (self.k1 + 1) / (tf + norm)
        return self._vector(weights)

    def encode_documents(self, texts: Sequence[str]) -> list[SparseVector]:
        return [self.encode_document(t) for t in texts]

    def encode_query(self, text: str) -> SparseVector:
        return self._vector({term_index(t): 1.0 for t in set(tokenize(text))})
