"""Recent questions' query embeddings, per tenant: customers ask the same few questions over and over, and
embedding one is the biggest CPU cost of answering it (docs/benchmarks.md, "Issue 8, third pass").

An entry is keyed by
- the tenant: never shared, because a hit is answered in microseconds and a miss in milliseconds, so a cache
  shared across tenants would let one tenant time which questions another's customers ask;
- the pack version whose term statistics weighted the query (None for the plain query alone, the same in every
  version: app/knowledge/termstats.py);
- the question as the model reads it: the embedder's own WordPiece ids (its normaliser lowercases, strips accents
  and splits punctuation and whitespace), so "Where is my order?" and "where is  my order ?" share an entry and
  get exactly the vectors the model gives either. An embedder that cannot tokenize is keyed by the exact text.
  The key keeps a digest of the ids, not the question.

An entry lives `ttl_s` (`EMBED_QUERY_CACHE_TTL_S`, 10 minutes) from when it was stored, hit or not: a query's
vectors are derived from a customer's words, so they must not outlive the customer's erasure or the tenant's
retention policy by more than that, in any process. Expired entries leave memory at the process's next question,
or when the oldest one expires if no question comes (a timer, running only while entries are kept: an idle
replica keeps none more than a tenth of the time to live late); `forget_tenant` drops a tenant's at once (the
process that erases a contact calls it). Entries are kept in the order they were stored, so the oldest go first,
by age or when `size` is reached; `size` 0 turns the cache off (`EMBED_QUERY_CACHE`). One entry is about 6.5 KB
(the two vectors as float64 arrays), so the default 4,096 hold ~27 MB. Thread-safe: two threads missing the same
key at once both embed it (the micro-batcher puts them in one model call) and the second store wins.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict
from collections.abc import Callable

import numpy as np

from app import metrics
from app.knowledge import termstats
from app.knowledge.termstats import TermStats
from app.providers.embeddings.base import Embedder, TokenWeightingEmbedder

QueryVectors = tuple[list[float], list[float] | None]  # (plain, IDF-weighted or None), as termstats.query_vectors
TTL_S = 600.0
_Key = tuple[str, int | None, bytes]  # tenant, pack version, digest of the question's token ids


class QueryCache:
    def __init__(self, size: int, ttl_s: float = TTL_S, clock: Callable[[], float] = time.monotonic) -> None:
        if size < 0:
            raise ValueError("the query cache size must be 0 (off) or more")
        if ttl_s <= 0:
            raise ValueError("the query cache's time to live must be more than 0 seconds")
        self.size = size
        self.ttl_s = ttl_s
        self.hits = 0
        self.misses = 0
        self._clock = clock
        # key -> (when stored, plain, weighted), oldest first
        self._entries: OrderedDict[_Key, tuple[float, np.ndarray, np.ndarray | None]] = OrderedDict()
        self._lock = threading.Lock()
        self._sweep: threading.Timer | None = None  # due when the oldest entry expires, while there are entries
        self._closed = False

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def query_vectors(self, embedder: Embedder, tenant_id: str, query: str, stats: TermStats | None,
                      version: int | None) -> QueryVectors:
        """`termstats.query_vectors(embedder, query, stats)`, from the cache when this tenant asked it before;
        `stats` are pack `version`'s term statistics (or None). Fresh lists each call: a caller may change its own."""
        if self.size == 0:
            return termstats.query_vectors(embedder, query, stats)
        key = _key(tenant_id, version if stats is not None else None, embedder, query)
        with self._lock:
            self._expire(self._clock())
            found = self._entries.get(key)
            if found is not None:
                self.hits += 1
            else:
                self.misses += 1
        metrics.query_embedding("hit" if found is not None else "miss")
        if found is not None:
            _, plain, weighted = found
            return plain.tolist(), None if weighted is None else weighted.tolist()
        vectors = termstats.query_vectors(embedder, query, stats)
        entry = (np.asarray(vectors[0], dtype=np.float64),
                 None if vectors[1] is None else np.asarray(vectors[1], dtype=np.float64))
        with self._lock:
            self._entries.pop(key, None)
            self._entries[key] = (self._clock(), *entry)
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)
            self._schedule_sweep()
        return vectors

    def forget_tenant(self, tenant_id: str) -> None:
        """Drops every entry of the tenant (a contact of theirs was erased)."""
        with self._lock:
            for key in [k for k in self._entries if k[0] == tenant_id]:
                del self._entries[key]

    def close(self) -> None:
        """Stops the sweep's timer (the container's close)."""
        with self._lock:
            self._closed = True
            if self._sweep is not None:
                self._sweep.cancel()
                self._sweep = None

    def _schedule_sweep(self) -> None:
        """Under the lock: a timer for when the oldest entry expires, unless one is due or nothing is kept; never
        sooner than a tenth of the time to live after now, so a steady stream of questions starts a timer at most
        that often (an idle process's entry leaves at most a tenth of its time to live late)."""
        if self._sweep is None and self._entries and not self._closed:
            oldest = next(iter(self._entries.values()))[0]
            delay = max(oldest + self.ttl_s - self._clock(), self.ttl_s / 10)
            self._sweep = threading.Timer(delay, self._swept)
            self._sweep.daemon = True
            self._sweep.start()

    def _swept(self) -> None:
        with self._lock:
            self._sweep = None
            self._expire(self._clock())
            self._schedule_sweep()

    def _expire(self, now: float) -> None:
        while self._entries:
            stored_at = next(iter(self._entries.values()))[0]
            if now - stored_at < self.ttl_s:
                return
            self._entries.popitem(last=False)


def _key(tenant_id: str, version: int | None, embedder: Embedder, query: str) -> _Key:
    if isinstance(embedder, TokenWeightingEmbedder):
        [ids] = embedder.tokens([query])
        text = np.asarray(ids, dtype=np.int32).tobytes()
    else:
        text = query.encode()
    return tenant_id, version, hashlib.blake2b(text, digest_size=16).digest()
