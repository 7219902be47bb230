from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, ForeignKey, Index, LargeBinary, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import Base, IdMixin, TenantOwned


class KnowledgeSource(TenantOwned, IdMixin, Base):
    """One upload (a folder, a zip, a set of files) for a tenant."""

    __tablename__ = "knowledge_sources"

    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(300))
    pack_version: Mapped[int] = mapped_column(default=1)


class Document(TenantOwned, IdMixin, Base):
    __tablename__ = "documents"
    __table_args__ = (UniqueConstraint("tenant_id", "pack_version", "path"),)

    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    source_id: Mapped[str | None] = mapped_column(
        ForeignKey("knowledge_sources.id", ondelete="SET NULL"), default=None
    )
    pack_version: Mapped[int] = mapped_column(default=1)
    path: Mapped[str] = mapped_column(String(500))  # file name within the pack
    title: Mapped[str] = mapped_column(String(500), default="")
    kind: Mapped[str] = mapped_column(String(16))  # markdown | text | faq | html | pdf | docx
    content_hash: Mapped[str] = mapped_column(String(64))
    object_key: Mapped[str | None] = mapped_column(String(500), default=None)
    meta: Mapped[dict[str, Any]] = mapped_column(default=dict)
    status: Mapped[str] = mapped_column(String(16), default="indexed")  # indexed | failed
    error: Mapped[str | None] = mapped_column(Text, default=None)
    # Object-store key of the document's cached dense vectors: a later version with the same chunk texts reuses
    # them instead of embedding again (see app/knowledge/versions.py).
    vectors_key: Mapped[str | None] = mapped_column(String(500), default=None)


class Chunk(TenantOwned, Base):
    """Chunk metadata; the text and vectors live in the vector store under the same deterministic id."""

    __tablename__ = "chunks"
    __table_args__ = (Index("ix_chunks_tenant_document", "tenant_id", "document_id"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True)  # uuid5 of tenant/version/path/ordinal
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    document_id: Mapped[str] = mapped_column(ForeignKey("documents.id", ondelete="CASCADE"))
    ordinal: Mapped[int]
    heading: Mapped[str] = mapped_column(String(500), default="")
    text: Mapped[str] = mapped_column(Text)
    token_estimate: Mapped[int] = mapped_column(default=0)
    # Suspected prompt injection found at ingestion (app/knowledge/quarantine.py): {"reason", "score", "rules",
    # "status": "held" | "released", "released_by", "released_at"}. A held chunk has no vector point, so retrieval
    # never returns it; null for a clean chunk.
    quarantine: Mapped[dict[str, Any] | None] = mapped_column(JSON(none_as_null=True), default=None)


class IngestionJob(TenantOwned, IdMixin, Base):
    __tablename__ = "ingestion_jobs"

    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    source_id: Mapped[str | None] = mapped_column(
        ForeignKey("knowledge_sources.id", ondelete="SET NULL"), default=None
    )
    status: Mapped[str] = mapped_column(String(16), default="queued")  # queued|running|succeeded|failed
    total_files: Mapped[int] = mapped_column(default=0)
    done_files: Mapped[int] = mapped_column(default=0)
    chunks: Mapped[int] = mapped_column(default=0)
    errors: Mapped[list[dict[str, Any]]] = mapped_column(default=list)
    finished_at: Mapped[datetime | None] = mapped_column(default=None)
    detail: Mapped[str | None] = mapped_column(Text, default=None)
    pack_version: Mapped[int | None] = mapped_column(default=None)  # the version this job builds
    # How to build: {"promote": bool, "replace": bool, "meta": {...}} (see app/knowledge/service.py).
    options: Mapped[dict[str, Any]] = mapped_column(default=dict)


class PackVersion(TenantOwned, IdMixin, Base):
    """One build of a tenant's knowledge pack. `Tenant.live_pack_version` names the one the assistant reads;
    promoting or rolling back only changes that number."""

    __tablename__ = "pack_versions"
    __table_args__ = (UniqueConstraint("tenant_id", "version"),)

    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    version: Mapped[int]
    status: Mapped[str] = mapped_column(String(16), default="building")  # building|ready|live|retired|failed|pruned
    job_id: Mapped[str | None] = mapped_column(String(32), default=None, index=True)
    documents: Mapped[int] = mapped_column(default=0)
    chunks: Mapped[int] = mapped_column(default=0)
    embedded: Mapped[int] = mapped_column(default=0)  # chunks embedded for this build (the rest were reused)
    scores: Mapped[dict[str, Any]] = mapped_column(default=dict)  # evaluation: {"n", "hit@1", "hit@5", "mrr"}
    # The relevance threshold calibrated on the tenant's eval questions, with the figures that justify it, or
    # why there is none (app/knowledge/calibration.py). Null: built before calibration existed.
    calibration: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    notes: Mapped[str | None] = mapped_column(Text, default=None)
    promoted_at: Mapped[datetime | None] = mapped_column(default=None)
    # Token document frequencies of its chunks, counted at build time (app/knowledge/termstats.py). Tens of KB
    # for a large pack: loaded only when read, not with every listing of versions.
    term_stats: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None, deferred=True)


class PassageVectors(TenantOwned, IdMixin, Base):
    """The grounding check's embeddings of one passage's units (app/assistant/passage_units.py), kept so that a
    restart, another process or a replica does not embed a passage again: `rows` float32 vectors of `dim`, in the
    order its units are derived from the text, one row per tenant, model and text digest."""

    __tablename__ = "passage_vectors"
    __table_args__ = (UniqueConstraint("tenant_id", "model", "digest"),)

    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    model: Mapped[str] = mapped_column(String(200))
    digest: Mapped[str] = mapped_column(String(64))
    rows: Mapped[int]
    dim: Mapped[int]
    vectors: Mapped[bytes] = mapped_column(LargeBinary)
