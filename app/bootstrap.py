"""The composition root: builds the process's object graph once, from settings, as one `Container`.

Embedded mode (nothing configured) gets SQLite, the in-process bus, qdrant-edge, a local object store and the
offline composer; each scale-out variable swaps in one real service. Services are built on first use (the
embedder loads a model, qdrant-edge locks its folder) and closed with the container. The edges (gateways/,
workers/) join through app/plugins.py: their channel specs, routers, job queue and roles are built here too,
and any state they keep for the process's lifetime lives in `Container.shared`, never in a module.

Entry points (`serve`, `orchestrator`, `worker`, `gateway`, CLI commands) call `container()` once and pass what
each part needs: request handlers read the app's through `app.api.services.Services`, consumers and jobs are built
with the services they use. Nothing else looks the container up (tests/test_composition_root.py keeps it so).
The container owns the database (`Container.database`); installing one makes its settings and its database the
module-level defaults (`get_settings()`, `db.session_scope()`), so tests build their own graph from a `Settings`
object, `Container(settings, bus=MemoryBus(), llm_client=fake)`, install it (tests/conftest.py) and touch no
environment variable.
"""

from __future__ import annotations

import contextlib
import gc
import os
import threading
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime
from functools import cache
from typing import TYPE_CHECKING, Any, TypeVar

from app import config, db
from app.channels import ChannelRegistry, Sender
from app.config import Settings, get_settings
from app.models import utcnow
from app.plugins import Plugins, load

if TYPE_CHECKING:
    from app.assistant.grounding import GroundingChecker
    from app.assistant.passage_units import PassageCache
    from app.assistant.pii_ner import PiiNer
    from app.bus.base import Bus
    from app.conversations.push import Push
    from app.intake import Intake
    from app.jobs import JobQueue
    from app.knowledge.indexing import Deps
    from app.knowledge.retrieval import Retriever
    from app.providers.embeddings.base import Embedder, SparseEncoder
    from app.providers.llm.router import LLMRouter
    from app.providers.storage.base import ObjectStore
    from app.providers.vectors.base import VectorStore
    from app.ratelimit import RateLimiter
    from app.tenants.quota import QuotaGate

T = TypeVar("T")


@cache
def plugins() -> Plugins:
    """The installed edges' registrations (entry points are read once per process)."""
    return load()


