"""What both vector stores share: argument checks, the collection's shape, the fusion and the calibrated score.

Shape: every point has two dense views in one embedding space, "dense" (the chunk as embedded: heading plus
text) and "question" (for a FAQ chunk, its question alone; for any other chunk, a copy of "dense"), plus the
"sparse" BM25 vector. Customers paraphrase the questions a FAQ answers, and a question matches a question
better than it matches a question glued to its answer (COVID-QA: dense hit@1 0.566 -> 0.656 on the question
view alone). A hybrid search is three prefetches, each filtered by tenant, fused with weighted RRF.

Score: fusion scores (1/(k+rank) sums) say nothing about how relevant a passage is. The orchestrator needs a
threshold it can trust, so every `Hit.score` is the cosine similarity between the query and the point's full
("dense") view: the stores ask Qdrant for the fused top-k *with* their dense vectors and compute the dot
product of the normalised query with each stored (already normalised) vector. Order stays the fused order;
only the number changes. The question view ranks but does not score: a question is closer to any other
question than to a question-and-answer, so its cosine runs higher for unrelated questions too. On the
example tenant (tenants/northwind/eval, min_relevance 0.45), scoring by the best view let 3 of the 20
unanswerable questions over the threshold (66 of 76 answerable over); the full view keeps all 20 under
(65 of 76 over; 66 before the question view existed). See tests/knowledge/test_retrieval_calibration.py.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from app.providers.vectors.base import Hit

DENSE = "dense"
QUESTION = "question"
SPARSE = "sparse"
TENANT_FIELD = "tenant_id"
# Payload fields with an index, beyond the tenant: the exact-match filters callers use.
KEYWORD_FIELDS = ("document", "document_id", "kind", "language", "category", "brand", "source_url")
INTEGER_FIELDS = ("pack_version",)
# RRF's k: small k trusts each list's top ranks more. On the COVID-QA FAQ benchmark
# (benchmarks/retrieval_covid.py) k=2 and k=10 beat the textbook 60 on hit@5 (0.893 vs 0.865), with the same
# hit@1 within noise; both stores use the same value so embedded and scale-out rank alike.
RRF_K = 10
# Weighted RRF over the prefetches. See benchmarks/retrieval_covid.py and retrieval_dstc11.py for the numbers.
FUSION_WEIGHTS = {DENSE: 1.0, QUESTION: 1.0, SPARSE: 1.0}
VIEWS = (DENSE, QUESTION)

FilterValue = str | int | bool | list[str] | list[int]


def require_tenant(tenant_id: str) -> str:
    if not isinstance(tenant_id, str) or not tenant_id.strip():
        raise ValueError("tenant_id is required for every vector store call")
    return tenant_id


def check_filters(filters: Mapping[str, Any] | None) -> list[tuple[str, FilterValue]]:
    """Exact-match conditions; a list value matches any of its items. The tenant is never a filter: it is the
    `tenant_id` argument, so a caller cannot widen or swap it through `filters`."""
    out: list[tuple[str, FilterValue]] = []
    for key, value in (filters or {}).items():
        if key == TENANT_FIELD:
            raise ValueError("tenant_id is not a filter: pass it as the tenant_id argument")
        if isinstance(value, bool | int | str):
            out.append((key, value))
        elif isinstance(value, list | tuple) and value and all(isinstance(v, str) for v in value):
            out.append((key, [str(v) for v in value]))
        elif (
            isinstance(value, list | tuple)
            and value
            and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
        ):
            out.append((key, [int(v) for v in value]))
        else:
            raise ValueError(f"filter {key!r}: expected a str, int, bool or a non-empty list of str or int")
    return out


def check_points(tenant_id: str, points: Sequence[Any], dim: int) -> None:
    for point in points:
        if point.tenant_id != tenant_id:
            raise ValueError(f"point {point.id} belongs to tenant {point.tenant_id!r}, not {tenant_id!r}")
        if len(point.dense) != dim:
            raise ValueError(f"point {point.id}: dense vector has {len(point.dense)} dimensions, expected {dim}")
        if point.question is not None and len(point.question) != dim:
            raise ValueError(f"point {point.id}: question vector has {len(point.question)} dimensions, expected {dim}")


def stored_views(config_file: Path) -> tuple[str, ...]:
    """The dense views of an existing qdrant-edge folder (all of them for a new one). A folder indexed before
    the question view existed has only "dense"; it keeps working, without the view, until re-indexed."""
    if not config_file.exists():
        return VIEWS
    vectors = json.loads(config_file.read_text()).get("vectors") or {}
    return tuple(name for name in VIEWS if name in vectors) or VIEWS


def payload_for(tenant_id: str, payload: Mapping[str, Any]) -> dict[str, Any]:
    """The stored payload always carries the tenant from the argument, whatever the caller put in it."""
    return {**payload, TENANT_FIELD: tenant_id}


def normalise(vector: Sequence[float]) -> list[float]:
    norm = math.sqrt(sum(x * x for x in vector))
    return [x / norm for x in vector] if norm else list(vector)


def cosine_to(query_unit: Sequence[float], stored: Sequence[float] | None) -> float:
    """Stored cosine vectors are normalised by Qdrant on write, so the dot product is the cosine."""
    if not stored:
        return 0.0
    return float(sum(a * b for a, b in zip(query_unit, normalise(stored), strict=False)))


def to_hits(query_dense: Sequence[float], points: Sequence[Any], limit: int, *, by_cosine: bool = False) -> list[Hit]:
    """Qdrant's scored points as Hits scored by the cosine of their full ("dense") view, at most `limit`.

    In Qdrant's (fused) order, or with `by_cosine` (a dense-only search, whose candidates are the union of
    each view's top list) in order of the best view's cosine: exactly the top by best view. Exact ties (a pack
    with the same passage twice) break by higher cosine, then id, so a dense query always gives the same list.
    (Fused ranks of exact twins can still swap: RRF gives them different scores from each list's arbitrary
    order.)"""
    unit = normalise(query_dense)
    scored = []
    for p in points:
        views = {name: cosine_to(unit, view) for name, view in dense_views(p.vector).items()}
        score = views.get(DENSE, 0.0)
        best = max(views.values(), default=0.0)
        scored.append((best if by_cosine else float(p.score), score, str(p.id), p.payload))
    scored.sort(key=lambda s: (-s[0], -s[1], s[2]))
    return [Hit(id=pid, score=cos, payload=dict(payload or {})) for _, cos, pid, payload in scored[:limit]]


def dense_views(vector: Any) -> dict[str, list[float]]:
    if not isinstance(vector, dict):
        return {}
    return {name: [float(x) for x in v] for name in (DENSE, QUESTION) if isinstance(v := vector.get(name), list) and v}


def prefetch_limit(limit: int) -> int:
    """Candidates each half of a hybrid query brings to the fusion."""
    return max(20, limit * 4)


def check_limit(limit: int) -> int:
    if limit < 1:
        raise ValueError("limit must be at least 1")
    return limit
