"""Settings: every knob comes from environment variables (or a `.env` file), documented in the README.

Embedded mode is what you get with no servers configured. Setting `DATABASE_URL`, `REDIS_URL`, `QDRANT_URL`
or `S3_BUCKET` switches that one part to its scale-out implementation; the code path is otherwise the same.
"""

from __future__ import annotations

import secrets
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


def _env(name: str) -> AliasChoices:
    """Accept both `SWITCHBOARD_NAME` and the conventional bare `NAME`."""
    return AliasChoices(f"SWITCHBOARD_{name}", name)


class Price(BaseModel):
    """What a million tokens cost, in the operator's currency."""

    model_config = ConfigDict(extra="forbid")

    input_per_1m: float = Field(ge=0)
    output_per_1m: float = Field(ge=0)


class OperatorLLM(BaseModel):
    """One of the operator's fallback LLM endpoints (LLM_FALLBACKS); trusted like LLM_BASE_URL."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,39}$")
    base_url: str = Field(min_length=1)
    model: str = Field(min_length=1)
    api_key: str | None = None
    timeout_s: float | None = Field(default=None, gt=0)
    max_retries: int | None = Field(default=None, ge=0, le=10)
    input_per_1m: float | None = Field(default=None, ge=0)
    output_per_1m: float | None = Field(default=None, ge=0)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", extra="ignore", populate_by_name=True)

    home: Path = Field(default=Path("~/.switchboard"), validation_alias=_env("HOME"))

    # Scale-out services; unset means the embedded implementation.
    database_url: str | None = Field(default=None, validation_alias=_env("DATABASE_URL"))
    # Postgres only: the non-owner role every new connection switches to (SET ROLE), so row-level security
    # applies (app/rls.py, docs/security.md#row-level-security). Empty: the connection keeps its login's role.
    database_app_role: str = Field(default="switchboard_app", pattern=r"^([a-z_][a-z0-9_]{0,62})?$",
                                   validation_alias=_env("DATABASE_APP_ROLE"))
    redis_url: str | None = Field(default=None, validation_alias=_env("REDIS_URL"))
    qdrant_url: str | None = Field(default=None, validation_alias=_env("QDRANT_URL"))
    qdrant_api_key: str | None = Field(default=None, validation_alias=_env("QDRANT_API_KEY"))
    s3_bucket: str | None = Field(default=None, validation_alias=_env("S3_BUCKET"))
    s3_endpoint_url: str | None = Field(default=None, validation_alias=_env("S3_ENDPOINT_URL"))

    # Default LLM for tenants that do not configure their own. Unset: the offline grounded composer answers.
    llm_base_url: str | None = Field(default=None, validation_alias=_env("LLM_BASE_URL"))
    llm_api_key: str | None = Field(default=None, validation_alias=_env("LLM_API_KEY"))
    llm_model: str = Field(default="gpt-4o-mini", validation_alias=_env("LLM_MODEL"))
    llm_timeout_s: float = Field(default=30.0, validation_alias=_env("LLM_TIMEOUT_S"))
    llm_max_retries: int = Field(default=2, validation_alias=_env("LLM_MAX_RETRIES"))
    # Resilience and routing (app/providers/llm/router.py). LLM_FALLBACKS: the operator's further endpoints, tried
    # in order after LLM_BASE_URL when it fails, as a JSON list of {"name", "base_url", "model", "api_key"?,
    # "timeout_s"?, "max_retries"?, "input_per_1m"?, "output_per_1m"?}. LLM_DEADLINE_S bounds one answer, every
    # provider and retry included. LLM_PRICES: {"<model>": {"input_per_1m": 0.15, "output_per_1m": 0.6}}, the
    # cost of a million prompt / completion tokens, recorded per call in `llm_calls`.
    llm_fallbacks: list[OperatorLLM] = Field(default_factory=list, validation_alias=_env("LLM_FALLBACKS"))
    llm_deadline_s: float = Field(default=60.0, gt=0, validation_alias=_env("LLM_DEADLINE_S"))
    llm_prices: dict[str, Price] = Field(default_factory=dict, validation_alias=_env("LLM_PRICES"))
    # Circuit breaker per provider (state per process): LLM_BREAKER_FAILURES consecutive failures, or a failure
    # rate of LLM_BREAKER_FAILURE_RATE over its last 20 calls (10 at least), open it for LLM_BREAKER_COOLDOWN_S;
    # then one probe call decides.
    llm_breaker_failures: int = Field(default=5, ge=1, validation_alias=_env("LLM_BREAKER_FAILURES"))
    llm_breaker_failure_rate: float = Field(default=0.5, gt=0, le=1, validation_alias=_env("LLM_BREAKER_FAILURE_RATE"))
    llm_breaker_cooldown_s: float = Field(default=30.0, gt=0, validation_alias=_env("LLM_BREAKER_COOLDOWN_S"))
    # Streamed replies: on channels that can show a reply as it is written (the web widget), stream the LLM's
    # answer to the visitor as drafts, at most one every WEBCHAT_DRAFT_INTERVAL_MS; a tenant can turn it off with
    # its `stream_replies` policy. The reply is final only after the checks on the whole answer.
    webchat_stream_replies: bool = Field(default=True, validation_alias=_env("WEBCHAT_STREAM_REPLIES"))
    webchat_draft_interval_ms: int = Field(default=100, ge=0, validation_alias=_env("WEBCHAT_DRAFT_INTERVAL_MS"))
    # Hosts (`name` or `name:port`) that tenant-set URLs may reach although they are loopback or private, e.g. a
    # local model server. Everything else a tenant sets must resolve to public addresses (app/netguard.py).
    outbound_allow_hosts: str | None = Field(default=None, validation_alias=_env("OUTBOUND_ALLOW_HOSTS"))

    # Keys (app/keys.py): encryption keys (Fernet; credentials at rest) and signing keys (tokens), each a
    # comma-separated list, newest first. SECRET_KEY is one key for both (older installs). None of them set: a
    # keyring file under `home`, created on first use and rotated by `switchboard keys rotate`.
    encryption_keys: str | None = Field(default=None, validation_alias=_env("ENCRYPTION_KEYS"))
    signing_keys: str | None = Field(default=None, validation_alias=_env("SIGNING_KEYS"))
    secret_key: str | None = Field(default=None, validation_alias=_env("SECRET_KEY"))
    public_base_url: str = Field(default="http://127.0.0.1:8080", validation_alias=_env("PUBLIC_BASE_URL"))
    # Signs people's access tokens (app/accounts/tokens.py) instead of the signing keys above: at least 32
    # characters. Unset: a sub-key derived from each signing key with HKDF (SHA-256, its own `info` label).
    token_key: str | None = Field(default=None, min_length=32, validation_alias=_env("TOKEN_KEY"))
    # Logins: an access token lasts ACCESS_TOKEN_TTL_S; a refresh token lasts REFRESH_TOKEN_TTL_S and is spent
    # by its first use (the new one starts a new period).
    access_token_ttl_s: int = Field(default=900, gt=0, validation_alias=_env("ACCESS_TOKEN_TTL_S"))
    refresh_token_ttl_s: int = Field(default=14 * 86_400, gt=0, validation_alias=_env("REFRESH_TOKEN_TTL_S"))
    # Argon2id cost of a password hash (memory in KiB, passes). Raising them rehashes each password at its
    # owner's next login. The defaults are argon2-cffi's (RFC 9106's low-memory profile).
    password_hash_memory_kib: int = Field(default=65_536, ge=8 * 4, validation_alias=_env("PASSWORD_HASH_MEMORY_KIB"))
    password_hash_time_cost: int = Field(default=3, ge=1, validation_alias=_env("PASSWORD_HASH_TIME_COST"))
    # Web chat visitor sessions (gateways/webchat/sessions.py): a token lasts WIDGET_SESSION_TTL_S; its holder can
    # renew it until WIDGET_SESSION_RENEW_GRACE_S after it expired, then the visitor starts a new conversation.
    widget_session_ttl_s: int = Field(default=86_400, gt=0, validation_alias=_env("WIDGET_SESSION_TTL_S"))
    widget_session_renew_grace_s: int = Field(
        default=7 * 86_400, ge=0, validation_alias=_env("WIDGET_SESSION_RENEW_GRACE_S")
    )

    # Operating (docs/operating.md). LOG_FORMAT: json, console, or auto (console on a terminal, else JSON);
    # LOG_LEVEL: the root level (unset: INFO for server roles, WARNING for one-shot CLI commands).
    log_format: Literal["auto", "json", "console"] = Field(default="auto", validation_alias=_env("LOG_FORMAT"))
    log_level: str | None = Field(default=None, validation_alias=_env("LOG_LEVEL"))
    # GET /metrics answers only with `Authorization: Bearer <METRICS_TOKEN>`; unset, it answers 404. METRICS_PORT
    # serves /metrics, without a token, on its own port bound to METRICS_ADDR (loopback unless set), from any
    # role, the orchestrator included: for a scraper on the same host or in the same pod.
    metrics_token: str | None = Field(default=None, min_length=16, validation_alias=_env("METRICS_TOKEN"))
    metrics_port: int | None = Field(default=None, ge=1, le=65535, validation_alias=_env("METRICS_PORT"))
    metrics_addr: str = Field(default="127.0.0.1", validation_alias=_env("METRICS_ADDR"))

    # Bus behaviour.
    bus_max_deliveries: int = Field(default=5, validation_alias=_env("BUS_MAX_DELIVERIES"))
    bus_claim_idle_ms: int = Field(default=30_000, validation_alias=_env("BUS_CLAIM_IDLE_MS"))
    bus_stream_maxlen: int = Field(default=100_000, validation_alias=_env("BUS_STREAM_MAXLEN"))
    bus_batch_size: int = Field(default=64, validation_alias=_env("BUS_BATCH_SIZE"))
    # How often the background loops mask raw PII past tenants' `pii_retention_days` (app/retention.py).
    retention_interval_s: float = Field(default=3600.0, gt=0, validation_alias=_env("RETENTION_INTERVAL_S"))
    # PII detection (app/assistant/pii.py): the regions whose national phone formats are read (ISO codes, comma
    # separated; numbers written with + need none), and names/street addresses through the optional `[ner]` extra
    # (app/assistant/pii_ner.py) for every tenant whose policy `pii_ner` does not turn it off.
    pii_phone_regions: str = Field(default="US,GB", validation_alias=_env("PII_PHONE_REGIONS"))
    pii_ner: bool = Field(default=False, validation_alias=_env("PII_NER"))
    pii_ner_model: str = Field(default="en_core_web_lg", validation_alias=_env("PII_NER_MODEL"))
    # Prefix of every Redis key the bus writes; lets several deployments (or test runs) share one Redis.
    bus_namespace: str = Field(default="sb", validation_alias=_env("BUS_NAMESPACE"))
    # The orchestrator (app/bus/concurrent.py): inbound messages one process handles at once (worker threads,
    # mostly waiting for the LLM; a conversation's messages still go one at a time, in order), and how many of
    # them one tenant may hold (unset: all but a fifth, 64 of 80), so a tenant whose LLM stalls leaves the rest to
    # the others while a lone busy tenant's burst of 64 is answered in one LLM round (docs/benchmarks.md). A
    # single-tenant deployment sets them equal. The database pool grows to match.
    orchestrator_concurrency: int = Field(default=80, ge=1, le=1024, validation_alias=_env("ORCHESTRATOR_CONCURRENCY"))
    orchestrator_tenant_concurrency: int | None = Field(
        default=None, ge=1, validation_alias=_env("ORCHESTRATOR_TENANT_CONCURRENCY")
    )
    # Of those, how many run at once (app/pacing.py): the others wait for the LLM or a model call, which hold no
    # slot, or queue for one in arrival order, so a burst's LLM calls start as each message is ready instead of all
    # late together. 0: no pacing (the GIL's round-robin). Unset: 2 with SQLite and the in-process bus, where a
    # handler's work is all CPU; 0 otherwise, since a handler's Postgres and Redis round trips are waits it would
    # hold its slot through (`pacing_slots`; docs/benchmarks.md, "Eighth pass").
    orchestrator_cpu_slots: int | None = Field(default=None, ge=0, le=1024,
                                               validation_alias=_env("ORCHESTRATOR_CPU_SLOTS"))
    # Embedded `serve`: answer in this many child processes instead of in `serve` itself, so answering uses more
    # than one core (app/answerers.py). 0 answers in `serve`'s own threads. Scale-out runs replicas of
    # `switchboard orchestrator` instead.
    answer_processes: int = Field(default=0, ge=0, le=64, validation_alias=_env("ANSWER_PROCESSES"))

    # Retrieval and answering.
    retrieval_top_k: int = Field(default=5, validation_alias=_env("RETRIEVAL_TOP_K"))
    history_turns: int = Field(default=6, validation_alias=_env("HISTORY_TURNS"))
    embed_batch_size: int = Field(default=16, validation_alias=_env("EMBED_BATCH_SIZE"))
    # Questions whose query embedding each process keeps, per tenant and pack version, the oldest out first
    # (app/knowledge/query_cache.py: ~6.5 KB each); 0 turns the cache off. Each is kept at most the TTL's seconds:
    # the vectors come from a customer's words, and must not outlive their erasure by more than that.
    embed_query_cache: int = Field(default=4096, ge=0, validation_alias=_env("EMBED_QUERY_CACHE"))
    embed_query_cache_ttl_s: float = Field(default=600.0, gt=0, le=86400,
                                           validation_alias=_env("EMBED_QUERY_CACHE_TTL_S"))
    # Threads that call the embedder at once during ingestion (app/knowledge/pipeline.py), each running one
    # onnxruntime thread (see app/providers/embeddings/minilm.py); 0 is one per core. Unset: one per core where
    # ingesting is all the process does (`switchboard ingest` with no server running, `switchboard worker`), one
    # in a process that also answers or serves HTTP, so customers keep the other cores (docs/benchmarks.md).
    ingest_threads: int | None = Field(default=None, ge=0, validation_alias=_env("INGEST_THREADS"))
    # Where ingestion truncates a chunk for its dense vector, in tokens (MiniLM takes at most 256 and was trained
    # on 128). 128 halves the embedder's work per chunk; chosen on the tuning halves of COVID-QA in four shapes
    # and of the long-documentation pack (docs/benchmarks.md). Below 256 ingestion loads its own copy of the model.
    ingest_max_tokens: int = Field(default=128, ge=16, le=256, validation_alias=_env("INGEST_MAX_TOKENS"))
    # Texts per embedder call during ingestion (app/knowledge/pipeline.py): bigger calls amortise the model's
    # per-call cost; a small value writes documents one by one (tests that interrupt a job mid-way use it).
    ingest_call_texts: int = Field(default=256, ge=1, le=4096, validation_alias=_env("INGEST_CALL_TEXTS"))
    # Chunks whose vector ingestion may share (app/knowledge/pipeline.py): "text", chunks embedded as the same
    # text (heading path and text alike: the vector is the same anyway); "passage", chunks with the same text
    # under any heading (an inherited method's docstring on each subclass's page): the first one's vector
    # (the default: 25% fewer model calls on documentation, same scores; docs/benchmarks.md).
    ingest_dedupe: Literal["text", "passage"] = Field(default="passage", validation_alias=_env("INGEST_DEDUPE"))
    chunk_max_words: int = Field(default=120, validation_alias=_env("CHUNK_MAX_WORDS"))

    # Limits on uploads.
    max_upload_bytes: int = Field(default=50 * 1024 * 1024, validation_alias=_env("MAX_UPLOAD_BYTES"))
    # Request bodies (app/api/limits.py), refused with 413 while they arrive: MAX_UPLOAD_BYTES on the knowledge
    # upload route, MAX_WEBHOOK_BYTES on /webhooks/* (Meta documents payloads of up to 3 MB), MAX_BODY_BYTES on
    # every other route (admin and review JSON, the widget).
    max_body_bytes: int = Field(default=256 * 1024, gt=0, validation_alias=_env("MAX_BODY_BYTES"))
    max_webhook_bytes: int = Field(default=4 * 1024 * 1024, gt=0, validation_alias=_env("MAX_WEBHOOK_BYTES"))
    max_message_chars: int = Field(default=4000, validation_alias=_env("MAX_MESSAGE_CHARS"))
    # Knowledge packs: a file over max_file_bytes is refused; a pack stops taking files past max_pack_bytes or
    # max_pack_files (each further file refused with the reason). PDFs over max_pdf_pages are refused.
    max_file_bytes: int = Field(default=20 * 1024 * 1024, validation_alias=_env("MAX_FILE_BYTES"))
    max_pack_bytes: int = Field(default=200 * 1024 * 1024, validation_alias=_env("MAX_PACK_BYTES"))
    # 20,000 pages: a large product's documentation (issue 14's had 2,757) fits; ingestion's memory is bounded
    # per batch (app/knowledge/pipeline.py), the files themselves by max_pack_bytes.
    max_pack_files: int = Field(default=20_000, gt=0, validation_alias=_env("MAX_PACK_FILES"))
    max_pdf_pages: int = Field(default=500, validation_alias=_env("MAX_PDF_PAGES"))
    # A new pack version whose hit@5 on the tenant's eval set is below the live one's by more than this is
    # built but not promoted automatically.
    eval_regression_margin: float = Field(default=0.02, validation_alias=_env("EVAL_REGRESSION_MARGIN"))
    # Old pack versions kept for rollback (beyond the live one); older ones lose their vectors.
    pack_versions_kept: int = Field(default=3, validation_alias=_env("PACK_VERSIONS_KEPT"))

    # Rate limits (app/ratelimit.py): "<count>/<period>" or "<count> per <n> <period>s", e.g. "20/minute";
    # an empty value turns that limit off. Moving windows, in Redis when REDIS_URL is set (shared by every
    # replica), else in process memory. Over a limit, HTTP callers get 429 with Retry-After.
    rate_widget_sessions_per_ip: str = Field(default="60/minute", validation_alias=_env("RATE_WIDGET_SESSIONS_PER_IP"))
    rate_widget_sends_per_ip: str = Field(default="120/minute", validation_alias=_env("RATE_WIDGET_SENDS_PER_IP"))
    rate_widget_sends_per_visitor: str = Field(
        default="20/minute", validation_alias=_env("RATE_WIDGET_SENDS_PER_VISITOR")
    )
    # Only failures count: wrong or revoked API keys per client IP and per presented key (by its hash).
    rate_auth_failures_per_ip: str = Field(default="20/minute", validation_alias=_env("RATE_AUTH_FAILURES_PER_IP"))
    rate_auth_failures_per_key: str = Field(default="10/minute", validation_alias=_env("RATE_AUTH_FAILURES_PER_KEY"))
    # Failed logins (POST /auth/login) per account (the email, known or not) and per client IP.
    rate_login_failures_per_account: str = Field(
        default="10/minute", validation_alias=_env("RATE_LOGIN_FAILURES_PER_ACCOUNT")
    )
    rate_login_failures_per_ip: str = Field(default="30/minute", validation_alias=_env("RATE_LOGIN_FAILURES_PER_IP"))
    # Webhooks whose signature or secret does not match, per channel account. Valid ones are never limited.
    rate_webhook_failures_per_account: str = Field(
        default="30/minute", validation_alias=_env("RATE_WEBHOOK_FAILURES_PER_ACCOUNT")
    )
    # LLM calls per tenant; a message over the limit is escalated with reason `llm_rate_limited`, never dropped.
    rate_llm_calls_per_tenant: str = Field(default="300/minute", validation_alias=_env("RATE_LLM_CALLS_PER_TENANT"))
    # Plans and quotas (app/tenants/plans.py): the plan of a tenant the operator assigned none; usage is re-read
    # from the rows at most every QUOTA_CACHE_S seconds per tenant and process (a few messages over an allowance
    # are possible in between; none is ever dropped).
    default_plan: str = Field(default="unlimited", validation_alias=_env("DEFAULT_PLAN"))
    quota_cache_s: float = Field(default=10.0, ge=0, validation_alias=_env("QUOTA_CACHE_S"))
    # Peers whose X-Forwarded-For / X-Forwarded-Proto are believed (comma-separated IPs or CIDRs, or "*"), passed
    # to uvicorn's proxy-headers middleware. Per-IP limits key on the resulting client address; put your reverse
    # proxy or ingress here, or every visitor behind it shares one IP's limits.
    trusted_proxies: str = Field(default="127.0.0.1", validation_alias=_env("TRUSTED_PROXIES"))

    @field_validator("pii_phone_regions")
    @classmethod
    def _phone_regions(cls, value: str) -> str:
        from app.assistant.pii import parse_phone_regions

        parse_phone_regions(value)  # ValueError names the valid form
        return value

    @field_validator(
        "rate_widget_sessions_per_ip", "rate_widget_sends_per_ip", "rate_widget_sends_per_visitor",
        "rate_auth_failures_per_ip", "rate_auth_failures_per_key", "rate_webhook_failures_per_account",
        "rate_llm_calls_per_tenant", "rate_login_failures_per_account", "rate_login_failures_per_ip",
    )
    @classmethod
    def _rate_limit(cls, value: str, info: ValidationInfo) -> str:
        import limits

        value = value.strip()
        try:
            if value:
                limits.parse(value)
        except ValueError:
            raise ValueError(f"{info.field_name}={value!r} is not a rate limit: write it like '20/minute' or "
                             "'100 per 10 minutes', or leave it empty to turn the limit off") from None
        return value

    @field_validator("default_plan")
    @classmethod
    def _known_plan(cls, value: str) -> str:
        from app.tenants.plans import PLANS, UnknownPlan

        if value not in PLANS:
            raise ValueError(f"DEFAULT_PLAN: {UnknownPlan(value)}")
        return value

    @property
    def home_dir(self) -> Path:
        from app.files import private_dir

        return private_dir(self.home.expanduser())

    @property
    def effective_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.home_dir / 'switchboard.db'}"

    @property
    def pacing_slots(self) -> int:
        """`orchestrator_cpu_slots`, or its default for this deployment (see the field)."""
        if self.orchestrator_cpu_slots is not None:
            return self.orchestrator_cpu_slots
        return 2 if self.embedded and self.effective_database_url.startswith("sqlite") else 0

    @property
    def embedded(self) -> bool:
        """True when the bus is in-process, which means every role must run inside one process."""
        return self.redis_url is None


class SettingsError(ValueError):
    """The environment (or `.env`) sets a variable to a value it cannot take: which, and why (pydantic's messages
    quote no value, so no secret is printed)."""


@lru_cache
def from_environment() -> Settings:
    """The settings the environment (and `.env`) gives, read once per process. Raises `SettingsError`."""
    try:
        return Settings()
    except ValidationError as exc:
        problems = [f"  {'.'.join(str(part) for part in error['loc']) or 'settings'}: {error['msg']}"
                    for error in exc.errors()]
        raise SettingsError("invalid settings:\n" + "\n".join(problems) + "\nFix or unset each variable named "
                            "(README.md, \"Configuration\", lists them with their defaults).") from None


_installed: Settings | None = None


def get_settings() -> Settings:
    """The process's settings: its installed container's (app/bootstrap.py), else the environment's."""
    return _installed or from_environment()


def install(settings: Settings | None) -> None:
    """Make `settings` the process's (`bootstrap.install` does, with its container); None: the environment's."""
    global _installed
    _installed = settings


def new_token(nbytes: int = 24) -> str:
    return secrets.token_urlsafe(nbytes)