class Container:
    """Every long-lived object of one process. Pass a service as a keyword to use it instead of building one
    (a fake in tests): `Container(settings, bus=MemoryBus(), llm_client=fake)`."""

    def __init__(self, settings: Settings | None = None, *, edges: Plugins | None = None,
                 clock: Callable[[], datetime] = utcnow, **given: Any) -> None:
        self.settings = settings or get_settings()
        self.plugins = edges or plugins()
        self.clock = clock
        self._built: dict[str, Any] = dict(given)
        self._lock = threading.RLock()  # one build per service, however many threads ask first

    def _get(self, name: str, build: Callable[[], T]) -> T:
        with self._lock:
            if name not in self._built:
                self._built[name] = build()
            return self._built[name]

    def built(self, name: str) -> Any | None:
        """The service if this process has built it (a hook that must not build one just to reach it), else None."""
        with self._lock:
            return self._built.get(name)

    def use(self, name: str, service: Any) -> Any:
        """Swap in one service (a test that changed a setting after start-up); returns the old one, not closed."""
        with self._lock:
            old = self._built.get(name)
            self._built[name] = service
            return old

    def shared(self, name: str, build: Callable[[], T]) -> T:
        """State an edge keeps for the process's lifetime (a routing cache, a send limiter), owned here."""
        return self._get(f"edge:{name}", build)

    def forget_shared(self, name: str) -> None:
        """Drop an edge's state (a cache the core knows to be stale); rebuilt on next use."""
        with self._lock:
            self._built.pop(f"edge:{name}", None)

    # ---------------------------------------------------------------------------------------------- the core

    @property
    def database(self) -> db.Database:
        """The engine and sessionmaker of these settings' database (the process's, once installed)."""
        return self._get("database", lambda: db.Database(self.settings))

    @property
    def bus(self) -> Bus:
        def build() -> Bus:
            s = self.settings
            if s.redis_url:
                from app.bus.redis_streams import RedisStreamsBus

                return RedisStreamsBus(s.redis_url, namespace=s.bus_namespace, maxlen=s.bus_stream_maxlen)
            from app.bus.memory import MemoryBus

            return MemoryBus(maxlen=s.bus_stream_maxlen)
        return self._get("bus", build)

    @property
    def push(self) -> Push:
        """Wake-ups for open widget streams: in-process embedded, Redis pub/sub in scale-out."""
        def build() -> Push:
            from app.conversations.push import LocalPush, RedisPush

            s = self.settings
            return RedisPush(s.redis_url, namespace=s.bus_namespace) if s.redis_url else LocalPush()
        return self._get("push", build)

    @property
    def embedder(self) -> Embedder:
        def build() -> Embedder:
            from app.providers.embeddings.minilm import MiniLMEmbedder

            s = self.settings
            return MiniLMEmbedder(cache_dir=s.home_dir / "models", batch_size=s.embed_batch_size)
        return self._get("embedder", build)

    @property
    def ingest_embedder(self) -> Embedder:
        """The embedder knowledge ingestion uses: the answering one, or, when INGEST_MAX_TOKENS truncates
        elsewhere, a second instance of the same model truncating there (same name: its tokens and vectors are
        the same model's, so term statistics and searches are unchanged)."""
        tokens = self.settings.ingest_max_tokens
        if tokens == 256:
            return self.embedder

        def build() -> Embedder:
            from app.providers.embeddings.minilm import MiniLMEmbedder

            s = self.settings
            return MiniLMEmbedder(cache_dir=s.home_dir / "models", batch_size=s.embed_batch_size, max_tokens=tokens)
        return self._get("ingest_embedder", build)

    @property
    def sparse_encoder(self) -> SparseEncoder:
        def build() -> SparseEncoder:
            from app.providers.embeddings.sparse import TermFrequencyEncoder

            return TermFrequencyEncoder()
        return self._get("sparse_encoder", build)

    @property
    def vector_store(self) -> VectorStore:
        def build() -> VectorStore:
            s, dim = self.settings, self.embedder.dim
            if s.qdrant_url:
                from app.providers.vectors.qdrant_server import QdrantServerStore

                return QdrantServerStore(url=s.qdrant_url, api_key=s.qdrant_api_key, dim=dim)
            from app.files import private_dir
            from app.providers.vectors.edge import EdgeVectorStore

            return EdgeVectorStore(private_dir(s.home_dir / "vectors"), dim=dim)
        return self._get("vector_store", build)

    @property
    def object_store(self) -> ObjectStore:
        def build() -> ObjectStore:
            s = self.settings
            if s.s3_bucket:
                from app.providers.storage.s3 import S3ObjectStore

                return S3ObjectStore(bucket=s.s3_bucket, endpoint_url=s.s3_endpoint_url)
            from app.providers.storage.local import LocalObjectStore

            return LocalObjectStore(s.home_dir / "objects")
        return self._get("object_store", build)

    @property
    def rate_limiter(self) -> RateLimiter:
        def build() -> RateLimiter:
            from app.ratelimit import RateLimiter

            return RateLimiter.from_settings(self.settings)
        return self._get("rate_limiter", build)

    @property
    def quota(self) -> QuotaGate:
        """Plans and usage per tenant, read at most every QUOTA_CACHE_S (app/tenants/quota.py)."""
        def build() -> QuotaGate:
            from app.tenants.quota import QuotaGate

            return QuotaGate(self.rate_limiter, default_plan=self.settings.default_plan,
                             cache_s=self.settings.quota_cache_s)
        return self._get("quota", build)

    @property
    def llm_client(self) -> LLMRouter:
        """The LLM router (fallbacks, deadline, breakers; their state is this process's own)."""
        def build() -> LLMRouter:
            from app.providers.llm.openai_client import OpenAILLMClient
            from app.providers.llm.router import LLMRouter

            return LLMRouter.from_settings(OpenAILLMClient(), self.settings)
        return self._get("llm_client", build)

    @property
    def pii_ner(self) -> PiiNer:
        """Names and addresses in PII detection (the optional `[ner]` extra), per tenant policy; the model loads
        on first use (app/assistant/pii_ner.py)."""
        def build() -> PiiNer:
            from app.assistant.pii_ner import PiiNer

            return PiiNer(self.settings)
        return self._get("pii_ner", build)

    @property
    def grounding(self) -> GroundingChecker:
        """The LLM drafts' grounding check: the answering embedder, one passage cache for the process; replies'
        sentences share model calls with concurrent queries where the embedder can."""
        def build() -> GroundingChecker:
            from app.assistant.grounding import GroundingChecker
            from app.assistant.passage_units import StoredVectors
            from app.providers.embeddings.base import SentenceEmbedder

            embedder = self.embedder
            sentences = embedder.embed_sentences if isinstance(embedder, SentenceEmbedder) else None
            # An answering process of embedded `serve` is given `serve`'s passage cache (app/answerers.py); every
            # process keeps passages' vectors in the database, per tenant and model.
            return GroundingChecker(embedder.embed_documents, embed_sentences=sentences,
                                    shared=self._built.get("passage_cache"),
                                    store=StoredVectors(f"{embedder.name}/{embedder.dim}"))
        return self._get("grounding", build)

    @property
    def passage_cache(self) -> PassageCache:
        """Embedded `serve`'s passage units, shared by its answering processes (app/answerers.py)."""
        def build() -> PassageCache:
            from app.assistant.passage_units import PassageCache

            return PassageCache(4096)
        return self._get("passage_cache", build)

    @property
    def retriever(self) -> Retriever:
        """Tenant-filtered hybrid search over the knowledge (app/knowledge/retrieval.py)."""
        def build() -> Retriever:
            from app.knowledge.query_cache import QueryCache
            from app.knowledge.retrieval import Retriever

            return Retriever(self.embedder, self.sparse_encoder, self.vector_store,
                             QueryCache(self.settings.embed_query_cache, self.settings.embed_query_cache_ttl_s))
        return self._get("retriever", build)

    @property
    def knowledge(self) -> Deps:
        """What knowledge ingestion writes with: the ingest embedder, the stores, the bus for its progress."""
        def build() -> Deps:
            from app.knowledge.indexing import Deps

            return Deps(embedder=self.ingest_embedder, sparse=self.sparse_encoder, vectors=self.vector_store,
                        objects=self.object_store, bus=self.bus,
                        by_passage=self.settings.ingest_dedupe == "passage",
                        threads=_ingest_threads(self.settings.ingest_threads, default=1))
        return self._get("knowledge", build)

    def ingestion(self, *, dedicated: bool) -> Deps:
        """`knowledge` for one ingestion; `dedicated`: the process does nothing else meanwhile (`switchboard
        ingest` with no server running, the worker), so unless INGEST_THREADS says otherwise every core embeds."""
        deps = self.knowledge
        if not dedicated or self.settings.ingest_threads is not None:
            return deps
        return replace(deps, threads=os.cpu_count() or 1)

    @property
    def intake(self) -> Intake:
        """Accept -> enqueue for every channel (app/intake.py), on this process's bus and inbound batcher."""
        def build() -> Intake:
            from app.conversations.batching import InboundBatcher
            from app.intake import Intake

            return Intake(self.bus, self.push, InboundBatcher(self.bus))
        return self._get("intake", build)

    # ------------------------------------------------------------------------------------------- the edges

    @property
    def channels(self) -> ChannelRegistry:
        def build() -> ChannelRegistry:
            registry = ChannelRegistry()
            for factory in self.plugins.channels:
                for spec in factory(self):
                    registry.add(spec)
            return registry
        return self._get("channels", build)

    @property
    def senders(self) -> dict[str, Sender]:
        return self._get("senders", lambda: {s.name: s.sender for s in self.channels.specs() if s.sender})

    @property
    def job_queue(self) -> JobQueue:
        def build() -> JobQueue:
            if self.plugins.job_queue is None:
                raise RuntimeError("no ingestion job queue is registered (workers/plugin.py)")
            return self.plugins.job_queue(self)
        return self._get("job_queue", build)

    @property
    def operator_token(self) -> str:
        """The bearer token of this embedded server's operator routes (the local CLI reads it from a file)."""
        import secrets

        return self._get("operator_token", lambda: secrets.token_urlsafe(32))

    def close(self) -> None:
        with self._lock:
            built, self._built = self._built, {}
        for service in built.values():
            close = getattr(service, "close", None)
            if callable(close):
                with contextlib.suppress(Exception):  # best effort on shutdown
                    close()
        for sender in (built.get("senders") or {}).values():
            close = getattr(sender, "close", None)
            if callable(close):
                with contextlib.suppress(Exception):
                    close()


