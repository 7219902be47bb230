"""A cited passage's comparison units for the grounding check (app/assistant/grounding.py): its sentences, clauses
and adjacent pairs with their terms, numbers and MiniLM embeddings. Embedding them (~30 model inputs for a long
passage) is the costliest part of a passage's first citation, so units are cached per passage text, and built
once when several threads cite a passage for the first time at once (a burst of the same question after a
start)."""

from __future__ import annotations

import hashlib
import itertools
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from app import pacing
from app.assistant.prompts import PassageLike
from app.assistant.text_measures import (
    CLAUSE,
    all_terms,
    content_terms,
    negated_terms,
    numbers_in,
    passage_sentences,
    plain_text,
)
from app.providers.embeddings.sparse import tokenize

Embed = Callable[[Sequence[str]], list[list[float]]]


@dataclass(frozen=True)
class Units:
    """One passage's comparison units (sentences, adjacent pairs, clauses), their terms and embeddings."""

    texts: list[str]
    negated: list[frozenset[str]]
    single: np.ndarray  # True for a sentence or clause that is no question, False for a pair or a question
    vectors: np.ndarray  # one row per text, unit length
    terms: frozenset[str]
    all_terms: frozenset[str]
    numbers: frozenset[str]
    words: frozenset[str]  # lower-cased surface words, for capitalised names
    places: list[tuple[frozenset[str], frozenset[str]]]  # (terms, numbers) of each passage sentence and clause
    windows: list[frozenset[str]]  # the terms of each passage sentence with its neighbours


class PassageCache:
    """Passages' units (their sentences, clauses and pairs, embedded: ~30 model inputs for a long passage, the
    costliest part of a first citation), least recently used out first. Thread-safe."""

    def __init__(self, size: int = 2048) -> None:
        self._units: OrderedDict[str, Units] = OrderedDict()
        self._size = size
        self._lock = threading.Lock()

    def get(self, key: str) -> Units | None:
        with self._lock:
            hit = self._units.get(key)
            if hit is not None:
                self._units.move_to_end(key)
            return hit

    def put(self, key: str, units: Units) -> None:
        with self._lock:
            self._units[key] = units
            if len(self._units) > self._size:
                self._units.popitem(last=False)


class PassageUnits:
    """Units by passage: this process's cache, then `shared` (filled by other processes too: embedded `serve`'s,
    for its answering processes, app/answerers.py), else built here, by one thread per passage at a time."""

    def __init__(self, embed: Embed, *, cache_size: int = 2048, shared: PassageCache | None = None) -> None:
        self._embed = embed
        self._cache = PassageCache(cache_size)
        self._shared = shared
        self._building: dict[str, threading.Event] = {}  # passages a thread is building, set when it is done
        self._building_lock = threading.Lock()

    def get(self, passage: PassageLike) -> Units:
        """The passage's units from the cache, else built by this thread, or by the thread building them already
        (once it is done; if it failed, this one tries)."""
        # The text's digest, not `hash()`: the key must mean the same in every process sharing the cache.
        key = f"{passage.chunk_id}:{hashlib.blake2b(passage.text.encode(), digest_size=12).hexdigest()}"
        while (hit := self._cached(key)) is None:
            with self._building_lock:
                building = self._building.get(key)
                # Nobody builds it: this thread will, unless the last builder cached it since the look above (it
                # caches before it leaves `_building`).
                mine = building is None and (hit := self._cache.get(key)) is None
                if mine:
                    building = self._building[key] = threading.Event()
            if hit is not None:
                return hit
            assert building is not None
            if mine:
                return self._build_cached(key, passage, building)
            with pacing.waiting():  # a paced handler's slot is free meanwhile, as for its own model call
                building.wait()
        return hit

    def _build_cached(self, key: str, passage: PassageLike, building: threading.Event) -> Units:
        try:
            units = self._build(passage)
            self._cache.put(key, units)
            if self._shared is not None:
                self._shared.put(key, units)
            return units
        finally:
            with self._building_lock:
                del self._building[key]
            building.set()

    def _cached(self, key: str) -> Units | None:
        hit = self._cache.get(key)
        if hit is None and self._shared is not None:
            hit = self._shared.get(key)
            if hit is not None:
                self._cache.put(key, hit)
        return hit

    def _build(self, passage: PassageLike) -> Units:
        sentences = passage_sentences(passage.text)
        clauses = [c.strip() for s in sentences for c in re.split(r"[,;:]\s+", s) if len(c.split()) >= 3]
        pairs = [f"{a} {b}" for a, b in itertools.pairwise(sentences)]
        texts = list(dict.fromkeys(sentences + clauses + pairs))
        # An FAQ's question claims nothing: "Is there a spa?" must not be what "There is a spa." is compared with.
        singles = {t for t in sentences + clauses if not t.endswith("?")} or set(sentences)
        plain = plain_text(passage.text)
        return Units(
            texts=texts,
            negated=[negated_terms(t) for t in texts],
            single=np.asarray([t in singles for t in texts]),
            vectors=np.asarray(self._embed(texts) if texts else [], dtype=np.float32).reshape(len(texts), -1),
            terms=frozenset(tokenize(plain)),
            all_terms=all_terms(plain),
            numbers=numbers_in(plain),
            words=frozenset(w.lower() for w in re.findall(r"[A-Za-z0-9&'-]+", plain)),
            places=[(content_terms(place, frozenset()), numbers_in(place))
                    for place in dict.fromkeys(sentences + [c for s in sentences for c in CLAUSE.split(s)])],
            windows=[frozenset(tokenize(" ".join(sentences[max(0, i - 1):i + 2]))) for i in range(len(sentences))],
        )
