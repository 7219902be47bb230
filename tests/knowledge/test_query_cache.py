"""The query-embedding cache (app/knowledge/query_cache.py) with the real MiniLM model behind a counter of its
query calls, and retrieval with it on and off against the embedded stores."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
from sqlalchemy.orm import Session

from app import metrics
from app.bootstrap import container
from app.knowledge.query_cache import QueryCache
from app.knowledge.retrieval import Retriever
from app.knowledge.service import ingest_paths
from app.knowledge.termstats import TermStats, collect
from app.providers.embeddings.base import TokenWeightingEmbedder
from app.providers.embeddings.minilm import MiniLMEmbedder
from tests.bus.conftest import wait_for
from tests.knowledge.test_termstats import CORPUS


class CountingEmbedder:
    """The real model; `calls` counts the queries it embedded."""

    def __init__(self, inner: MiniLMEmbedder) -> None:
        self.inner, self.dim, self.name = inner, inner.dim, inner.name
        self.calls = 0

    def embed_documents(self, texts: Sequence[str]) -> list[list[float]]:
        return self.inner.embed_documents(texts)

    def embed_query(self, text: str) -> list[float]:
        self.calls += 1
        return self.inner.embed_query(text)

    def tokens(self, texts: Sequence[str]) -> list[list[int]]:
        return self.inner.tokens(texts)

    def embed_query_weighted(self, text: str, weight: Callable[[int], float]) -> tuple[list[float], list[float]]:
        self.calls += 1
        return self.inner.embed_query_weighted(text, weight)


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> MiniLMEmbedder:
    return MiniLMEmbedder(cache_dir=tmp_path_factory.mktemp("models"))


@pytest.fixture
def embedder(model: MiniLMEmbedder) -> CountingEmbedder:
    counting = CountingEmbedder(model)
    assert isinstance(counting, TokenWeightingEmbedder)
    return counting


@pytest.fixture(scope="module")
def stats(model: MiniLMEmbedder) -> TermStats:
    collected = collect(model, CORPUS)
    assert collected is not None
    return collected


def lookups(result: str) -> float:
    return metrics.REGISTRY.get_sample_value("switchboard_query_embeddings_total", {"result": result}) or 0.0


def test_a_repeated_question_is_embedded_once_however_it_is_cased_or_spaced(
    embedder: CountingEmbedder, stats: TermStats
) -> None:
    cache = QueryCache(16)
    hits, misses = lookups("hit"), lookups("miss")
    first = cache.query_vectors(embedder, "acme", "Is there stigma around COVID?", stats, 1)
    again = cache.query_vectors(embedder, "acme", "  is there  stigma around covid ?", stats, 1)
    assert embedder.calls == 1
    assert again == first == embedder.inner.embed_query_weighted("Is there stigma around COVID?", stats.weight)
    assert (cache.hits, cache.misses) == (1, 1)
    assert (lookups("hit") - hits, lookups("miss") - misses) == (1, 1)
    again[0][0] = 99.0  # each caller gets lists of its own
    assert cache.query_vectors(embedder, "acme", "is there stigma around covid?", stats, 1) == first
    assert embedder.calls == 1
    assert cache.query_vectors(embedder, "acme", "Is there stigma around COVID-19?", stats, 1) != first
    assert embedder.calls == 2


def test_tenants_never_share_an_entry(embedder: CountingEmbedder, stats: TermStats) -> None:
    cache = QueryCache(16)
    for tenant in ("acme", "globex", "acme", "globex"):
        cache.query_vectors(embedder, tenant, "How long do refunds take?", stats, 1)
    assert embedder.calls == 2 and len(cache) == 2
    assert (cache.hits, cache.misses) == (2, 2)


def test_the_weighted_query_is_per_pack_version_and_the_plain_one_is_not(
    embedder: CountingEmbedder, stats: TermStats
) -> None:
    cache = QueryCache(16)
    one = cache.query_vectors(embedder, "acme", "stigma", stats, 1)
    cache.query_vectors(embedder, "acme", "stigma", stats, 2)
    assert embedder.calls == 2
    plain = cache.query_vectors(embedder, "acme", "stigma", None, 1)
    assert cache.query_vectors(embedder, "acme", "stigma", None, 2) == plain == (one[0], None)
    assert embedder.calls == 3


def test_the_oldest_question_goes_first_and_the_size_is_bounded(
    embedder: CountingEmbedder, stats: TermStats
) -> None:
    cache = QueryCache(2)
    for question in ("refunds", "shipping", "refunds", "warranty"):  # "refunds" was stored first, hit or not
        cache.query_vectors(embedder, "acme", question, stats, 1)
    assert len(cache) == 2 and embedder.calls == 3
    cache.query_vectors(embedder, "acme", "shipping", stats, 1)
    assert embedder.calls == 3
    cache.query_vectors(embedder, "acme", "refunds", stats, 1)
    assert embedder.calls == 4 and len(cache) == 2


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_an_entry_lives_its_time_to_live_from_when_it_was_stored_hit_or_not(
    embedder: CountingEmbedder, stats: TermStats
) -> None:
    """A query's vectors come from a customer's words: asked again or not, they leave memory once their time is up,
    so they never outlive the customer's erasure or retention by more than that, in any process."""
    clock = Clock()
    cache = QueryCache(16, ttl_s=600, clock=clock)
    first = cache.query_vectors(embedder, "acme", "refunds", stats, 1)
    clock.now += 599
    assert cache.query_vectors(embedder, "acme", "refunds", stats, 1) == first and embedder.calls == 1
    cache.query_vectors(embedder, "acme", "shipping", stats, 1)
    clock.now += 1  # "refunds" is 600 s old, "shipping" 1 s
    cache.query_vectors(embedder, "globex", "warranty", stats, 1)
    assert len(cache) == 2  # "refunds" left memory at the next question, before it was asked again
    assert cache.query_vectors(embedder, "acme", "refunds", stats, 1) == first and embedder.calls == 4
    with pytest.raises(ValueError, match="more than 0 seconds"):
        QueryCache(16, ttl_s=0)


