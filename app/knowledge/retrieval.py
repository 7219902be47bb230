"""Retrieval: a customer's question to the tenant's best passages (hybrid: the dense full view, the dense
question view of FAQ chunks and BM25, fused as app/providers/vectors/common.py describes). Within one pack
version the query ranks by its IDF-weighted embedding (app/knowledge/termstats.py).

`Passage.score` is the dense cosine similarity of the passage's full view to the question, so the
orchestrator can hold it against a fixed threshold; `rank` is the fused order. Only the tenant's own points
can come back: the tenant is a filter inside the vector store.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Any

from app.knowledge import termstats
from app.knowledge.query_cache import QueryCache
from app.knowledge.termstats import TermStats
from app.providers.embeddings.base import Embedder, SparseEncoder
from app.providers.vectors.base import VectorStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Passage:
    chunk_id: str
    document: str  # file name within the pack, e.g. "shipping.md"
    heading: str
    text: str
    score: float  # dense cosine similarity to the query, in [-1, 1]
    rank: int  # 1-based, fused order
    reviewed: bool = False  # quarantined as suspected injection at ingestion, then released by an admin

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def retrieve(
    tenant_id: str,
    query: str,
    *,
    top_k: int = 5,
    filters: dict[str, Any] | None = None,
    embedder: Embedder,
    sparse_encoder: SparseEncoder,
    vector_store: VectorStore,
    term_stats: TermStats | None = None,
    query_cache: QueryCache | None = None,
) -> list[Passage]:
    """Top passages for `query`. `filters` are exact-match payload conditions, e.g. {"pack_version": 3}
    to read only the tenant's live pack, or {"document": "faq.csv"}. With a pack version among the filters,
    that version's term statistics weight the query (`term_stats` gives them directly, e.g. for a version
    still being built). `query_cache` keeps the query's vectors of a version's own statistics (not of given ones)."""
    if not isinstance(tenant_id, str) or not tenant_id.strip():
        raise ValueError("tenant_id is required")
    if top_k < 1:
        raise ValueError("top_k must be at least 1")
    if not query or not query.strip():
        return []
    version = (filters or {}).get("pack_version")
    if not isinstance(version, int) or isinstance(version, bool):
        version = None
    given = term_stats is not None
    if not given and version is not None:
        term_stats = _stats(tenant_id, version, embedder)
    if query_cache is None or given:
        dense, weighted = termstats.query_vectors(embedder, query, term_stats)
    else:
        dense, weighted = query_cache.query_vectors(embedder, tenant_id, query, term_stats, version)
    hits = vector_store.search(
        tenant_id, dense, sparse_encoder.encode_query(query), limit=top_k, filters=filters, rank_by=weighted
    )
    return [
        Passage(
            chunk_id=str(hit.payload.get("chunk_id", hit.id)),
            document=str(hit.payload.get("document", "")),
            heading=str(hit.payload.get("heading", "")),
            text=str(hit.payload.get("text", "")),
            score=hit.score,
            rank=rank,
            reviewed=bool(hit.payload.get("injection_released")),
        )
        for rank, hit in enumerate(hits, start=1)
    ]


def _stats(tenant_id: str, version: int, embedder: Embedder) -> TermStats | None:
    try:
        return termstats.for_version(tenant_id, version, embedder)
    except Exception:  # a ranking refinement is not worth a failed answer: rank with the plain query
        log.exception("tenant %s: term statistics of pack version %s unavailable", tenant_id, version)
        return None


@dataclass(frozen=True)
class Retriever:
    """`retrieve` over one process's embedder and stores (`Container.retriever`), with its query cache."""

    embedder: Embedder
    sparse_encoder: SparseEncoder
    vector_store: VectorStore
    query_cache: QueryCache | None = None

    def __call__(self, tenant_id: str, query: str, *, top_k: int = 5, filters: dict[str, Any] | None = None,
                 term_stats: TermStats | None = None) -> list[Passage]:
        return retrieve(tenant_id, query, top_k=top_k, filters=filters, embedder=self.embedder,
                        sparse_encoder=self.sparse_encoder, vector_store=self.vector_store, term_stats=term_stats,
                        query_cache=self.query_cache)

    def close(self) -> None:
        if self.query_cache is not None:
            self.query_cache.close()
