"""Vector store interface: qdrant-edge (embedded) and qdrant-client against a server (scale-out).

The tenant is a required argument of every read and write and becomes an indexed payload filter inside the
store layer: no caller can search across tenants, by construction.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from app.providers.embeddings.base import SparseVector


@dataclass(frozen=True)
class ChunkPoint:
    id: str  # deterministic uuid (see app/knowledge/ids.py)
    tenant_id: str
    dense: list[float]
    sparse: SparseVector | None
    payload: dict[str, Any]  # document (file name in the pack), chunk text, heading, pack_version, metadata
    # The question a FAQ chunk answers, embedded alone (see app/knowledge/representation.py); None for other
    # chunks, whose question view is then `dense` itself.
    question: list[float] | None = None


@dataclass(frozen=True)
class Hit:
    id: str
    score: float
    payload: dict[str, Any] = field(default_factory=dict)


class VectorStore(Protocol):
    def upsert(self, tenant_id: str, points: Sequence[ChunkPoint]) -> None: ...

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
        """Hybrid when `sparse` is given (both dense views and BM25, fused as common.py describes); dense only
        (the better view's cosine) otherwise. Ranked with `rank_by` when given (a weighted form of the same
        query), else with `dense`. `Hit.score` is the cosine of `dense` to the point's full view.
        `filters` are exact-match payload conditions (e.g. {"pack_version": 3, "language": "en"})."""
        ...

    def delete(self, tenant_id: str, ids: Sequence[str]) -> None: ...

    def delete_where(self, tenant_id: str, filters: dict[str, Any]) -> None: ...

    def count(self, tenant_id: str, filters: dict[str, Any] | None = None) -> int: ...

    def close(self) -> None: ...