def test_forgetting_a_tenant_drops_its_entries_only(embedder: CountingEmbedder, stats: TermStats) -> None:
    cache = QueryCache(16)
    for tenant, question in (("acme", "refunds"), ("acme", "shipping"), ("globex", "refunds")):
        cache.query_vectors(embedder, tenant, question, stats, 1)
    cache.forget_tenant("acme")
    assert len(cache) == 1
    cache.query_vectors(embedder, "globex", "refunds", stats, 1)
    assert embedder.calls == 3
    cache.query_vectors(embedder, "acme", "refunds", stats, 1)
    assert embedder.calls == 4


def test_size_zero_turns_the_cache_off(embedder: CountingEmbedder, stats: TermStats) -> None:
    cache = QueryCache(0)
    for _ in range(3):
        cache.query_vectors(embedder, "acme", "refunds", stats, 1)
    assert embedder.calls == 3 and len(cache) == 0 and (cache.hits, cache.misses) == (0, 0)
    with pytest.raises(ValueError, match="0 \\(off\\) or more"):
        QueryCache(-1)


def test_retrieval_gives_the_same_passages_with_the_cache_on_and_off(db: Session, pack: Path) -> None:
    report = ingest_paths(db, "acme", [pack], deps=container().knowledge)
    db.commit()
    counting = CountingEmbedder(container().embedder)  # type: ignore[arg-type]
    stores = (container().sparse_encoder, container().vector_store)
    cached, uncached = Retriever(counting, *stores, QueryCache(64)), Retriever(container().embedder, *stores)
    where = {"pack_version": report.pack_version}
    questions = ["is there a warranty on zippers", "How long do refunds take?", "do you ship to canada"]
    for _ in range(2):
        for question in questions:
            on, off = cached("acme", question, filters=where), uncached("acme", question, filters=where)
            assert on and [(p.chunk_id, p.score, p.rank) for p in on] == [(p.chunk_id, p.score, p.rank) for p in off]
    assert counting.calls == len(questions)
    assert container().retriever.query_cache is not None  # the process's retriever has one (EMBED_QUERY_CACHE)


def test_an_idle_process_keeps_no_entry_past_its_time(embedder: CountingEmbedder, stats: TermStats) -> None:
    """With no question after it, an entry still leaves memory once it expires (a customer's words must not sit
    in an idle replica), and the timer stops once nothing is kept."""
    cache = QueryCache(size=8, ttl_s=0.2)
    cache.query_vectors(embedder, "acme", "where is my order?", stats, 1)
    cache.query_vectors(embedder, "acme", "do you ship abroad?", stats, 1)
    assert len(cache) == 2
    wait_for(lambda: len(cache) == 0)  # no call to the cache meanwhile
    wait_for(lambda: cache._sweep is None)


def test_the_sweep_never_comes_sooner_than_a_tenth_of_the_time_to_live_and_close_stops_it(
        embedder: CountingEmbedder, stats: TermStats) -> None:
    """A steady stream of questions expires an entry every moment: a sweep per entry started a thread per
    question. The sweep waits at least a tenth of the time to live after the one before."""
    now = [0.0]
    cache = QueryCache(size=64, ttl_s=600.0, clock=lambda: now[0])
    cache.query_vectors(embedder, "acme", "where is my order?", stats, 1)
    first = cache._sweep
    assert first is not None and first.interval == 600.0  # when the entry expires
    first.cancel()
    now[0] = 599.999  # the oldest entry expires in a millisecond
    cache._swept()  # as the timer would, had it fired now
    again = cache._sweep
    assert again is not None and again is not first and again.interval == 60.0
    cache.close()
    again.join(5)
    assert not again.is_alive() and cache._sweep is None
