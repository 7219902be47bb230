"""`hybrid_search`'s two batches of probes, against a store stand-in that answers probes from plain dicts:
what it asks for, and what it does with an answer that is short or has lost a point."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from app.providers.embeddings.base import SparseVector
from app.providers.vectors.common import DENSE, QUESTION, SPARSE, Probe, Scored, hybrid_search, prefetch_limit

SCORES = {  # what each list would score each point
    DENSE: {"a": 0.9, "b": 0.5, "c": 0.4},
    QUESTION: {"a": 0.6, "b": 0.95, "c": 0.3},
    SPARSE: {"c": 8.0, "a": 2.0},
}


class Store:
    """Answers probes from SCORES; `forget` drops points from the second batch (deleted in between)."""

    def __init__(self, forget: Sequence[str] = (), short: bool = False) -> None:
        self.batches: list[list[Probe]] = []
        self.forget, self.short = set(forget), short

    def __call__(self, probes: Sequence[Probe]) -> list[list[Scored]]:
        self.batches.append(list(probes))
        out = []
        for probe in probes:
            table = SCORES[probe.using]
            if probe.ids is None:
                top = sorted(table, key=lambda i: -table[i])[:1]  # a first stage of one per list
                out.append([Scored(i, table[i], {"document": i}) for i in top])
            else:
                out.append([Scored(i, table[i]) for i in probe.ids if i in table and i not in self.forget])
        return out[:-1] if self.short and len(self.batches) == 2 else out


def test_asks_for_the_tops_then_only_what_each_list_lacks() -> None:
    store = Store()
    plain, rank = [1.0, 0.0], [0.0, 1.0]
    hits = hybrid_search(store, (DENSE, QUESTION), plain, SparseVector([3], [1.0]), rank, limit=3)
    first, second = store.batches
    assert [(p.using, p.ids, p.limit) for p in first] == [
        (using, None, prefetch_limit(3)) for using in (DENSE, QUESTION, SPARSE)
    ]
    assert first[0].vector == rank and first[2].vector == SparseVector([3], [1.0])
    # Candidates a (dense top), b (question top), c (BM25 top): each list asks only for the ones it lacks, and the
    # plain query's full-view scores of all three come last.
    assert [(p.using, p.ids) for p in second] == [
        (DENSE, ("b", "c")), (QUESTION, ("a", "c")), (SPARSE, ("a", "b")), (DENSE, ("a", "b", "c"))
    ]
    assert second[-1].vector == plain
    # fused: a 0.9 + 0.15 * 2/8, b 0.95 + 0, c 0.4 + 0.15
    assert [h.id for h in hits] == ["b", "a", "c"]
    assert [h.score for h in hits] == [0.5, 0.9, 0.4]  # the full view's scores, not the fused ones


def test_a_point_gone_between_the_batches_is_not_returned() -> None:
    # b is the question view's top, then gone: no full-view score, so no made-up 0.0 hit.
    hits = hybrid_search(Store(forget=["b"]), (DENSE, QUESTION), [1.0, 0.0], None, [0.0, 1.0], limit=3)
    assert [(h.id, h.score) for h in hits] == [("a", 0.9)]


def test_a_store_that_answers_fewer_probes_than_asked_is_an_error() -> None:
    with pytest.raises(RuntimeError, match="answered 3 probes of 4"):
        hybrid_search(Store(short=True), (DENSE, QUESTION), [1.0, 0.0], SparseVector([3], [1.0]), [0.0, 1.0], 3)


def test_a_probe_restricted_to_no_ids_is_refused() -> None:
    with pytest.raises(ValueError, match="at least one id"):
        Probe(DENSE, [1.0], 1, ())


def test_with_fetch_the_tops_bring_no_payloads_and_only_the_hits_payloads_are_loaded() -> None:
    """The embedded store's way: the same hits, in the same order with the same scores, as with payloads on the
    probes; payloads are loaded once, for the returned hits only."""
    plain, rank, sparse = [1.0, 0.0], [0.0, 1.0], SparseVector([3], [1.0])
    expected = hybrid_search(Store(), (DENSE, QUESTION), plain, sparse, rank, limit=2)
    store, fetched = Store(), []

    def fetch(ids: Sequence[str]) -> dict[str, dict[str, str]]:
        fetched.append(list(ids))
        return {i: {"document": i} for i in ids}

    hits = hybrid_search(store, (DENSE, QUESTION), plain, sparse, rank, limit=2, fetch=fetch)
    assert [p.payload for p in store.batches[0]] == [False, False, False]
    assert fetched == [["b", "a"]]
    assert hits == expected and [h.payload for h in hits] == [{"document": "b"}, {"document": "a"}]


def test_a_hit_whose_payload_is_gone_when_fetched_is_not_returned() -> None:
    hits = hybrid_search(Store(), (DENSE, QUESTION), [1.0, 0.0], SparseVector([3], [1.0]), [0.0, 1.0], limit=3,
                         fetch=lambda ids: {i: {"document": i} for i in ids if i != "a"})
    assert [h.id for h in hits] == ["b", "c"]
