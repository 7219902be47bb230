"""What both vector stores share: argument checks, the collection's shape, the hybrid search and its fusion.

Shape: every point has two dense views in one embedding space, "dense" (the chunk as embedded: heading plus
text) and "question" (for a FAQ chunk, its question alone; for any other chunk, a copy of "dense"), plus the
"sparse" BM25 vector. Customers paraphrase the questions a FAQ answers, and a question matches a question
better than it matches a question glued to its answer (COVID-QA: dense hit@1 0.566 -> 0.656 on the question
view alone).

Search (`hybrid_search`, one code path for both stores, two batches of `Probe`s): candidates are the top of
each dense view and of BM25, each list filtered by tenant; then every candidate gets the scores it lacks
(each view's cosine and its BM25, from probes restricted to the candidates' ids, computed inside Qdrant: no
vectors travel). Fused score = the better view's cosine + KEYWORD_WEIGHT x BM25 / the query's best BM25.
This beat weighted RRF on all three evaluation sets (benchmarks/retrieval_covid.py, retrieval_dstc11.py and
the example tenant; docs/benchmarks.md): RRF throws away how far ahead a passage is, and on paraphrased
questions a BM25 list of near misses voted as loudly as the dense one.

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from app.providers.embeddings.base import SparseVector
from app.providers.vectors.base import Hit

DENSE = "dense"
QUESTION = "question"
SPARSE = "sparse"
TENANT_FIELD = "tenant_id"
# Payload fields with an index, beyond the tenant: the exact-match filters callers use.
KEYWORD_FIELDS = ("document", "document_id", "kind", "language", "category", "brand", "source_url")
INTEGER_FIELDS = ("pack_version",)
# How much a passage's BM25 (as a share of the query's best BM25) adds to its cosine. Chosen, with the query's
# IDF exponent (app/knowledge/termstats.py), on the tuning half of the COVID-QA queries and reported on the
# held-out half and the other sets (benchmarks/tune_retrieval.py, docs/benchmarks.md); 0 loses the exact-term
# matches ("amex", product codes) that embeddings blur, 0.3 lets near misses through on paraphrases.
KEYWORD_WEIGHT = 0.10
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


@dataclass(frozen=True)
class Probe:
    """One scoring request a store runs for `hybrid_search`, already filtered to the tenant and the caller's
    filters: the top `limit` points of one vector (`ids` None, with payloads), or the scores of just `ids`
    (no payloads). Sparse probes score BM25 with the tenant's IDF; a point that shares no term, or lacks the
    view, does not come back."""

    using: str  # DENSE, QUESTION or SPARSE
    vector: list[float] | SparseVector
    limit: int
    ids: tuple[str, ...] | None = None
    payload: bool = True  # a top probe's points come with their payloads (probes given ids never bring them)

    def __post_init__(self) -> None:
        if self.ids is not None and not self.ids:
            raise ValueError("a probe restricted to ids needs at least one id (no ids would mean every point)")


class Scored(NamedTuple):
    """One point a probe found. A named tuple, not a frozen dataclass: a search builds ~100 of them, and the
    dataclass's __init__ (object.__setattr__ per field) cost four times as much."""

    id: str
    score: float
    payload: dict[str, Any] | None = None


RunProbes = Callable[[Sequence[Probe]], list[list[Scored]]]
FetchPayloads = Callable[[Sequence[str]], Mapping[str, dict[str, Any]]]


