"""Micro-batched query embeddings: concurrent queries (and replies' sentences, as documents) share model calls,
each gets exactly the vectors it would get alone, and an error reaches every caller of its batch without stopping
the next one."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest

from app.providers.embeddings.batching import MicroBatcher
from app.providers.embeddings.minilm import MiniLMEmbedder
from tests.bus.conftest import wait_for


def run_in_threads(n: int, target: Callable[[int], object]) -> list[threading.Thread]:
    threads = [threading.Thread(target=target, args=(i,), daemon=True) for i in range(n)]
    for thread in threads:
        thread.start()
    return threads


def test_requests_arriving_while_a_batch_runs_go_together_in_the_next_call() -> None:
    gate = threading.Event()
    calls: list[list[int]] = []

    def run(items: list[int]) -> list[int]:
        calls.append(list(items))
        if len(calls) == 1:
            assert gate.wait(20)
        return [i * 10 for i in items]

    batcher = MicroBatcher(run, max_batch=8, window_s=0)
    results: dict[int, int] = {}
    first = run_in_threads(1, lambda i: results.__setitem__(0, batcher.submit(0)))
    wait_for(lambda: calls)  # the first call is running (and blocked)
    others = run_in_threads(12, lambda i: results.__setitem__(i + 1, batcher.submit(i + 1)))
    wait_for(lambda: batcher.waiting == 12)
    gate.set()
    for thread in first + others:
        thread.join(timeout=20)
    assert results == {i: i * 10 for i in range(13)}
    assert [len(c) for c in calls] == [1, 8, 4]  # bounded by max_batch, in arrival order
    assert sorted(i for c in calls[1:] for i in c) == list(range(1, 13))


def test_an_error_reaches_every_caller_of_its_batch_and_the_next_batch_still_runs() -> None:
    gate = threading.Event()
    calls = 0

    def run(items: list[str]) -> list[str]:
        nonlocal calls
        calls += 1
        if calls == 1:
            assert gate.wait(20)
            return [s.upper() for s in items]
        if calls == 2:
            raise RuntimeError("model crashed")
        return [s.upper() for s in items]

    batcher = MicroBatcher(run, window_s=0)
    outcomes: dict[int, str] = {}

    def ask(i: int) -> None:
        try:
            outcomes[i] = batcher.submit(f"q{i}")
        except RuntimeError as exc:
            outcomes[i] = f"error: {exc}"

    threads = run_in_threads(1, ask)
    wait_for(lambda: calls == 1)
    threads += run_in_threads(4, lambda i: ask(i + 1))
    wait_for(lambda: batcher.waiting == 4)
    gate.set()
    for thread in threads:
        thread.join(timeout=20)
    assert outcomes == {0: "Q0", 1: "error: model crashed", 2: "error: model crashed", 3: "error: model crashed",
                        4: "error: model crashed"}
    assert batcher.submit("again") == "AGAIN"


def test_with_two_leaders_a_second_call_runs_while_the_first_is_blocked_and_equal_items_each_get_theirs() -> None:
    gate = threading.Event()
    calls: list[list[str]] = []
    lock = threading.Lock()

    def run(items: list[str]) -> list[str]:
        with lock:
            calls.append(list(items))
            first = len(calls) == 1
        if first:
            assert gate.wait(20)  # the second call must run (and return) while this one is blocked
        return [s.upper() for s in items]

    batcher = MicroBatcher(run, max_batch=8, window_s=0, max_leaders=2)
    results: dict[int, str] = {}
    first = run_in_threads(1, lambda i: results.__setitem__(0, batcher.submit("same")))
    wait_for(lambda: calls)
    others = run_in_threads(5, lambda i: results.__setitem__(i + 1, batcher.submit("same")))
    wait_for(lambda: len(results) == 5)  # all five answered by the second leader's call(s) meanwhile
    assert 0 not in results
    gate.set()
    for thread in first + others:
        thread.join(timeout=20)
    assert results == {i: "SAME" for i in range(6)}
    assert sum(len(c) for c in calls) == 6


@pytest.fixture(scope="module")
def embedder(tmp_path_factory: pytest.TempPathFactory) -> MiniLMEmbedder:
    return MiniLMEmbedder(cache_dir=tmp_path_factory.mktemp("models"))


QUERIES = ["how long do I have to return boots?", "do you ship abroad", "hi",
           "what does the warranty on the tent cover, and is zipper damage from normal use included?"]


def test_concurrent_queries_share_model_calls_and_get_their_own_vectors(embedder: MiniLMEmbedder) -> None:
    def weight(token: int) -> float:
        return 1.0 + token % 5

    alone = [embedder.embed_query_weighted(q, weight) for q in QUERIES]
    plain_alone = [embedder.embed_query(q) for q in QUERIES]
    calls_before = embedder.queries.stats.calls
    got: dict[int, tuple[list[float], list[float]]] = {}
    plain: dict[int, list[float]] = {}
    barrier = threading.Barrier(24, timeout=20)

    def ask(i: int) -> None:
        barrier.wait()
        if i % 2:
            got[i] = embedder.embed_query_weighted(QUERIES[i % 4], weight)
        else:
            plain[i] = embedder.embed_query(QUERIES[i % 4])

    for thread in run_in_threads(24, ask):
        thread.join(timeout=60)
    assert len(got) + len(plain) == 24
    for i, vectors in got.items():
        assert vectors == alone[i % 4]
    for i, vector in plain.items():
        assert vector == plain_alone[i % 4]
    assert embedder.queries.stats.calls - calls_before < 24
    assert embedder.queries.stats.largest > 1


def test_a_query_embeds_as_its_document_does(embedder: MiniLMEmbedder) -> None:
    documents = embedder.embed_documents(QUERIES)
    for query, document in zip(QUERIES, documents, strict=True):
        assert embedder.embed_query(query) == pytest.approx(document, abs=1e-6)


SENTENCES = [["You can return unworn boots within 30 days."], ["Sale items are final.", "We ship to 30 countries."],
             ["Gift cards never expire, have no fees and can be used online and in stores, in any country we "
              "ship to, for anything but other gift cards."]]


def test_sentences_get_exactly_their_documents_vectors_in_the_query_calls(embedder: MiniLMEmbedder) -> None:
    """The grounding check's reply sentences go with concurrent queries but keep `embed_documents`' vectors (its
    float32 pooling, not the query's float64 one), bit for bit, whatever they share a call with."""
    documents = [embedder.embed_documents(texts) for texts in SENTENCES]
    queries = [embedder.embed_query(q) for q in QUERIES]
    calls_before = embedder.queries.stats.calls
    got: dict[int, list[list[float]]] = {}
    asked: dict[int, list[float]] = {}
    barrier = threading.Barrier(24, timeout=20)

    def ask(i: int) -> None:
        barrier.wait()
        if i % 2:
            got[i] = embedder.embed_sentences(SENTENCES[i % 3])
        else:
            asked[i] = embedder.embed_query(QUERIES[i % 4])

    for thread in run_in_threads(24, ask):
        thread.join(timeout=60)
    assert len(got) + len(asked) == 24
    for i, vectors in got.items():
        assert vectors == documents[i % 3]
    for i, vector in asked.items():
        assert vector == queries[i % 4]
    assert embedder.queries.stats.calls - calls_before < 24
    assert embedder.queries.stats.largest > 1


def test_many_sentences_go_to_the_documents_path(embedder: MiniLMEmbedder) -> None:
    texts = [f"Order {i} ships within {i + 1} days." for i in range(9)]
    calls_before = embedder.queries.stats.calls
    assert embedder.embed_sentences(texts) == embedder.embed_documents(texts)
    assert embedder.queries.stats.calls == calls_before  # more than a query batch: not in the queries' calls
    assert embedder.embed_sentences([]) == []
