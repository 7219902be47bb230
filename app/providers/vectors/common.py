"""What both vector stores share: argument checks, the collection's shape, the hybrid search and its fusion.

Shape: every point has two dense views in one embedding space, "dense" (the chunk as embedded: heading plus
text) and "question" (for a FAQ chunk, its question alone; for any other chunk, a copy of "dense"), plus the
"sparse" BM25 vector. Customers paraphrase the questions a FAQ answers, and a question matches a question
better than it matches a question glued to its answer (COVID-QA: dense hit@1 0.566 -> 0.656 on the question
view alone).

Search (`hybrid_search`, one code path for both stores): candidates are the top of each dense view and of
BM25, each list filtered by tenant; each candidate then gets its exact BM25 score (a second keyword query
restricted to the candidates' ids) and its cosine to both dense views (from the vectors returned with it).
Fused score = the better view's cosine + KEYWORD_WEIGHT x BM25 / the query's best BM25. This beat weighted RRF
on all three evaluation sets (benchmarks/retrieval_covid.py, retrieval_dstc11.py and the example tenant;
docs/benchmarks.md): RRF throws away how far ahead a passage is, and on paraphrased questions a BM25 list
of near misses voted as loudly as the dense one.

The ranking query may differ from the scoring one (`rank_by`: the IDF-weighted query of
app/knowledge/termstats.py). Score: fused scores say little about how relevant a passage is. The orchestrator
needs a threshold it can trust, so every `Hit.score` is the cosine similarity between the (plain) query and
the point's full ("dense") view. Order is the fused order; only the number differs. The question view ranks
but does not score: a question is closer to any other question than to a question-and-answer, so its cosine
runs higher for unrelated questions too. On the example tenant (tenants/northwind/eval, min_relevance 0.45),
scoring by the best view let 3 of the 20 unanswerable questions over the threshold; the full view keeps all
20 under. See tests/knowledge/test_retrieval_calibration.py.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from app.providers.vectors.base import Hit

DENSE = "dense"
QUESTION = "question"
SPARSE = "sparse"
TENANT_FIELD = "tenant_id"
# Payload fields with an index, beyond the tenant: the exact-match filters callers use.
KEYWORD_FIELDS = ("document", "document_id", "kind", "language", "category", "brand", "source_url")
INTEGER_FIELDS = ("pack_version",)
# How much a passage's BM25 (as a share of the query's best BM25) adds to its cosine. 0.1 to 0.2 all met
# issue 4's COVID-QA goal and kept or raised the example tenant and DSTC11 (docs/benchmarks.md); 0 loses the
# exact-term matches ("amex", product codes) that embeddings blur, 0.3 lets near misses through on paraphrases.
KEYWORD_WEIGHT = 0.15
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


def _unit(vector: Sequence[float]) -> np.ndarray:
    array = np.asarray(vector, dtype=np.float64)
    norm = float(np.linalg.norm(array))
    return array / norm if norm else array


def hybrid_search(
    first_stage: Callable[[list[float]], tuple[Sequence[Sequence[Any]], Sequence[Any]]],
    keyword_scores: Callable[[Sequence[str]], Sequence[Any]] | None,
    dense: Sequence[float],
    rank_by: Sequence[float] | None,
    limit: int,
) -> list[Hit]:
    """The search both stores run (see the module docstring). `first_stage(vector)` gives the store's top
    `prefetch_limit(limit)` points of each dense view for `vector` (with payloads and dense vectors) and the
    BM25 top alike (empty for a dense-only search); `keyword_scores(ids)` the BM25 scores of just those ids
    (points without a shared term do not come back), None for a dense-only search. Both are already filtered
    to the tenant and the caller's filters."""
    if rank_by is not None and len(rank_by) != len(dense):
        raise ValueError(f"rank_by has {len(rank_by)} dimensions, the query {len(dense)}")
    rank = list(rank_by) if rank_by is not None else list(dense)
    view_lists, keyword_top = first_stage(rank)
    candidates: dict[str, Any] = {}
    for points in view_lists:
        for point in points:
            candidates.setdefault(str(point.id), point)
    bm25: dict[str, float] = {}
    for point in keyword_top:
        candidates.setdefault(str(point.id), point)
        bm25[str(point.id)] = float(point.score)
    unscored = [pid for pid in candidates if pid not in bm25]
    if keyword_scores is not None and unscored:
        bm25.update({str(p.id): float(p.score) for p in keyword_scores(unscored)})
    best_bm25 = max(bm25.values(), default=0.0)
    score_unit, rank_unit = _unit(dense), _unit(rank)
    scored = []
    for pid, point in candidates.items():
        stored = {name: _unit(v) for name, v in dense_views(point.vector).items()}
        full = stored.get(DENSE)
        score = float(score_unit @ full) if full is not None else 0.0
        semantic = max((float(rank_unit @ v) for v in stored.values()), default=0.0)
        lexical = bm25.get(pid, 0.0) / best_bm25 if best_bm25 > 0 else 0.0
        scored.append((semantic + KEYWORD_WEIGHT * lexical, score, pid, point.payload))
    # Exact ties (a pack with the same passage twice) break by the higher calibrated score, then by id, so a
    # query always gets the same list.
    scored.sort(key=lambda s: (-s[0], -s[1], s[2]))
    return [Hit(id=pid, score=score, payload=dict(payload or {})) for _, score, pid, payload in scored[:limit]]


def dense_views(vector: Any) -> dict[str, Sequence[float]]:
    if not isinstance(vector, dict):
        return {}
    return {name: v for name in (DENSE, QUESTION) if isinstance(v := vector.get(name), list) and v}


def prefetch_limit(limit: int) -> int:
    """Candidates each half of a hybrid query brings to the fusion."""
    return max(20, limit * 4)


def check_limit(limit: int) -> int:
    if limit < 1:
        raise ValueError("limit must be at least 1")
    return limit
