"""A thin compatibility layer over the process's container (app/bootstrap.py), for code not yet handed its
services explicitly: each `get_*` returns the container's. No state lives here."""

from __future__ import annotations

import gc
from typing import TYPE_CHECKING

from app.bootstrap import container

if TYPE_CHECKING:
    from app.assistant.pii_ner import PiiNer
    from app.bus.base import Bus
    from app.conversations.push import Push
    from app.providers.embeddings.base import Embedder, SparseEncoder
    from app.providers.llm.router import LLMRouter
    from app.providers.storage.base import ObjectStore
    from app.providers.vectors.base import VectorStore
    from app.ratelimit import RateLimiter
    from app.tenants.quota import QuotaGate


def get_bus() -> Bus:
    return container().bus


def get_push() -> Push:
    return container().push


def get_embedder() -> Embedder:
    return container().embedder


def get_ingest_embedder() -> Embedder:
    return container().ingest_embedder


def get_sparse_encoder() -> SparseEncoder:
    return container().sparse_encoder


def get_vector_store() -> VectorStore:
    return container().vector_store


def get_object_store() -> ObjectStore:
    return container().object_store


def get_rate_limiter() -> RateLimiter:
    return container().rate_limiter


def get_pii_ner() -> PiiNer:
    """Names and addresses in PII detection, per tenant policy (app/assistant/pii_ner.py)."""
    return container().pii_ner


def get_quota() -> QuotaGate:
    return container().quota


def get_llm_client() -> LLMRouter:
    """The process's LLM router (fallbacks, deadline, breakers; their state is this process's own)."""
    return container().llm_client


def tune_gc() -> None:
    """For long-lived server processes, once start-up is done: move the start-up heap (modules, models, the
    embedding model) out of the cyclic GC's reach and collect the young generation less often. Full collections
    walking that heap were the webhook path's p99 (40-114 ms -> 20-26 ms at 500 req/s; docs/benchmarks.md)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)


def reset_caches() -> None:
    """For tests that change the environment: close the process's container and forget the settings, the
    database engine and the term statistics, so the next use builds everything from the new environment."""
    from app import bootstrap, db, keys
    from app.config import get_settings
    from app.knowledge import termstats

    bootstrap.reset()
    termstats.clear_cache()
    keys.forget()
    for fn in (get_settings, db.get_engine, db.get_sessionmaker):
        fn.cache_clear()