def hybrid_search(
    run: RunProbes,
    views: Sequence[str],
    dense: list[float],
    sparse: SparseVector | None,
    rank_by: list[float] | None,
    limit: int,
    *,
    fetch: FetchPayloads | None = None,
) -> list[Hit]:
    """The search both stores run (see the module docstring), in two batches of probes (`run` executes a
    batch: one round trip on a server). First each dense view's and BM25's top candidates, then what the
    fusion still lacks: each view's score of the candidates outside its top, their BM25, and the plain
    query's full-view score (the calibrated `Hit.score`) when the ranking used another vector.

    With `fetch` (the embedded store's), the top probes bring no payloads and `fetch` loads only those of the
    hits returned: building the payloads of every candidate was a third of an embedded search. A server store
    passes none, as a third round trip would cost more than the payloads it saves."""
    if rank_by is not None and len(rank_by) != len(dense):
        raise ValueError(f"rank_by has {len(rank_by)} dimensions, the query {len(dense)}")
    rank = rank_by if rank_by is not None else dense
    n = prefetch_limit(limit)
    lists = [*views, SPARSE] if sparse is not None and sparse.indices else list(views)
    vector_of: dict[str, list[float] | SparseVector] = {v: rank for v in views}
    if SPARSE in lists:
        assert sparse is not None
        vector_of[SPARSE] = sparse
    first = run([Probe(using, vector_of[using], n, payload=fetch is None) for using in lists])
    payloads: dict[str, dict[str, Any]] = {}  # every candidate (empty payloads when `fetch` loads them later)
    scores: dict[str, dict[str, float]] = {using: {} for using in lists}
    for using, found in zip(lists, first, strict=True):
        for hit in found:
            payloads.setdefault(hit.id, hit.payload or {})
            scores[using][hit.id] = hit.score
    if not payloads:
        return []
    ids = sorted(payloads)
    second = [Probe(using, vector_of[using], len(missing), missing)
              for using in lists if (missing := tuple(i for i in ids if i not in scores[using]))]
    plain = [Probe(DENSE, dense, len(ids), tuple(ids))] if rank_by is not None else []
    results = run([*second, *plain]) if second or plain else []
    if len(results) != len(second) + len(plain):
        raise RuntimeError(f"the store answered {len(results)} probes of {len(second) + len(plain)}")
    for probe, found in zip(second, results[: len(second)], strict=True):
        scores[probe.using].update((hit.id, hit.score) for hit in found)
    calibrated = {hit.id: hit.score for hit in results[-1]} if plain else scores[DENSE]
    # Only points that still have a full-view score: one deleted between the two batches (a re-index on a
    # server, where nothing holds the store still) is not returned with a made-up score.
    ids = [i for i in ids if i in calibrated]

    best_bm25 = max(scores.get(SPARSE, {}).values(), default=0.0)
    # A point without a question view (any non-FAQ chunk, or an old store) has its full view stand in for it.
    semantic = {i: max(scores[v].get(i, scores[DENSE].get(i, 0.0)) for v in views) for i in ids}
    lexical = {i: scores[SPARSE].get(i, 0.0) / best_bm25 if best_bm25 > 0 else 0.0 for i in ids} \
        if SPARSE in scores else dict.fromkeys(ids, 0.0)
    fused = {i: semantic[i] + KEYWORD_WEIGHT * lexical[i] for i in ids}
    # Exact ties (a pack with the same passage twice) break by the higher calibrated score, then by what the
    # passages are (file, heading, text): the same pack ranks the same in any home, whatever ids its tenant and
    # chunks were given there. The ids come last, for copies of one passage in one file.
    order = sorted(ids, key=lambda i: (-fused[i], -calibrated[i], i))
    if fetch is None:
        order = break_ties(order, lambda i: (fused[i], calibrated[i]), limit, lambda wanted: payloads)[:limit]
    else:
        order = break_ties(order, lambda i: (fused[i], calibrated[i]), limit, fetch)[:limit]
        payloads = dict(fetch(order))
        order = [i for i in order if i in payloads]  # gone since the probes: not returned without its payload
    return [Hit(id=i, score=float(calibrated[i]), payload=dict(payloads[i])) for i in order]


def break_ties(
    order: list[str], score: Callable[[str], tuple[float, float]], limit: int, load: FetchPayloads
) -> list[str]:
    """`order` with each run of exactly tied scores that reaches into the first `limit` sorted by the passages'
    content (document, heading, text, then id). `load` gives payloads; it is called only when there are ties
    (rare: a passage published twice), for the tied points only."""
    runs: list[tuple[int, int]] = []
    start = 0
    while start < min(limit, len(order)):
        end = start + 1
        while end < len(order) and score(order[end]) == score(order[start]):
            end += 1
        if end - start > 1:
            runs.append((start, end))
        start = end
    if not runs:
        return order
    payloads = load([i for a, b in runs for i in order[a:b]])

    def content(point: str) -> tuple[str, str, str, str]:
        p = payloads.get(point) or {}
        return str(p.get("document", "")), str(p.get("heading", "")), str(p.get("text", "")), point

    order = list(order)
    for a, b in runs:
        order[a:b] = sorted(order[a:b], key=content)
    return order


def prefetch_limit(limit: int) -> int:
    """Candidates each list (each dense view, BM25) brings to the fusion."""
    return max(20, limit * 4)


def check_limit(limit: int) -> int:
    if limit < 1:
        raise ValueError("limit must be at least 1")
    return limit
