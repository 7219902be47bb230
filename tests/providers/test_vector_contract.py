"""One contract for both vector stores: qdrant-edge in a temp folder, and qdrant-client's local mode standing
in for a Qdrant server (same client code path and query shape as against a real server)."""

from __future__ import annotations

import inspect
import math
import random
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from app.providers.embeddings.base import SparseVector
from app.providers.vectors.base import ChunkPoint, VectorStore
from app.providers.vectors.common import KEYWORD_WEIGHT
from app.providers.vectors.edge import EdgeVectorStore
from app.providers.vectors.qdrant_server import QdrantServerStore

DIM = 8
# qdrant-client local mode warns that it ignores payload indexes (the server honours them)
# and that it always searches exactly (what the stores ask for on id-restricted probes).
pytestmark = [
    pytest.mark.filterwarnings("ignore:Payload indexes have no effect:UserWarning"),
    pytest.mark.filterwarnings("ignore:Local mode performs exact:UserWarning"),
]


def unit(*values: float) -> list[float]:
    vec = list(values) + [0.0] * (DIM - len(values))
    norm = math.sqrt(sum(v * v for v in vec))
    return [v / norm for v in vec]


def pid(tenant: str, name: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"{tenant}/{name}"))


def point(tenant: str, name: str, dense: list[float], terms: dict[int, float] | None = None, **payload: Any):
    sparse = SparseVector(sorted(terms), [terms[i] for i in sorted(terms)]) if terms else None
    return ChunkPoint(pid(tenant, name), tenant, dense, sparse, {"document": name, "text": name, **payload})


