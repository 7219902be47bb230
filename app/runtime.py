"""The composition root: the one place that picks implementations from settings and wires them.

Embedded mode (nothing configured) gets SQLite, the in-process bus, qdrant-edge, a local object store and the
offline composer. Each scale-out variable swaps in one real service. Everything is created lazily and cached per
process; `reset_caches()` is for tests that change the environment.
"""

from __future__ import annotations

import contextlib
import gc
import threading
from collections.abc import Callable
from functools import lru_cache
from typing import TYPE_CHECKING, Generic, TypeVar

from app.config import get_settings

if TYPE_CHECKING:
    from app.bus.base import Bus
    from app.conversations.push import Push
    from app.providers.embeddings.base import Embedder, SparseEncoder
    from app.providers.llm.router import LLMRouter
    from app.providers.storage.base import ObjectStore
    from app.providers.vectors.base import VectorStore
    from app.ratelimit import RateLimiter

T = TypeVar("T")


class _BuiltOnce(Generic[T]):
    """`lru_cache` for a builder that must run once even when two threads ask at the same moment (lru_cache
    alone builds twice then; a second qdrant-edge store on the same folder fails on its lock)."""

    def __init__(self, build: Callable[[], T]) -> None:
        self._cached = lru_cache(build)
        self._lock = threading.Lock()
        self.cache_info = self._cached.cache_info
        self.cache_clear = self._cached.cache_clear

    def __call__(self) -> T:
        with self._lock:
            return self._cached()


@lru_cache
def get_bus() -> Bus:
    settings = get_settings()
    if settings.redis_url:
        from app.bus.redis_streams import RedisStreamsBus

        return RedisStreamsBus(
            settings.redis_url, namespace=settings.bus_namespace, maxlen=settings.bus_stream_maxlen
        )
    from app.bus.memory import MemoryBus

    return MemoryBus(maxlen=settings.bus_stream_maxlen)


@lru_cache
def get_push() -> Push:
    """Wake-ups for open widget streams: in-process embedded, Redis pub/sub in scale-out."""
    settings = get_settings()
    if settings.redis_url:
        from app.conversations.push import RedisPush

        return RedisPush(settings.redis_url, namespace=settings.bus_namespace)
    from app.conversations.push import LocalPush

    return LocalPush()


@_BuiltOnce  # one model and one query batcher per process, however many workers ask first
def get_embedder() -> Embedder:
    from app.providers.embeddings.minilm import MiniLMEmbedder

    settings = get_settings()
    return MiniLMEmbedder(cache_dir=settings.home_dir / "models", batch_size=settings.embed_batch_size)


@lru_cache
def get_sparse_encoder() -> SparseEncoder:
    from app.providers.embeddings.sparse import TermFrequencyEncoder

    return TermFrequencyEncoder()


@_BuiltOnce
def get_vector_store() -> VectorStore:
    settings = get_settings()
    dim = get_embedder().dim
    if settings.qdrant_url:
        from app.providers.vectors.qdrant_server import QdrantServerStore

        return QdrantServerStore(url=settings.qdrant_url, api_key=settings.qdrant_api_key, dim=dim)
    from app.files import private_dir
    from app.providers.vectors.edge import EdgeVectorStore

    return EdgeVectorStore(private_dir(settings.home_dir / "vectors"), dim=dim)


@lru_cache
def get_object_store() -> ObjectStore:
    settings = get_settings()
    if settings.s3_bucket:
        from app.providers.storage.s3 import S3ObjectStore

        return S3ObjectStore(bucket=settings.s3_bucket, endpoint_url=settings.s3_endpoint_url)
    from app.providers.storage.local import LocalObjectStore

    return LocalObjectStore(settings.home_dir / "objects")


@lru_cache
def get_rate_limiter() -> RateLimiter:
    from app.ratelimit import RateLimiter

    return RateLimiter.from_settings(get_settings())


@lru_cache
def get_llm_client() -> LLMRouter:
    """The process's LLM router (fallbacks, deadline, breakers; their state is this process's own)."""
    from app.providers.llm.openai_client import OpenAILLMClient
    from app.providers.llm.router import LLMRouter

    return LLMRouter.from_settings(OpenAILLMClient())


def tune_gc() -> None:
    """For long-lived server processes, once start-up is done: move the start-up heap (modules, models, the
    embedding model) out of the cyclic GC's reach and collect the young generation less often. Full collections
    walking that heap were the webhook path's p99 (40-114 ms -> 20-26 ms at 500 req/s; docs/benchmarks.md)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)


def reset_caches() -> None:
    from app import db

    for cached in (get_bus, get_push, get_vector_store, get_object_store, get_rate_limiter):
        if cached.cache_info().currsize:
            with contextlib.suppress(Exception):  # best effort on teardown
                cached().close()
    from gateways.common import forget_accounts  # routing cache of the gateways

    forget_accounts()
    from app.knowledge import termstats

    termstats.clear_cache()
    for fn in (get_settings, get_bus, get_push, get_embedder, get_sparse_encoder, get_vector_store, get_object_store,
               get_llm_client, get_rate_limiter, db.get_engine, db.get_sessionmaker):
        fn.cache_clear()
