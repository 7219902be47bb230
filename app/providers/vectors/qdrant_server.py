"""Scale-out vector store: one Qdrant collection on a server, through qdrant-client.

Same shape as the embedded store (see edge.py and common.py): two named dense views ("dense" and
"question", cosine) and a sparse vector ("sparse", IDF), `tenant_id` as a tenant-keyed payload index
(`is_tenant=True`, which co-locates each tenant's points), every call filtered by tenant, the same hybrid
search (common.py's `hybrid_search`: two `query_batch_points` round trips, the tops, then the candidates'
missing scores; one fused score) and `Hit.score` the cosine of the full dense view. The collection is
created on first use, idempotently: several replicas may start at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from qdrant_client import QdrantClient, models

from app.providers.embeddings.base import SparseVector
from app.providers.vectors.base import ChunkPoint, Hit
from app.providers.vectors.common import (
    DENSE,
    INTEGER_FIELDS,
    KEYWORD_FIELDS,
    QUESTION,
    SPARSE,
    TENANT_FIELD,
    VIEWS,
    Probe,
    Scored,
    check_filters,
    check_limit,
    check_points,
    hybrid_search,
    payload_for,
    require_tenant,
)

DEFAULT_COLLECTION = "switchboard_chunks"


class QdrantServerStore:
    def __init__(
        self,
        url: str | None = None,
        api_key: str | None = None,
        dim: int = 384,
        *,
        collection: str = DEFAULT_COLLECTION,
        client: QdrantClient | None = None,
        timeout: int = 30,
    ) -> None:
        if client is None and not url:
            raise ValueError("QdrantServerStore needs a url (QDRANT_URL) or a client")
        self.client = client if client is not None else QdrantClient(url=url, api_key=api_key, timeout=timeout)
        self.dim = dim
        self.views: tuple[str, ...] = VIEWS
        self.collection = collection
        self._ensure_collection()

    def _ensure_collection(self) -> None:
        if not self.client.collection_exists(self.collection):
            try:
                self.client.create_collection(
                    self.collection,
                    vectors_config={
                        view: models.VectorParams(size=self.dim, distance=models.Distance.COSINE) for view in VIEWS
                    },
                    sparse_vectors_config={SPARSE: models.SparseVectorParams(modifier=models.Modifier.IDF)},
                )
            except Exception:
                # Another replica created it between our check and our create; anything else re-raises.
                if not self.client.collection_exists(self.collection):
                    raise
        self._check_dim()
        indexes: list[tuple[str, Any]] = [
            (TENANT_FIELD, models.KeywordIndexParams(type=models.KeywordIndexType.KEYWORD, is_tenant=True))
        ]
        indexes += [(name, models.PayloadSchemaType.KEYWORD) for name in KEYWORD_FIELDS]
        indexes += [(name, models.PayloadSchemaType.INTEGER) for name in INTEGER_FIELDS]
        existing = self.client.get_collection(self.collection).payload_schema or {}
        for name, schema in indexes:
            if name not in existing:  # creating an existing index is a no-op on the server, but costs a call
                self.client.create_payload_index(self.collection, name, field_schema=schema, wait=True)

    def _check_dim(self) -> None:
        vectors = self.client.get_collection(self.collection).config.params.vectors
        # A collection created before the question view existed keeps working with "dense" alone.
        self.views = tuple(v for v in VIEWS if isinstance(vectors, dict) and v in vectors) or (DENSE,)
        params = vectors.get(DENSE) if isinstance(vectors, dict) else None
        if params is None or params.size != self.dim:
            size = getattr(params, "size", None)
            raise RuntimeError(
                f"Qdrant collection {self.collection!r} has dense vector size {size}, expected {self.dim}: "
                "re-index into a new collection"
            )

    # -- filters -------------------------------------------------------------------------------------------

    def _filter(self, tenant_id: str, filters: dict[str, Any] | None = None, ids: Sequence[str] = ()) -> models.Filter:
        must: list[Any] = [
            models.FieldCondition(key=TENANT_FIELD, match=models.MatchValue(value=require_tenant(tenant_id)))
        ]
        for key, value in check_filters(filters):
            match: Any = models.MatchAny(any=value) if isinstance(value, list) else models.MatchValue(value=value)
            must.append(models.FieldCondition(key=key, match=match))
        if ids:
            must.append(models.HasIdCondition(has_id=[str(i) for i in ids]))
        return models.Filter(must=must)

    # -- writes --------------------------------------------------------------------------------------------

    def upsert(self, tenant_id: str, points: Sequence[ChunkPoint]) -> None:
        require_tenant(tenant_id)
        if not points:
            return
        check_points(tenant_id, points, self.dim)
        structs = []
        for p in points:
            vector: dict[str, Any] = {DENSE: list(p.dense)}
            if QUESTION in self.views:
                vector[QUESTION] = list(p.question if p.question is not None else p.dense)
            if p.sparse is not None and p.sparse.indices:
                vector[SPARSE] = models.SparseVector(indices=list(p.sparse.indices), values=list(p.sparse.values))
            structs.append(models.PointStruct(id=str(p.id), vector=vector, payload=payload_for(tenant_id, p.payload)))
        # update_filter guards existing points: an id that belongs to another tenant is never overwritten.
        self.client.upsert(self.collection, structs, wait=True, update_filter=self._filter(tenant_id))

    def delete(self, tenant_id: str, ids: Sequence[str]) -> None:
        require_tenant(tenant_id)
        if not ids:
            return
        selector = models.FilterSelector(filter=self._filter(tenant_id, ids=ids))
        self.client.delete(self.collection, points_selector=selector, wait=True)

    def delete_where(self, tenant_id: str, filters: dict[str, Any]) -> None:
        selector = models.FilterSelector(filter=self._filter(tenant_id, filters))
        self.client.delete(self.collection, points_selector=selector, wait=True)

    # -- reads ---------------------------------------------------------------------------------------------

    def count(self, tenant_id: str, filters: dict[str, Any] | None = None) -> int:
        result = self.client.count(self.collection, count_filter=self._filter(tenant_id, filters), exact=True)
        return int(result.count)

    def _sparse_params(self, tenant_id: str) -> models.SearchParams:
        # IDF over this tenant's points only: other tenants' documents never shift its keyword scores.
        return models.SearchParams(idf=models.IdfCorpusParams(corpus=self._filter(tenant_id)))

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
        flt = self._filter(tenant_id, filters)  # bad arguments fail before any request
        idf = self._sparse_params(tenant_id).idf

        def run(probes: Sequence[Probe]) -> list[list[Scored]]:
            requests = [
                models.QueryRequest(
                    query=(
                        models.SparseVector(indices=list(p.vector.indices), values=list(p.vector.values))
                        if isinstance(p.vector, SparseVector)
                        else list(p.vector)
                    ),
                    using=p.using,
                    filter=flt if p.ids is None else self._filter(tenant_id, filters, ids=p.ids),
                    # Scores of given ids are computed exactly; IDF over this tenant's points only.
                    params=models.SearchParams(
                        exact=p.ids is not None, idf=idf if isinstance(p.vector, SparseVector) else None
                    ),
                    limit=p.limit,
                    with_payload=p.ids is None,
                )
                for p in probes
            ]
            responses = self.client.query_batch_points(self.collection, requests=requests)  # one round trip
            return [
                [Scored(str(x.id), float(x.score), dict(x.payload or {}) if p.ids is None else None) for x in r.points]
                for p, r in zip(probes, responses, strict=True)
            ]

        return hybrid_search(run, self.views, dense, sparse, rank_by, limit)

    def sparse_search(
        self, tenant_id: str, sparse: SparseVector, *, limit: int = 5, filters: dict[str, Any] | None = None
    ) -> list[Hit]:
        """Keyword-only search (BM25 scores, not calibrated): for benchmarks and diagnostics."""
        check_limit(limit)
        response = self.client.query_points(
            self.collection,
            query=models.SparseVector(indices=list(sparse.indices), values=list(sparse.values)),
            using=SPARSE,
            query_filter=self._filter(tenant_id, filters),
            search_params=self._sparse_params(tenant_id),
            limit=limit,
            with_payload=True,
        )
        ordered = sorted(response.points, key=lambda p: (-p.score, str(p.id)))
        return [Hit(id=str(p.id), score=float(p.score), payload=dict(p.payload or {})) for p in ordered]

    def close(self) -> None:
        self.client.close()