@pytest.fixture(params=["edge", "server"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[VectorStore]:
    if request.param == "edge":
        s: Any = EdgeVectorStore(tmp_path / "vectors", dim=DIM)
    else:
        from qdrant_client import QdrantClient

        s = QdrantServerStore(client=QdrantClient(location=":memory:"), dim=DIM)
    yield s
    s.close()


def seed(store: VectorStore) -> None:
    store.upsert(
        "acme",
        [
            point("acme", "returns.md", unit(1, 0.1), {1: 1.0, 2: 0.5}, pack_version=1, kind="markdown"),
            point("acme", "shipping.md", unit(0.1, 1), {3: 1.0}, pack_version=1, kind="markdown"),
            point("acme", "faq.csv", unit(0.7, 0.7), {1: 0.3, 4: 1.0}, pack_version=2, kind="faq"),
        ],
    )
    store.upsert("globex", [point("globex", "returns.md", unit(1, 0.1), {1: 1.0, 2: 0.5}, pack_version=1)])


def test_upsert_count_and_dense_search_returns_payload_and_cosine(store: VectorStore) -> None:
    seed(store)
    assert store.count("acme") == 3
    assert store.count("globex") == 1
    hits = store.search("acme", unit(1, 0), limit=3)
    assert [h.payload["document"] for h in hits][:1] == ["returns.md"]
    assert hits[0].id == pid("acme", "returns.md")
    assert hits[0].payload["tenant_id"] == "acme" and hits[0].payload["pack_version"] == 1
    expected = sum(a * b for a, b in zip(unit(1, 0), unit(1, 0.1), strict=True))
    assert hits[0].score == pytest.approx(expected, abs=1e-4)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)


def test_hybrid_search_fuses_and_scores_with_dense_cosine(store: VectorStore) -> None:
    seed(store)
    query = unit(0.1, 1)  # dense says shipping; sparse term 4 says faq.csv
    hits = store.search("acme", query, SparseVector([4], [1.0]), limit=3)
    docs = [h.payload["document"] for h in hits]
    assert set(docs[:2]) == {"shipping.md", "faq.csv"}
    for h in hits:  # the score is the calibrated dense cosine, not the RRF number
        stored = {"returns.md": unit(1, 0.1), "shipping.md": unit(0.1, 1), "faq.csv": unit(0.7, 0.7)}
        cos = sum(a * b for a, b in zip(query, stored[h.payload["document"]], strict=True))
        assert h.score == pytest.approx(cos, abs=1e-4)


def test_hybrid_rank_is_best_view_cosine_plus_a_share_of_the_best_bm25(store: VectorStore) -> None:
    """Fused score = cosine + KEYWORD_WEIGHT x BM25 / the query's best BM25, every candidate scored exactly:
    `target` is far down the keyword list (26th), yet its keyword share still puts it ahead of `rival`."""
    noise = [point("acme", f"noise-{i}", unit(0, 1), {7: 1.0}) for i in range(25)]
    target = point("acme", "target", unit(1, 0.2), {7: 0.5})  # cos 0.981 + 0.15 x 0.5 = 1.056
    rival = point("acme", "rival", unit(1, 0.1), {8: 1.0})  # cos 0.995, no shared term
    store.upsert("acme", [*noise, target, rival])
    hits = store.search("acme", unit(1, 0), SparseVector([7], [1.0]), limit=3)
    assert [h.payload["document"] for h in hits[:2]] == ["target", "rival"]
    assert hits[0].score == pytest.approx(cosine_of(unit(1, 0), unit(1, 0.2)), abs=1e-4)
    assert KEYWORD_WEIGHT * 0.5 > 0.995 - 0.981  # the share target needs to pass rival
    # Without the keyword, the better cosine wins.
    assert [h.payload["document"] for h in store.search("acme", unit(1, 0), limit=2)] == ["rival", "target"]


def test_rank_by_orders_the_hits_and_the_plain_query_scores_them(store: VectorStore) -> None:
    seed(store)
    plain, weighted = unit(1, 0), unit(0, 1)
    hits = store.search("acme", plain, SparseVector([9], [1.0]), limit=3, filters={"pack_version": 1},
                        rank_by=weighted)
    assert [h.payload["document"] for h in hits] == ["shipping.md", "returns.md"]
    assert hits[0].score == pytest.approx(cosine_of(plain, unit(0.1, 1)), abs=1e-4)
    dense_only = store.search("acme", plain, limit=3, filters={"pack_version": 1}, rank_by=weighted)
    assert [h.id for h in dense_only] == [h.id for h in hits]


def cosine_of(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


def test_filters_are_exact_match_and_lists_match_any(store: VectorStore) -> None:
    seed(store)
    assert {h.payload["document"] for h in store.search("acme", unit(1, 0), filters={"pack_version": 2})} == {"faq.csv"}
    assert store.count("acme", {"kind": "markdown"}) == 2
    assert store.count("acme", {"document": ["faq.csv", "shipping.md"]}) == 2
    assert store.count("acme", {"kind": "markdown", "pack_version": 2}) == 0
    with pytest.raises(ValueError, match="filter"):
        store.count("acme", {"kind": {"$ne": "faq"}})


def test_tenant_isolation_even_with_identical_vectors(store: VectorStore) -> None:
    seed(store)
    hits = store.search("globex", unit(1, 0.1), SparseVector([1, 2], [1.0, 1.0]), limit=10)
    assert [h.payload["tenant_id"] for h in hits] == ["globex"]
    assert store.search("initech", unit(1, 0.1), limit=10) == []
    # A tenant's filter cannot name another tenant, and there is no call without a tenant.
    with pytest.raises(ValueError, match="tenant_id"):
        store.search("globex", unit(1, 0), filters={"tenant_id": "acme"})
    for bad in ("", "   "):
        with pytest.raises(ValueError, match="tenant_id"):
            store.search(bad, unit(1, 0))
        with pytest.raises(ValueError, match="tenant_id"):
            store.count(bad)
        with pytest.raises(ValueError, match="tenant_id"):
            store.delete_where(bad, {})
    for method in ("search", "upsert", "delete", "delete_where", "count"):
        param = inspect.signature(getattr(store, method)).parameters["tenant_id"]
        assert param.default is inspect.Parameter.empty


def test_writes_cannot_cross_tenants(store: VectorStore) -> None:
    seed(store)
    with pytest.raises(ValueError, match="belongs to tenant"):
        store.upsert("globex", [point("acme", "x.md", unit(1))])
    # globex deleting acme's ids, or everything it can see, leaves acme untouched.
    store.delete("globex", [pid("acme", "returns.md"), pid("acme", "faq.csv")])
    store.delete_where("globex", {})
    assert store.count("acme") == 3
    assert store.count("globex") == 0
    # An id collision (impossible with tenant-scoped uuid5, but guarded) never overwrites the owner's point.
    store.upsert("globex", [ChunkPoint(pid("acme", "returns.md"), "globex", unit(0, 0, 1), None, {"document": "evil"})])
    assert store.search("acme", unit(1, 0), limit=1)[0].payload["document"] == "returns.md"
    assert store.count("acme") == 3


def test_delete_and_delete_where(store: VectorStore) -> None:
    seed(store)
    store.delete("acme", [pid("acme", "shipping.md")])
    assert store.count("acme") == 2
    store.delete_where("acme", {"pack_version": 2})
    assert [h.payload["document"] for h in store.search("acme", unit(1, 1), limit=5)] == ["returns.md"]
    store.delete_where("acme", {})
    assert store.count("acme") == 0
    assert store.count("globex") == 1


def test_reupsert_with_deterministic_ids_is_idempotent(store: VectorStore) -> None:
    seed(store)
    seed(store)
    assert store.count("acme") == 3
    store.upsert("acme", [point("acme", "returns.md", unit(0, 0, 1), pack_version=1, text="new text")])
    assert store.count("acme") == 3
    hit = store.search("acme", unit(0, 0, 1), limit=1)[0]
    assert hit.id == pid("acme", "returns.md") and hit.payload["text"] == "new text"


def test_rejects_wrong_dimension_and_bad_limit(store: VectorStore) -> None:
    with pytest.raises(ValueError, match="dimensions"):
        store.upsert("acme", [ChunkPoint(pid("acme", "x"), "acme", [1.0, 0.0], None, {})])
    with pytest.raises(ValueError, match="limit"):
        store.search("acme", unit(1), limit=0)


def test_edge_store_persists_across_reopen(tmp_path: Path) -> None:
    path = tmp_path / "vectors"
    first = EdgeVectorStore(path, dim=DIM)
    seed(first)
    first.close()
    second = EdgeVectorStore(path, dim=DIM)
    try:
        assert second.count("acme") == 3
        hits = second.search("acme", unit(1, 0), SparseVector([1], [1.0]), limit=1)
        assert hits[0].id == pid("acme", "returns.md")
    finally:
        second.close()
    with pytest.raises(RuntimeError, match="dimension"):
        EdgeVectorStore(path, dim=DIM + 1)


def test_edge_store_is_locked_to_one_opener_and_says_so(tmp_path: Path) -> None:
    path = tmp_path / "vectors"
    first = EdgeVectorStore(path, dim=DIM)
    try:
        with pytest.raises(RuntimeError, match="open in another process"):
            EdgeVectorStore(path, dim=DIM)
    finally:
        first.close()
    with pytest.raises(RuntimeError, match="closed"):
        first.count("acme")
    EdgeVectorStore(path, dim=DIM).close()  # released on close


def test_exact_ties_come_back_in_a_stable_order(store: VectorStore) -> None:
    twins = [point("acme", name, unit(1, 0.5), {7: 1.0}) for name in ("b-twin.md", "a-twin.md", "c-twin.md")]
    store.upsert("acme", twins)
    expected = sorted(p.id for p in twins)
    for _ in range(3):
        assert [h.id for h in store.search("acme", unit(1, 0.5), limit=3)] == expected
        # Fused ranks of exact twins depend on how each engine list orders them: same set, same cosine.
        fused = store.search("acme", unit(1, 0.5), SparseVector([7], [1.0]), limit=3)
        assert sorted(h.id for h in fused) == expected
        assert len({round(h.score, 6) for h in fused}) == 1


def test_question_view_finds_a_faq_by_its_question_but_the_full_view_scores_it(store: VectorStore) -> None:
    faq = ChunkPoint(
        pid("acme", "faq.csv"),
        "acme",
        unit(0, 0, 1),
        SparseVector([9], [1.0]),
        {"document": "faq.csv"},
        question=unit(1, 0.2),
    )
    store.upsert("acme", [faq, point("acme", "returns.md", unit(1, 1)), point("acme", "care.md", unit(0, 1))])
    query = unit(1, 0.1)
    expected = sum(a * b for a, b in zip(query, unit(0, 0, 1), strict=True))  # the full view, not the question
    for sparse in (None, SparseVector([9], [1.0])):
        hits = store.search("acme", query, sparse, limit=3)
        assert hits[0].id == faq.id
        assert hits[0].score == pytest.approx(expected, abs=1e-4)
    # A point without a question view ranks and scores by its one view; another tenant sees none of it.
    other = next(h for h in store.search("acme", query, limit=3) if h.payload["document"] == "returns.md")
    assert other.score == pytest.approx(sum(a * b for a, b in zip(query, unit(1, 1), strict=True)), abs=1e-4)
    assert store.search("globex", query, SparseVector([9], [1.0]), limit=3) == []
    with pytest.raises(ValueError, match="question vector"):
        store.upsert("acme", [ChunkPoint(pid("acme", "q"), "acme", unit(1), None, {}, question=[1.0, 0.0])])


def test_dense_only_search_ranks_by_the_best_view_and_scores_by_the_full_view(store: VectorStore) -> None:
    names = [f"doc{i}.md" for i in range(12)]
    points = [
        ChunkPoint(pid("acme", n), "acme", unit(1, i), None, {"document": n}, question=unit(i, 1) if i % 2 else None)
        for i, n in enumerate(names)
    ]
    store.upsert("acme", points)
    query = unit(1, 0.3, 0.2)

    def cos(v: list[float]) -> float:
        return sum(a * b for a, b in zip(query, v, strict=True))

    best = {p.id: max(cos(p.dense), cos(p.question or p.dense)) for p in points}
    hits = store.search("acme", query, limit=5)
    assert [h.id for h in hits] == sorted(best, key=lambda i: (-best[i], i))[:5]
    full = {p.id: cos(p.dense) for p in points}
    assert [h.score for h in hits] == pytest.approx([full[h.id] for h in hits], abs=1e-4)


def test_stores_indexed_before_the_question_view_keep_working(tmp_path: Path) -> None:
    import qdrant_edge as qe
    from qdrant_client import QdrantClient, models

    path = tmp_path / "old-vectors"
    old = qe.EdgeConfig(
        vectors={"dense": qe.EdgeVectorParams(size=DIM, distance=qe.Distance.Cosine)},
        sparse_vectors={"sparse": qe.EdgeSparseVectorParams(modifier=qe.Modifier.Idf)},
    )
    qe.EdgeShard.create(str(path), old).close()
    client = QdrantClient(location=":memory:")
    client.create_collection(
        "old",
        vectors_config={"dense": models.VectorParams(size=DIM, distance=models.Distance.COSINE)},
        sparse_vectors_config={"sparse": models.SparseVectorParams(modifier=models.Modifier.IDF)},
    )
    stores: list[Any] = [EdgeVectorStore(path, dim=DIM), QdrantServerStore(client=client, dim=DIM, collection="old")]
    for s in stores:
        try:
            assert s.views == ("dense",)
            s.upsert(
                "acme", [ChunkPoint(pid("acme", "f"), "acme", unit(1), None, {"document": "f"}, question=unit(0, 1))]
            )
            hits = s.search("acme", unit(1, 0.1), SparseVector([1], [1.0]), limit=1)
            assert hits[0].payload["document"] == "f"
            assert hits[0].score == pytest.approx(unit(1, 0.1)[0], abs=1e-4)
        finally:
            s.close()


def test_a_rank_vector_over_many_points_matches_brute_force(store: VectorStore) -> None:
    """More points than a first-stage list holds, separate question views, and a rank vector unlike the plain
    query: the second batch must fill in every candidate's scores exactly."""
    rng = random.Random(7)

    def rand() -> list[float]:
        return unit(*(rng.uniform(-1, 1) for _ in range(DIM)))

    points = [
        ChunkPoint(pid("acme", f"p{i}"), "acme", rand(), None, {"document": f"p{i}"}, question=rand())
        for i in range(60)
    ]
    store.upsert("acme", points)
    plain, rank = rand(), rand()
    hits = store.search("acme", plain, limit=5, rank_by=rank)
    best = sorted(points, key=lambda p: -max(cosine_of(rank, p.dense), cosine_of(rank, p.question or p.dense)))
    assert [h.id for h in hits] == [p.id for p in best[:5]]
    for h, p in zip(hits, best, strict=False):
        assert h.score == pytest.approx(cosine_of(plain, p.dense), abs=1e-4)


def test_bm25_idf_is_the_tenants_own(store: VectorStore) -> None:
    seed(store)
    before = [(h.id, h.score) for h in store.sparse_search("acme", SparseVector([1, 4], [1.0, 1.0]), limit=3)]
    # Another tenant's points full of term 1 would lower its IDF if the corpus were shared.
    store.upsert("globex", [point("globex", f"g{i}", unit(1), {1: 1.0}) for i in range(30)])
    after = [(h.id, h.score) for h in store.sparse_search("acme", SparseVector([1, 4], [1.0, 1.0]), limit=3)]
    assert after == before and before
