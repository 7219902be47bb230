"""Pack versions: every ingestion builds a new version beside the live one; promotion and rollback only move
`Tenant.live_pack_version`.

Design (why it is simple and correct):
- Points are per version. A point's id is uuid5(tenant, version, path, ordinal) and its payload carries
  `pack_version`, so a query filtered on one version sees exactly that version, and the orchestrator reads the
  tenant's live number once per message: one answer, one version.
- A version is built completely before it can go live (status `building` -> `ready`); promotion is one UPDATE of
  the tenant row (and the status columns) in one transaction: atomic and O(1), whatever the pack's size.
  Rollback is the same UPDATE back to the version that was live before.
- Unchanged documents are not embedded again: each document's dense vectors are cached in the object store
  under a key derived from the embedder and the exact texts embedded (`app/knowledge/embedcache.py`); a new
  version re-upserts them under its own ids. Upserting is cheap; embedding is what costs.
- Old versions keep their points for rollback; past `pack_versions_kept` they are pruned (points and rows, and the
  grounding check's kept vectors of passage texts no remaining chunk holds).

Statuses: building | ready | live | retired (was live, can be rolled back to) | failed | pruned.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from app.audit import record
from app.knowledge.embedcache import companion_prefix
from app.knowledge.ids import passage_digest
from app.models import Chunk, Document, PackVersion, PassageVectors, Tenant, new_id, utcnow
from app.providers.storage.base import ObjectStore
from app.providers.vectors.base import VectorStore

PROMOTABLE = ("ready", "retired", "live")


class VersionError(ValueError):
    """A promote or rollback that cannot be done; the message says why."""


def list_versions(session: Session, tenant_id: str) -> list[PackVersion]:
    """Newest first."""
    stmt = select(PackVersion).where(PackVersion.tenant_id == tenant_id).order_by(PackVersion.version.desc())
    return list(session.scalars(stmt))


def get_version(session: Session, tenant_id: str, version: int) -> PackVersion:
    row = session.scalars(
        select(PackVersion).where(PackVersion.tenant_id == tenant_id, PackVersion.version == version)
    ).first()
    if row is None:
        raise VersionError(f"pack version {version} does not exist for this tenant")
    return row


def start_build(session: Session, tenant_id: str, job_id: str | None = None) -> PackVersion:
    """The version a build writes to. A job that is run again (after a crash) gets its own version back, so
    its second run overwrites the first run's points instead of leaving them behind."""
    if job_id is not None:
        existing = session.scalars(
            select(PackVersion).where(PackVersion.tenant_id == tenant_id, PackVersion.job_id == job_id)
        ).first()
        if existing is not None:
            if existing.status != "building":
                raise VersionError(f"job {job_id} already built pack version {existing.version}")
            return existing
    tenant = session.get_one(Tenant, tenant_id)
    highest = max(
        session.scalar(select(func.max(PackVersion.version)).where(PackVersion.tenant_id == tenant_id)) or 0,
        session.scalar(select(func.max(Document.pack_version)).where(Document.tenant_id == tenant_id)) or 0,
        tenant.live_pack_version or 0,
    )
    row = PackVersion(id=new_id(), tenant_id=tenant_id, version=highest + 1, status="building", job_id=job_id)
    session.add(row)
    session.flush()
    return row


def clear_version(session: Session, vectors: VectorStore, tenant_id: str, version: int) -> None:
    """Remove whatever an interrupted earlier attempt at this (never live) version left: points and rows."""
    vectors.delete_where(tenant_id, {"pack_version": version})
    doc_ids = select(Document.id).where(Document.tenant_id == tenant_id, Document.pack_version == version)
    session.execute(delete(Chunk).where(Chunk.tenant_id == tenant_id, Chunk.document_id.in_(doc_ids)))
    session.execute(delete(Document).where(Document.tenant_id == tenant_id, Document.pack_version == version))
    session.flush()


def promote(session: Session, tenant_id: str, version: int, *, actor: str = "system") -> PackVersion:
    """Make `version` the live one. Flushes; the caller's commit makes it visible to every reader at once."""
    tenant = session.scalars(select(Tenant).where(Tenant.id == tenant_id).with_for_update()).one()
    row = get_version(session, tenant_id, version)
    if row.status not in PROMOTABLE:
        raise VersionError(f"pack version {version} is {row.status}; only a ready or retired version can go live")
    previous = tenant.live_pack_version
    if previous == version:
        return row
    if previous is not None:
        old = session.scalars(
            select(PackVersion).where(PackVersion.tenant_id == tenant_id, PackVersion.version == previous)
        ).first()
        if old is not None:
            old.status = "retired"
    row.status = "live"
    row.promoted_at = utcnow()
    tenant.live_pack_version = version
    record(session, tenant_id, actor, "knowledge.version_promoted", "pack_version", str(version),
           {"version": version, "previous": previous})
    session.flush()
    return row


