"""Term statistics of a pack version, and the query embedding they weight.

Mean pooling gives every token of a question the same say in its embedding. In a tenant's own knowledge some
tokens are everywhere ("covid" in a COVID FAQ, "room" in a hotel's) and say little about which passage a
customer wants; the rare ones ("stigma", "pets", "amex") say most. So the query, and only the query, is
pooled with each token weighted by its inverse document frequency over the pack version's chunks (BM25's IDF
over WordPiece tokens, the embedder's own vocabulary), raised to IDF_EXPONENT; the passages stay embedded as
they are. The store still
scores hits with the plain query (`Hit.score`, the calibrated cosine the orchestrator's threshold reads); the
weighted one only ranks. Measured (docs/benchmarks.md): COVID-QA hit@1 0.668 -> 0.738 dense, DSTC11 recall@5
0.584 -> 0.637 dense, the example tenant hit@5 0.947 -> 0.961 dense.

The statistics are counted once, when a version is built (`collect`), kept on its `pack_versions` row and
cached per process (`for_version`): a version never changes after its build, so the cache never goes stale.
An embedder that cannot weight tokens (not a `TokenWeightingEmbedder`) gets the plain query everywhere.
"""

from __future__ import annotations

import logging
import math
import threading
from collections import Counter, OrderedDict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from app.providers.embeddings.base import Embedder, TokenWeightingEmbedder

log = logging.getLogger(__name__)

BATCH = 256
# The query's tokens are pooled with IDF ** IDF_EXPONENT: chosen with the fusion weight on the tuning half of the
# COVID-QA queries (benchmarks/tune_retrieval.py), reported on the held-out half (docs/benchmarks.md).
IDF_EXPONENT = 1.5
# Statistics kept per process, least recently used out first, bounded by their size: 12 bytes per distinct token
# (a large pack has up to the vocabulary's ~30k, ~370 KB; a tenant's FAQ a few thousand, ~40 KB), so a process
# answering thousands of small tenants keeps them all, where a bound by count thrashed past 256 active tenants.
CACHE_BYTES = 64 * 1024 * 1024


