"""Embedded vector store: one qdrant-edge shard in a folder (in-process Rust engine, no server).

The shard holds every tenant's chunks: two named dense views ("dense" and "question", cosine; see
common.py), a named sparse vector ("sparse", IDF modifier, so sparse scores are BM25) and a `tenant_id`
keyword payload index marked as the tenant key. Every read and write carries a `must` condition on the
tenant; sparse IDF statistics are computed over the tenant's own points only, so one tenant's documents never
shift another's scores. qdrant-edge locks the folder to one process.

Reads run side by side, writes alone (`ReadWriteLock`). The engine releases the GIL inside each call, and a
thread that gives the GIL away waits up to the interpreter's switch interval (5 ms) for it back when other threads
are busy: a search of 7 engine calls under one exclusive lock took ~30-50 ms of wall time in a busy server, and
every other search queued behind it. Now a search is 3 calls (each batch of probes is one `query_batch`) and holds
the lock only against writers.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import qdrant_edge as qe

from app.providers.embeddings.base import SparseVector
from app.providers.vectors.base import ChunkPoint, Hit
from app.providers.vectors.common import (
    DENSE,
    INTEGER_FIELDS,
    KEYWORD_FIELDS,
    QUESTION,
    SPARSE,
    TENANT_FIELD,
    Probe,
    Scored,
    check_filters,
    check_limit,
    check_points,
    hybrid_search,
    payload_for,
    require_tenant,
    stored_views,
)


class VectorStoreLocked(RuntimeError):
    """Another process holds the embedded store's folder (qdrant-edge allows one process per folder)."""