_current: Container | None = None
_current_lock = threading.Lock()


def _make_current(new: Container | None) -> Container | None:
    """`new` as the process's container, its settings and database the module-level defaults
    (`get_settings()`, `db.session_scope()`); the environment's again when None."""
    global _current
    old, _current = _current, new
    config.install(new.settings if new else None)
    db.install(new.database if new else None)
    return old


def container() -> Container:
    """The process's container, built from the environment's settings on first use."""
    with _current_lock:
        built = _current
        if built is None:
            built = Container(config.from_environment(), database=db.from_environment())
            _make_current(built)
        return built


def install(new: Container | None) -> Container | None:
    """Make `new` the process's container, with its settings and its database (tests; an entry point that built
    its own). Returns the old one, not closed."""
    with _current_lock:
        return _make_current(new)


def reset() -> None:
    """Close the process's container; the next `container()` builds a new one from the settings."""
    old = install(None)
    if old is not None:
        old.close()


def _ingest_threads(configured: int | None, *, default: int) -> int:
    """INGEST_THREADS as a thread count: unset -> `default`, 0 -> one per core."""
    if configured is None:
        return default
    return configured or os.cpu_count() or 1


def tune_gc() -> None:
    """For long-lived server processes, once start-up is done: move the start-up heap (modules, models, the
    embedding model) out of the cyclic GC's reach and collect the young generation less often. Full collections
    walking that heap were the webhook path's p99 (40-114 ms -> 20-26 ms at 500 req/s; docs/benchmarks.md)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)
