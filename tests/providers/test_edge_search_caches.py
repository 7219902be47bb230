"""The embedded store's search shortcuts give what the slow path gives: cached filter objects (per tenant and
filters), ids handed back to the engine as the uuid.UUID it gave, one engine query per view and vector."""

from __future__ import annotations

import math
import threading
import uuid
from pathlib import Path
from typing import Any

import qdrant_edge as qe

from app.providers.embeddings.base import SparseVector
from app.providers.vectors.base import ChunkPoint, Hit
from app.providers.vectors.edge import EdgeVectorStore, _scope, _scope_key, _sparse_params

DIM = 8


def unit(*values: float) -> list[float]:
    vec = list(values) + [0.0] * (DIM - len(values))
    norm = math.sqrt(sum(v * v for v in vec))
    return [v / norm for v in vec]


def point(tenant: str, i: int, **payload: Any) -> ChunkPoint:
    dense = unit(*[1.0 if d == i % DIM else 0.2 for d in range(DIM)])
    return ChunkPoint(str(uuid.uuid5(uuid.NAMESPACE_URL, f"{tenant}/{i}")), tenant, dense,
                      SparseVector([i % 5, 10 + i % 3], [1.0, 2.0]),
                      {"document": f"doc-{i % 4}", "text": f"t{i}", "pack_version": 1 + i % 2, **payload},
                      question=unit(*[1.0 if d == (i + 1) % DIM else 0.1 for d in range(DIM)]) if i % 3 == 0 else None)


def slow_filter(tenant_id: str, filters: dict[str, Any]) -> qe.Filter:
    """The filter as the store built it on every call before the cache (edge.py at main)."""
    must: list[Any] = [qe.FieldCondition("tenant_id", match=qe.MatchValue(tenant_id))]
    for key, value in filters.items():
        match = qe.MatchAny(value) if isinstance(value, list) else qe.MatchValue(value)
        must.append(qe.FieldCondition(key, match=match))
    return qe.Filter(must=must)


def key(hits: list[Hit]) -> list[tuple[str, float, dict[str, Any]]]:
    return [(h.id, h.score, h.payload) for h in hits]


def test_a_cached_filter_never_serves_another_tenant(tmp_path: Path) -> None:
    store = EdgeVectorStore(tmp_path / "vectors", dim=DIM)
    try:
        # Two tenants with the same points (vectors, payloads): only the tenant tells their hits apart.
        for tenant in ("acme", "globex"):
            store.upsert(tenant, [point(tenant, i) for i in range(12)])
        query, words = unit(1, 0.3), SparseVector([0, 10], [1.0, 1.0])
        for filters in (None, {"pack_version": 1}, {"document": ["doc-0", "doc-1"]}):
            for _ in range(3):  # alternate, so each tenant's search follows the other's cached entry
                for tenant, other in (("acme", "globex"), ("globex", "acme")):
                    hits = store.search(tenant, query, words, limit=10, filters=filters, rank_by=unit(1, 0.2))
                    assert hits and all(h.payload["tenant_id"] == tenant for h in hits)
                    assert store.count(tenant, filters) == (12 if filters is None else 6)
                    cached = repr(store._filter(tenant, filters))
                    assert cached == repr(slow_filter(tenant, filters or {}))
                    assert f'"{tenant}"' in cached and f'"{other}"' not in cached
        for tenant, other in (("acme", "globex"), ("globex", "acme")):
            for params in _sparse_params(tenant):  # BM25's IDF corpus: the tenant's points only
                assert f'"{tenant}"' in repr(params) and f'"{other}"' not in repr(params)
    finally:
        store.close()


def test_bool_and_int_filters_are_not_one_cache_entry(tmp_path: Path) -> None:
    # True == 1 and they hash alike: each gets the filter built from its own value, as before the cache (what
    # the engine then matches is its business: qdrant-edge 0.9 reads True as 1).
    assert _scope_key({"flag": True}) != _scope_key({"flag": 1})
    assert _scope_key({"flag": False}) != _scope_key({"flag": 0})
    store = EdgeVectorStore(tmp_path / "vectors", dim=DIM)
    try:
        store.upsert("acme", [point("acme", 0, flag=True), point("acme", 1, flag=1), point("acme", 2, flag=0)])
        flags: list[bool | int] = [True, 1, False, 0]
        uncached = {}
        for flag in flags:
            _scope.cache_clear()
            uncached[flag] = key(store.search("acme", unit(1), limit=5, filters={"flag": flag}))
        for flag in flags * 2:  # every entry cached now, each right after the other kind's
            assert repr(store._filter("acme", {"flag": flag})) == repr(slow_filter("acme", {"flag": flag}))
            assert key(store.search("acme", unit(1), limit=5, filters={"flag": flag})) == uncached[flag]
    finally:
        store.close()


