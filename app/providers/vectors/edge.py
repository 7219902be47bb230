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
        must: list[Any] = [qe.FieldCondition(TENANT_FIELD, match=qe.MatchValue(require_tenant(tenant_id)))]
        for key, value in check_filters(filters):
            match = qe.MatchAny(value) if isinstance(value, list) else qe.MatchValue(value)
            must.append(qe.FieldCondition(key, match=match))
        if ids:
            must.append(qe.HasIdCondition({str(i) for i in ids}))
        return qe.Filter(must=must)

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
        flt = self._filter(tenant_id, filters)  # bad arguments fail before any work
        idf = qe.IdfParams(corpus=self._filter(tenant_id))  # BM25's IDF over this tenant's points only

        def request(p: Probe) -> qe.QueryRequest:
            # Scores of given ids are computed exactly (never left to the index).
            exact = p.ids is not None
            if isinstance(p.vector, SparseVector):
                vector: Any = qe.SparseVector(list(p.vector.indices), list(p.vector.values))
                params = qe.SearchParams(exact=exact, idf=idf)
            else:
                vector, params = list(p.vector), qe.SearchParams(exact=exact)
            return qe.QueryRequest(
                limit=p.limit,
                query=qe.Query.Nearest(vector, using=p.using),
                filter=flt if p.ids is None else self._filter(tenant_id, filters, ids=p.ids),
                with_payload=p.ids is None and p.payload,
                params=params,
            )

        def run(probes: Sequence[Probe]) -> list[list[Scored]]:
            # One engine call per batch of probes (one GIL hand-off, one planned pass over the segments).
            found = self._engine.query_batch(qe.QueryBatchRequest([request(p) for p in probes]))
            return [[Scored(str(x.id), float(x.score), dict(x.payload or {}) if p.ids is None else None)
                     for x in points] for p, points in zip(probes, found, strict=True)]

        def fetch(ids: Sequence[str]) -> dict[str, dict[str, Any]]:
            # The ids come from probes filtered by tenant; the tenant check is the store's rule all the same.
            records = self._engine.retrieve(list(ids), with_payload=True, with_vector=False)
            return {str(r.id): dict(r.payload or {}) for r in records
                    if (r.payload or {}).get(TENANT_FIELD) == tenant_id}

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
