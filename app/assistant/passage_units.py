"""A cited passage's comparison units for the grounding check (app/assistant/grounding.py): its sentences, clauses
and adjacent pairs with their terms, numbers and MiniLM embeddings. Embedding them (~30 model inputs for a long
passage) is the costliest part of a passage's first citation, so units are cached per passage text, and built
once when several threads cite a passage for the first time at once (a burst of the same question after a
start). Their vectors are also kept in the database (`StoredVectors`, table `passage_vectors`), per tenant and
model, so a restart, an answering process or another replica reads them instead of embedding the passage again.
Vectors of a text that no chunk of the tenant holds any more go when a document is deleted or a pack version pruned
(`app.knowledge.versions.forget_passage_vectors`)."""

from __future__ import annotations

import itertools
import logging
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from sqlalchemy import Table, bindparam, insert, select
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

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
from app.db import session_scope
from app.knowledge.ids import passage_digest
from app.models import PassageVectors
from app.providers.embeddings.sparse import tokenize

log = logging.getLogger(__name__)

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


class VectorStore(Protocol):
    def load(self, tenant_id: str, digest: str, rows: int) -> np.ndarray | None:
        """The `rows` vectors kept for the text with this digest, or None."""
        ...

    def save(self, tenant_id: str, digest: str, vectors: np.ndarray) -> None: ...


VECTORS: Table = PassageVectors.__table__  # type: ignore[assignment]
_KEY = (VECTORS.c.tenant_id == bindparam("tenant"), VECTORS.c.model == bindparam("model"),
        VECTORS.c.digest == bindparam("digest"))
_LOAD = select(VECTORS.c.rows, VECTORS.c.dim, VECTORS.c.vectors).where(*_KEY)
_SAVE = insert(VECTORS)


class StoredVectors:
    """One model's units vectors in `passage_vectors`, read and written in the tenant's scope. Best effort both
    ways: a read that fails, or finds vectors of another shape, embeds again; a write that fails is logged (a
    concurrent writer of the same passage won) and the units are used all the same."""

    def __init__(self, model: str) -> None:
        self.model = model

    def load(self, tenant_id: str, digest: str, rows: int) -> np.ndarray | None:
        try:
            with session_scope(tenant=tenant_id) as session:
                row = session.execute(_LOAD, {"tenant": tenant_id, "model": self.model, "digest": digest}).first()
        except SQLAlchemyError as exc:
            log.warning("could not read kept passage vectors (%s): embedding the passage", type(exc).__name__)
            return None
        if row is None or row.rows != rows or len(row.vectors) != 4 * row.rows * row.dim:
            return None
        return np.frombuffer(row.vectors, dtype="<f4").reshape(row.rows, row.dim)

    def save(self, tenant_id: str, digest: str, vectors: np.ndarray) -> None:
        rows, dim = vectors.shape
        try:
            with session_scope(tenant=tenant_id) as session:
                session.execute(_SAVE, {"tenant_id": tenant_id, "model": self.model, "digest": digest, "rows": rows,
                                        "dim": dim, "vectors": vectors.astype("<f4").tobytes()})
        except IntegrityError:
            pass  # kept meanwhile by another process: the same text through the same model, the same vectors
        except SQLAlchemyError as exc:
            log.warning("could not keep passage vectors (%s)", type(exc).__name__)


class PassageUnits:
    """Units by passage: this process's cache, then `shared` (filled by other processes too: embedded `serve`'s,
    for its answering processes, app/answerers.py), else built here, by one thread per passage at a time, with the
    vectors `store` keeps for the passage's tenant when it has them."""

    def __init__(self, embed: Embed, *, cache_size: int = 2048, shared: PassageCache | None = None,
                 store: VectorStore | None = None) -> None:
        self._embed = embed
        self._cache = PassageCache(cache_size)
        self._shared = shared
        self._store = store
        self._building: dict[str, threading.Event] = {}  # passages a thread is building, set when it is done
        self._building_lock = threading.Lock()

    def get(self, passage: PassageLike, tenant_id: str | None = None) -> Units:
        """The passage's units from the cache, else built by this thread, or by the thread building them already
        (once it is done; if it failed, this one tries). `tenant_id`: the passage's tenant, whose kept vectors
        are read and written (none without it)."""
        digest = passage_digest(passage.text)
        key = f"{passage.chunk_id}:{digest}"
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
                return self._build_cached(key, passage, building, tenant_id, digest)
            with pacing.waiting():  # a paced handler's slot is free meanwhile, as for its own model call
                building.wait()
        return hit

    def _build_cached(self, key: str, passage: PassageLike, building: threading.Event, tenant_id: str | None,
                      digest: str) -> Units:
        try:
            units = self._build(passage, tenant_id, digest)
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

    def _vectors(self, texts: list[str], tenant_id: str | None, digest: str) -> np.ndarray:
        """The units' vectors: kept for (tenant, text digest), else embedded now and kept."""
        if self._store is None or tenant_id is None or not texts:
            return self._embedded(texts)
        vectors = self._store.load(tenant_id, digest, len(texts))
        if vectors is None:
            vectors = self._embedded(texts)
            self._store.save(tenant_id, digest, vectors)
        return vectors

    def _embedded(self, texts: list[str]) -> np.ndarray:
        return np.asarray(self._embed(texts) if texts else [], dtype=np.float32).reshape(len(texts), -1)

    def _build(self, passage: PassageLike, tenant_id: str | None, digest: str) -> Units:
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
            vectors=self._vectors(texts, tenant_id, digest),
            terms=frozenset(tokenize(plain)),
            all_terms=all_terms(plain),
            numbers=numbers_in(plain),
            words=frozenset(w.lower() for w in re.findall(r"[A-Za-z0-9&'-]+", plain)),
            places=[(content_terms(place, frozenset()), numbers_in(place))
                    for place in dict.fromkeys(sentences + [c for s in sentences for c in CLAUSE.split(s)])],
            windows=[frozenset(tokenize(" ".join(sentences[max(0, i - 1):i + 2]))) for i in range(len(sentences))],
        )