def test_repeated_searches_give_identical_hits_to_the_first_uncached_one(tmp_path: Path) -> None:
    store = EdgeVectorStore(tmp_path / "vectors", dim=DIM)
    try:
        for tenant in ("acme", "globex"):
            store.upsert(tenant, [point(tenant, i) for i in range(30)])
        calls: list[dict[str, Any]] = [
            {"sparse": SparseVector([0, 11], [1.0, 0.5]), "limit": 5, "rank_by": unit(1, 0.5, 0.1)},
            {"sparse": SparseVector([2], [1.0]), "limit": 3, "filters": {"pack_version": 2}},
            {"sparse": None, "limit": 8, "filters": {"document": ["doc-1", "doc-2"]}, "rank_by": unit(0, 1)},
            {"sparse": SparseVector([1, 12], [1.0, 1.0]), "limit": 1},
        ]
        for tenant in ("acme", "globex"):
            for call in calls:
                _scope.cache_clear()
                _sparse_params.cache_clear()
                first = key(store.search(tenant, unit(1, 0.4, 0.2), **call))
                assert first
                for _ in range(3):
                    assert key(store.search(tenant, unit(1, 0.4, 0.2), **call)) == first
    finally:
        store.close()


def test_ids_given_as_the_engines_uuids_score_what_their_strings_score(tmp_path: Path) -> None:
    store = EdgeVectorStore(tmp_path / "vectors", dim=DIM)
    try:
        store.upsert("acme", [point("acme", i) for i in range(20)])
        found = store._engine.query(qe.QueryRequest(limit=20, query=qe.Query.Nearest(unit(1), using="dense"),
                                                    filter=store._filter("acme")))
        uuids = [x.id for x in found][::2]
        assert all(isinstance(u, uuid.UUID) for u in uuids)

        def scores(ids: set[Any]) -> dict[str, float]:
            # By id: the engine's order of equal scores follows its hash set's, which varies from set to set.
            must = list(store._filter("acme").must or [])
            request = qe.QueryRequest(limit=len(ids), query=qe.Query.Nearest(unit(0.3, 1), using="dense"),
                                      filter=qe.Filter(must=[*must, qe.HasIdCondition(ids)]),
                                      params=qe.SearchParams(exact=True))
            return {str(x.id): x.score for x in store._engine.query(request)}

        assert scores(set(uuids)) == scores({str(u) for u in uuids})
        assert len(scores(set(uuids))) == len(uuids)
        restricted = store._filter("acme", ids=[str(u) for u in uuids]).must
        assert restricted is not None and restricted[-1].point_ids == set(uuids)  # type: ignore[union-attr]
    finally:
        store.close()


def test_threads_searching_two_tenants_share_the_cache_and_each_sees_its_own(tmp_path: Path) -> None:
    store = EdgeVectorStore(tmp_path / "vectors", dim=DIM)
    try:
        for tenant in ("acme", "globex"):
            store.upsert(tenant, [point(tenant, i) for i in range(30)])
        query, words, filters = unit(1, 0.4, 0.2), SparseVector([0, 11], [1.0, 0.5]), {"pack_version": 1}
        expected = {t: key(store.search(t, query, words, limit=5, filters=filters)) for t in ("acme", "globex")}
        assert expected["acme"] != expected["globex"]
        errors: list[BaseException] = []

        def searcher(n: int) -> None:
            try:
                for k in range(40):
                    tenant = ("acme", "globex")[(n + k) % 2]
                    assert key(store.search(tenant, query, words, limit=5, filters=filters)) == expected[tenant]
            except BaseException as exc:  # reported below
                errors.append(exc)

        threads = [threading.Thread(target=searcher, args=(n,)) for n in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not errors, errors
    finally:
        store.close()