def rollback(session: Session, tenant_id: str, *, actor: str = "system") -> PackVersion:
    """Back to the version that was live before the current one. The version rolled back from becomes
    `ready` (promotable again, but never a rollback target), so repeated rollbacks walk further back."""
    tenant = session.scalars(select(Tenant).where(Tenant.id == tenant_id).with_for_update()).one()
    target = session.scalars(
        select(PackVersion)
        .where(PackVersion.tenant_id == tenant_id, PackVersion.status == "retired")
        .order_by(PackVersion.promoted_at.desc(), PackVersion.version.desc())
    ).first()
    if target is None:
        raise VersionError("no earlier live version to roll back to")
    current = tenant.live_pack_version
    if current is not None:
        row = session.scalars(
            select(PackVersion).where(PackVersion.tenant_id == tenant_id, PackVersion.version == current)
        ).first()
        if row is not None:
            row.status = "ready"
            row.notes = f"rolled back to version {target.version}"
    target.status = "live"
    target.promoted_at = utcnow()
    tenant.live_pack_version = target.version
    record(session, tenant_id, actor, "knowledge.version_rolled_back", "pack_version", str(target.version),
           {"version": target.version, "previous": current})
    session.flush()
    return target


def prune(session: Session, vectors: VectorStore, objects: ObjectStore, tenant_id: str, keep: int) -> list[int]:
    """Drop the points and rows of finished versions beyond the newest `keep` (never the live one or a build
    in progress). Their stored files go too unless a kept version still uses them."""
    candidates = [v for v in list_versions(session, tenant_id) if v.status in ("ready", "retired", "failed")]
    pruned = []
    texts: list[str] = []  # the pruned chunks' texts, whose kept grounding vectors may go with them
    for row in candidates[max(keep, 0):]:
        keys = set(session.scalars(select(Document.object_key).where(
            Document.tenant_id == tenant_id, Document.pack_version == row.version, Document.object_key.is_not(None)
        )))
        texts += session.scalars(select(Chunk.text).join(Document, Document.id == Chunk.document_id).where(
            Chunk.tenant_id == tenant_id, Document.tenant_id == tenant_id, Document.pack_version == row.version))
        clear_version(session, vectors, tenant_id, row.version)
        delete_unreferenced(session, objects, tenant_id, keys)
        row.status = "pruned"
        pruned.append(row.version)
    session.flush()
    forget_passage_vectors(session, tenant_id, texts)
    return pruned


def forget_passage_vectors(session: Session, tenant_id: str, texts: Iterable[str]) -> int:
    """Delete the tenant's kept grounding vectors (`passage_vectors`, app/assistant/passage_units.py) of these
    passage texts, those of chunks just deleted (a document's, a pruned version's), unless a remaining chunk of
    the tenant holds the same text (a kept version for a rollback, another document). Call it once the deletion is
    flushed. The work grows with what was deleted and had vectors, not with the tenant's pack. Returns how many
    rows went. (A check that cited a passage just before its deletion may keep its vectors after this; they go
    with the tenant.)"""
    by_digest = {passage_digest(text): text for text in texts}
    kept: list[tuple[str, str]] = []
    for part in _parts(list(by_digest)):
        kept += session.execute(select(PassageVectors.id, PassageVectors.digest).where(
            PassageVectors.tenant_id == tenant_id, PassageVectors.digest.in_(part))).tuples()
    held: set[str] = set()
    for part in _parts(list({by_digest[digest] for _, digest in kept}), size=100):  # texts: smaller statements
        held.update(session.scalars(select(Chunk.text).where(Chunk.tenant_id == tenant_id, Chunk.text.in_(part))))
    gone = [row_id for row_id, digest in kept if by_digest[digest] not in held]
    for part in _parts(gone):
        session.execute(delete(PassageVectors).where(PassageVectors.tenant_id == tenant_id,
                                                     PassageVectors.id.in_(part)))
    return len(gone)


def _parts(items: list[str], size: int = 500) -> Iterator[list[str]]:
    """Bounded IN lists."""
    for start in range(0, len(items), size):
        yield items[start:start + size]


def delete_unreferenced(session: Session, objects: ObjectStore, tenant_id: str, keys: set[str | None]) -> None:
    """Delete stored objects (raw files, cached vectors) no remaining document row refers to."""
    for key in sorted(k for k in keys if k):
        used = session.scalar(
            select(func.count()).select_from(Document).where(
                Document.tenant_id == tenant_id, (Document.object_key == key) | (Document.vectors_key == key)
            )
        )
        if not used:
            objects.delete(key)
            if "/knowledge/vectors/" in key:
                for companion in objects.list(companion_prefix(key)):
                    objects.delete(companion)