class Counts(Mapping[int, int]):
    """token id -> count, held as two sorted int32 arrays (a dict of 30k ints would take ~3 MB)."""

    def __init__(self, counts: Mapping[int, int] | Iterable[tuple[int, int]] = ()) -> None:
        items = sorted(counts.items() if isinstance(counts, Mapping) else counts)
        self._keys = np.array([k for k, _ in items], dtype=np.int64)
        self._values = np.array([v for _, v in items], dtype=np.int32)

    def __getitem__(self, token: int) -> int:
        i = int(np.searchsorted(self._keys, token))
        if i < len(self._keys) and self._keys[i] == token:
            return int(self._values[i])
        raise KeyError(token)

    def __iter__(self) -> Iterator[int]:
        return (int(k) for k in self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    @property
    def nbytes(self) -> int:
        return int(self._keys.nbytes + self._values.nbytes)

    def __repr__(self) -> str:
        return f"Counts({len(self)} tokens)"


@dataclass(frozen=True)
class TermStats:
    tokenizer: str  # the embedder's name: token ids mean nothing to another vocabulary
    documents: int  # chunks counted
    df: Mapping[int, int] = field(default_factory=Counts)  # token id -> chunks containing it

    def idf(self, token: int) -> float:
        """BM25's (always positive) IDF: ln(1 + (N - df + 0.5) / (df + 0.5))."""
        df = self.df.get(token, 0)
        return math.log(1 + (self.documents - df + 0.5) / (df + 0.5))

    def weight(self, token: int) -> float:
        """A query token's weight in the pooled query: its IDF ** IDF_EXPONENT."""
        return self.idf(token) ** IDF_EXPONENT

    def to_json(self) -> dict[str, Any]:
        return {"tokenizer": self.tokenizer, "documents": self.documents, "df": {str(k): v for k, v in self.df.items()}}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TermStats:
        df = Counts((int(k), int(v)) for k, v in (data.get("df") or {}).items())
        return cls(str(data["tokenizer"]), int(data["documents"]), df)


def collect(embedder: Embedder, texts: Iterable[str]) -> TermStats | None:
    """Document frequencies of the embedder's tokens over `texts` (a version's chunks, as embedded), or None
    when the embedder cannot weight tokens."""
    if not isinstance(embedder, TokenWeightingEmbedder):
        return None
    df: Counter[int] = Counter()
    documents = 0
    batch: list[str] = []

    def count(texts: Sequence[str]) -> None:
        for ids in embedder.tokens(texts):
            df.update(set(ids))

    for text in texts:
        batch.append(text)
        documents += 1
        if len(batch) == BATCH:
            count(batch)
            batch = []
    if batch:
        count(batch)
    return TermStats(embedder.name, documents, Counts(df))


def query_vectors(embedder: Embedder, query: str, stats: TermStats | None) -> tuple[list[float], list[float] | None]:
    """(the query as `embed_query` embeds it, the IDF-weighted query or None when there is nothing to weight
    with: no statistics, another tokenizer's, or an embedder that cannot weight)."""
    if (
        stats is None
        or stats.documents == 0
        or stats.tokenizer != embedder.name
        or not isinstance(embedder, TokenWeightingEmbedder)
    ):
        return embedder.embed_query(query), None
    plain, weighted = embedder.embed_query_weighted(query, stats.weight)
    return plain, weighted


_Key = tuple[object, str, int, str]  # (the engine, tenant id, version, embedder name)
_cache: OrderedDict[_Key, TermStats | None] = OrderedDict()
_cached_bytes = 0  # the sum of `_size` over `_cache`
_lock = threading.Lock()
_loading: dict[_Key, threading.Lock] = {}
_ENTRY_BYTES = 400  # the key, the TermStats and its arrays' own objects, roughly


def _size(stats: TermStats | None) -> int:
    df = stats.df if stats is not None else None
    return _ENTRY_BYTES + (df.nbytes if isinstance(df, Counts) else 0)


def for_version(tenant_id: str, version: int, embedder: Embedder, session: Any = None) -> TermStats | None:
    """The statistics of a built version for this embedder: from its row (counted at build time) or, for a
    version built before they existed, counted now from its chunks (in memory only: a read never writes).
    Cached per process; one thread counts while the others for the same version wait for it. `session`:
    read through the caller's unit of work instead of a new one."""
    if not isinstance(embedder, TokenWeightingEmbedder):
        return None
    from app import db

    # Keyed by the engine read from, not its URL: another database object (a test's container, a fresh test
    # database at the same URL) starts with nothing cached.
    key = (session.get_bind() if session is not None else db.get_engine(), tenant_id, version, embedder.name)
    with _lock:
        if key in _cache:
            _cache.move_to_end(key)
            return _cache[key]
        loading = _loading.setdefault(key, threading.Lock())
    with loading:
        try:
            with _lock:
                if key in _cache:
                    return _cache[key]
            if session is None:
                with db.session_scope(tenant=tenant_id) as own:
                    found, stats = _load(own, tenant_id, version, embedder)
            else:
                found, stats = _load(session, tenant_id, version, embedder)
            if found:
                _keep(key, stats)
            return stats
        finally:
            with _lock:
                _loading.pop(key, None)


def _keep(key: _Key, stats: TermStats | None) -> None:
    """Cache `stats`, then drop the least recently used statistics while the cache is over `CACHE_BYTES` (never
    the ones just kept)."""
    global _cached_bytes
    with _lock:
        if key in _cache:
            _cached_bytes -= _size(_cache[key])
        _cache[key] = stats
        _cache.move_to_end(key)
        _cached_bytes += _size(stats)
        while _cached_bytes > CACHE_BYTES and len(_cache) > 1:
            _cached_bytes -= _size(_cache.popitem(last=False)[1])


def _load(session: Any, tenant_id: str, version: int, embedder: Embedder) -> tuple[bool, TermStats | None]:
    """(whether the version is final, its statistics)."""
    from sqlalchemy import select

    from app.models import PackVersion

    row = session.execute(
        select(PackVersion.status, PackVersion.term_stats).where(
            PackVersion.tenant_id == tenant_id, PackVersion.version == version
        )
    ).first()
    if row is None or row.status == "building":
        return False, None  # nothing to cache: a version being built is not final
    if row.term_stats and row.term_stats.get("tokenizer") == embedder.name:
        return True, TermStats.from_json(row.term_stats)
    return True, collect(embedder, version_texts(session, tenant_id, version))


def version_texts(session: Any, tenant_id: str, version: int) -> Iterable[str]:
    """The chunks of a version as they were embedded (`TextChunk.embedding_text`: heading, then text)."""
    from sqlalchemy import select

    from app.models import Chunk, Document

    rows = session.execute(
        select(Chunk.heading, Chunk.text)
        .join(Document, Document.id == Chunk.document_id)
        .where(Document.tenant_id == tenant_id, Document.pack_version == version, Chunk.tenant_id == tenant_id)
        .execution_options(yield_per=1000)
    )
    for heading, text in rows:
        yield f"{heading}\n{text}" if heading else text


def clear_cache() -> None:
    global _cached_bytes
    with _lock:
        _cache.clear()
        _cached_bytes = 0
