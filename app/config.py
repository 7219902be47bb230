"""Settings: every knob comes from environment variables (or a `.env` file), documented in the README.

Embedded mode is what you get with no servers configured. Setting `DATABASE_URL`, `REDIS_URL`, `QDRANT_URL`
or `S3_BUCKET` switches that one part to its scale-out implementation; the code path is otherwise the same.
"""

from __future__ import annotations

import secrets
from functools import lru_cache
from pathlib import Path

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict


def _env(name: str) -> AliasChoices:
    """Accept both `SWITCHBOARD_NAME` and the conventional bare `NAME`."""
    return AliasChoices(f"SWITCHBOARD_{name}", name)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", extra="ignore", populate_by_name=True)

    home: Path = Field(default=Path("~/.switchboard"), validation_alias=_env("HOME"))

    # Scale-out services; unset means the embedded implementation.
    database_url: str | None = Field(default=None, validation_alias=_env("DATABASE_URL"))
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

    # Fernet key for channel credentials at rest. Embedded mode generates one under `home` when unset.
    secret_key: str | None = Field(default=None, validation_alias=_env("SECRET_KEY"))
    public_base_url: str = Field(default="http://127.0.0.1:8080", validation_alias=_env("PUBLIC_BASE_URL"))

    # Bus behaviour.
    bus_max_deliveries: int = Field(default=5, validation_alias=_env("BUS_MAX_DELIVERIES"))
    bus_claim_idle_ms: int = Field(default=30_000, validation_alias=_env("BUS_CLAIM_IDLE_MS"))
    bus_stream_maxlen: int = Field(default=100_000, validation_alias=_env("BUS_STREAM_MAXLEN"))
    bus_batch_size: int = Field(default=64, validation_alias=_env("BUS_BATCH_SIZE"))
    # Prefix of every Redis key the bus writes; lets several deployments (or test runs) share one Redis.
    bus_namespace: str = Field(default="sb", validation_alias=_env("BUS_NAMESPACE"))

    # Retrieval and answering.
    retrieval_top_k: int = Field(default=5, validation_alias=_env("RETRIEVAL_TOP_K"))
    history_turns: int = Field(default=6, validation_alias=_env("HISTORY_TURNS"))
    embed_batch_size: int = Field(default=16, validation_alias=_env("EMBED_BATCH_SIZE"))
    chunk_max_words: int = Field(default=120, validation_alias=_env("CHUNK_MAX_WORDS"))

    # Limits on uploads.
    max_upload_bytes: int = Field(default=50 * 1024 * 1024, validation_alias=_env("MAX_UPLOAD_BYTES"))
    max_message_chars: int = Field(default=4000, validation_alias=_env("MAX_MESSAGE_CHARS"))
    # Knowledge packs: a file over max_file_bytes is refused; a pack stops taking files past max_pack_bytes or
    # max_pack_files (each further file refused with the reason). PDFs over max_pdf_pages are refused.
    max_file_bytes: int = Field(default=20 * 1024 * 1024, validation_alias=_env("MAX_FILE_BYTES"))
    max_pack_bytes: int = Field(default=200 * 1024 * 1024, validation_alias=_env("MAX_PACK_BYTES"))
    max_pack_files: int = Field(default=2_000, validation_alias=_env("MAX_PACK_FILES"))
    max_pdf_pages: int = Field(default=500, validation_alias=_env("MAX_PDF_PAGES"))
    # A new pack version whose hit@5 on the tenant's eval set is below the live one's by more than this is
    # built but not promoted automatically.
    eval_regression_margin: float = Field(default=0.02, validation_alias=_env("EVAL_REGRESSION_MARGIN"))
    # Old pack versions kept for rollback (beyond the live one); older ones lose their vectors.
    pack_versions_kept: int = Field(default=3, validation_alias=_env("PACK_VERSIONS_KEPT"))

    @property
    def home_dir(self) -> Path:
        path = self.home.expanduser()
        path.mkdir(parents=True, exist_ok=True)
        return path

    @property
    def effective_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.home_dir / 'switchboard.db'}"

    @property
    def embedded(self) -> bool:
        """True when the bus is in-process, which means every role must run inside one process."""
        return self.redis_url is None

    @property
    def effective_secret_key(self) -> str:
        if self.secret_key:
            return self.secret_key
        from cryptography.fernet import Fernet

        key_file = self.home_dir / "secret.key"
        if not key_file.exists():
            key_file.write_bytes(Fernet.generate_key())
            key_file.chmod(0o600)
        return key_file.read_text().strip()


@lru_cache
def get_settings() -> Settings:
    return Settings()


def new_token(nbytes: int = 24) -> str:
    return secrets.token_urlsafe(nbytes)