class ReadWriteLock:
    """Any number of readers at once, or one writer. Writers go first: a steady stream of searches never starves
    an ingestion's upserts (a reader arriving while a writer waits, waits too)."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._readers = 0
        self._writing = False
        self._writers_waiting = 0

    @contextmanager
    def read(self) -> Iterator[None]:
        with self._changed:
            while self._writing or self._writers_waiting:
                self._changed.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._changed:
                self._readers -= 1
                if not self._readers:
                    self._changed.notify_all()

    @contextmanager
    def write(self) -> Iterator[None]:
        with self._changed:
            self._writers_waiting += 1
            try:
                while self._writing or self._readers:
                    self._changed.wait()
            finally:
                self._writers_waiting -= 1
            self._writing = True
        try:
            yield
        finally:
            with self._changed:
                self._writing = False
                self._changed.notify_all()


@functools.lru_cache(maxsize=1024)
def _scope(tenant_id: str, key: tuple[tuple[str, bool, Any], ...]) -> tuple[tuple[Any, ...], qe.Filter]:
    """The conditions every read and write of a tenant (with the caller's exact-match filters, `_scope_key`) must
    meet, and their Filter. Cached: a search rebuilt them up to six times (its filter, the IDF corpus, each probe
    by ids). Sharing them between threads and calls is safe: qdrant-edge's filter objects are immutable (no
    setters, no mutating methods) and the engine copies their Rust value into each request. The tenant is part of
    the cache key, so an entry never serves another tenant."""
    must: list[Any] = [qe.FieldCondition(TENANT_FIELD, match=qe.MatchValue(tenant_id))]
    for name, _, value in key:
        match = qe.MatchAny(list(value)) if isinstance(value, tuple) else qe.MatchValue(value)
        must.append(qe.FieldCondition(name, match=match))
    return tuple(must), qe.Filter(must=must)


def _scope_key(filters: dict[str, Any] | None) -> tuple[tuple[str, bool, Any], ...]:
    """`check_filters`' conditions as a cache key. Lists become tuples; each value carries whether it is a bool:
    True == 1 and hash(True) == hash(1), and each must get the objects built from its own value, as before."""
    return tuple((name, isinstance(value, bool), tuple(value) if isinstance(value, list) else value)
                 for name, value in check_filters(filters))


def _restricted(must: tuple[Any, ...], ids: set[Any]) -> qe.Filter:
    return qe.Filter(must=[*must, qe.HasIdCondition(ids)])


# Search parameters of dense probes: the top of the index, or exact scores of given ids. Shared like the filters.
_TOP = qe.SearchParams(exact=False)
_EXACT = qe.SearchParams(exact=True)


@functools.lru_cache(maxsize=1024)
def _sparse_params(tenant_id: str) -> tuple[qe.SearchParams, qe.SearchParams]:
    """`_TOP` and `_EXACT` for BM25 probes: IDF over this tenant's points only (its filter without the caller's)."""
    idf = qe.IdfParams(corpus=_scope(tenant_id, ())[1])
    return qe.SearchParams(exact=False, idf=idf), qe.SearchParams(exact=True, idf=idf)


class EdgeVectorStore:
    def __init__(self, path: Path | str, dim: int = 384) -> None:
        self.path = Path(path).expanduser()
        self.dim = dim
        # Searches share the shard; a write (or closing it) has it alone.
        self._lock = ReadWriteLock()
        self.path.mkdir(parents=True, exist_ok=True)
        # A folder written before the question view existed keeps working with its one dense view.
        self.views = stored_views(self.path / "edge_config.json")
        config = qe.EdgeConfig(
            vectors={name: qe.EdgeVectorParams(size=dim, distance=qe.Distance.Cosine) for name in self.views},
            sparse_vectors={SPARSE: qe.EdgeSparseVectorParams(modifier=qe.Modifier.Idf)},
            # One search thread: a tenant's few segments gain nothing from a parallel read, and a pool sized by
            # the CPU count (8 threads here) spent its wake-ups on the cores the answering threads need (a query
            # took 0.93 ms against 0.45 ms; 4 threads searching at once: 1,700 against 4,400 queries/s).
            max_search_threads=1,
        )
        self._shard: qe.EdgeShard | None = None
        try:
            if (self.path / "edge_config.json").exists():
                self._shard = qe.EdgeShard.load(str(self.path), config)
            else:
                self._shard = qe.EdgeShard.create(str(self.path), config)
        except Exception as exc:
            if "WouldBlock" in str(exc):
                raise VectorStoreLocked(
                    f"cannot open the vector store at {self.path}: it is open in another process (qdrant-edge "
                    "locks its folder to one process): while `switchboard serve` runs, use the CLI through the "
                    "server"
                ) from exc
            raise RuntimeError(f"cannot open the vector store at {self.path}: {exc}; if the embedding dimension "
                               "changed, re-index into a new folder") from exc
        self._ensure_indexes()

    @property
    def _engine(self) -> qe.EdgeShard:
        if self._shard is None:
            raise RuntimeError("the vector store is closed")
        return self._shard

    def _ensure_indexes(self) -> None:
        existing = set(self._engine.info().payload_schema)
        wanted: list[tuple[str, Any]] = [(TENANT_FIELD, qe.KeywordIndexParams(is_tenant=True))]
        wanted += [(name, qe.PayloadSchemaType.Keyword) for name in KEYWORD_FIELDS]
        wanted += [(name, qe.PayloadSchemaType.Integer) for name in INTEGER_FIELDS]
        with self._lock.write():
            for name, schema in wanted:
                if name not in existing:
                    self._engine.update(qe.UpdateOperation.create_field_index(name, schema))

    # -- filters -------------------------------------------------------------------------------------------

    def _filter(self, tenant_id: str, filters: dict[str, Any] | None = None, ids: Sequence[str] = ()) -> qe.Filter:
        must, flt = _scope(require_tenant(tenant_id), _scope_key(filters))
        return _restricted(must, {str(i) for i in ids}) if ids else flt

    # -- writes --------------------------------------------------------------------------------------------

    def upsert(self, tenant_id: str, points: Sequence[ChunkPoint]) -> None:
        require_tenant(tenant_id)
        if not points:
            return
        check_points(tenant_id, points, self.dim)
        records = []
        for p in points:
            vector: dict[str, Any] = {DENSE: list(p.dense)}
            if QUESTION in self.views:
                vector[QUESTION] = list(p.question if p.question is not None else p.dense)
            if p.sparse is not None and p.sparse.indices:
                vector[SPARSE] = qe.SparseVector(list(p.sparse.indices), list(p.sparse.values))
            records.append(qe.Point(str(p.id), vector, payload_for(tenant_id, p.payload)))
        with self._lock.write():
            # The condition guards existing points: an id that belongs to another tenant is never overwritten.
            self._engine.update(qe.UpdateOperation.upsert_points(records, condition=self._filter(tenant_id)))

    def delete(self, tenant_id: str, ids: Sequence[str]) -> None:
        if not ids:
            require_tenant(tenant_id)
            return
        with self._lock.write():
            self._engine.update(qe.UpdateOperation.delete_points_by_filter(self._filter(tenant_id, ids=ids)))

    def delete_where(self, tenant_id: str, filters: dict[str, Any]) -> None:
        with self._lock.write():
            self._engine.update(qe.UpdateOperation.delete_points_by_filter(self._filter(tenant_id, filters)))

    # -- reads ---------------------------------------------------------------------------------------------

    def count(self, tenant_id: str, filters: dict[str, Any] | None = None) -> int:
        with self._lock.read():
            return int(self._engine.count(qe.CountRequest(exact=True, filter=self._filter(tenant_id, filters))))

    def search(
        self,
        tenant_id: str,
        dense: list[float],
        sparse: SparseVector | None = None,
        *,
        limit: int = 5,
        filters: dict[str, Any] | None = None,
        rank_by: list[float] | None = None,
    ) -> list[Hit]:
        check_limit(limit)
        must, flt = _scope(require_tenant(tenant_id), _scope_key(filters))  # bad arguments fail before any work
        # Each point's id as str once per search (a point comes back from up to 4 probes; UUID.__str__ was a
        # tenth of a search), and as the uuid.UUID the engine gave: probes by ids and `fetch` hand that back, which
        # the engine reads in about half the time it takes to parse the str. The store's ids are all UUIDs
        # (`upsert` gives the engine str ids, which it parses as UUIDs).
        names: dict[int, str] = {}
        engine_ids: dict[str, Any] = {}

        def name(point_id: Any) -> str:
            text = names.get(point_id.int)
            if text is None:
                text = names[point_id.int] = str(point_id)
                engine_ids[text] = point_id
            return text

        top_sparse, exact_sparse = _sparse_params(tenant_id)
        queries: dict[tuple[str, int], tuple[Any, qe.Query]] = {}

        def query(p: Probe) -> qe.Query:
            # One engine query per view and vector in a search: most come back in the second batch, and building
            # one (the vector copied into the engine) cost more than the request around it. The key holds the
            # vector's id(); the entry keeps the vector alive, so that id cannot be reused by another meanwhile.
            key = (p.using, id(p.vector))
            if key not in queries:
                vector: Any = qe.SparseVector(list(p.vector.indices), list(p.vector.values)) \
                    if isinstance(p.vector, SparseVector) else list(p.vector)
                queries[key] = (p.vector, qe.Query.Nearest(vector, using=p.using))
            return queries[key][1]

        def request(p: Probe) -> qe.QueryRequest:
            # Scores of given ids are computed exactly (never left to the index).
            exact = p.ids is not None
            if isinstance(p.vector, SparseVector):
                params = exact_sparse if exact else top_sparse
            else:
                params = _EXACT if exact else _TOP
            return qe.QueryRequest(
                limit=p.limit,
                query=query(p),
                filter=flt if p.ids is None else _restricted(must, {engine_ids.get(i, i) for i in p.ids}),
                with_payload=p.ids is None and p.payload,
                params=params,
            )

        def run(probes: Sequence[Probe]) -> list[list[Scored]]:
            # One engine call per batch of probes (one GIL hand-off, one planned pass over the segments).
            found = self._engine.query_batch(qe.QueryBatchRequest([request(p) for p in probes]))
            # Payloads are read only where asked for (`fetch` loads the hits' instead).
            return [[Scored(name(x.id), float(x.score), dict(x.payload or {}) if p.ids is None and p.payload else None)
                     for x in points] for p, points in zip(probes, found, strict=True)]

        def fetch(ids: Sequence[str]) -> dict[str, dict[str, Any]]:
            # The ids come from probes filtered by tenant; the tenant check is the store's rule all the same.
            # `payload` makes a new dict on every read: read once, not copied.
            records = self._engine.retrieve([engine_ids.get(i, i) for i in ids], with_payload=True, with_vector=False)
            return {name(r.id): payload for r in records if (payload := r.payload or {}).get(TENANT_FIELD) == tenant_id}

        # One read hold for the whole search: an upsert in between would move the tenant's IDF, and the BM25
        # scores of one search must share a scale.
        with self._lock.read():
            return hybrid_search(run, self.views, dense, sparse, rank_by, limit, fetch=fetch)

    def sparse_search(
        self, tenant_id: str, sparse: SparseVector, *, limit: int = 5, filters: dict[str, Any] | None = None
    ) -> list[Hit]:
        """Keyword-only search (BM25 scores, not calibrated): for benchmarks and diagnostics."""
        check_limit(limit)
        flt = self._filter(tenant_id, filters)
        request = qe.QueryRequest(
            limit=limit,
            query=qe.Query.Nearest(qe.SparseVector(list(sparse.indices), list(sparse.values)), using=SPARSE),
            filter=flt,
            with_payload=True,
            params=qe.SearchParams(idf=qe.IdfParams(corpus=self._filter(tenant_id))),
        )
        with self._lock.read():
            points = self._engine.query(request)
        ordered = sorted(points, key=lambda p: (-p.score, str(p.id)))
        return [Hit(id=str(p.id), score=float(p.score), payload=dict(p.payload or {})) for p in ordered]

    def close(self) -> None:
        with self._lock.write():
            if self._shard is not None:
                self._shard.flush()
                self._shard.close()
                self._shard = None
