"""The end of an ingestion run (app/knowledge/service.py), once every file is written: the new version's term
statistics, its score on the tenant's eval set against the live version's (the gate: a build worse by more than
EVAL_REGRESSION_MARGIN is not promoted), its relevance calibration, then promotion and pruning of old versions."""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy.orm import Session

from app.config import get_settings
from app.knowledge import calibration, termstats, versions
from app.knowledge.evaluate import eval_key
from app.knowledge.indexing import Deps
from app.knowledge.reporting import IngestReport
from app.knowledge.termstats import TermStats
from app.models import PackVersion, Tenant

log = logging.getLogger(__name__)


def finish(session: Session, d: Deps, tenant: Tenant, build: PackVersion, report: IngestReport,
           *, promote: bool) -> None:
    """Ready, then live unless told not to or the eval set vetoes it; failed when nothing could be indexed."""
    build.documents, build.chunks, build.embedded = report.version_documents, report.version_chunks, report.embedded
    if report.version_documents == 0:
        build.status = report.status = "failed"
        build.notes = report.notes = "no document could be indexed; the live version is unchanged"
        session.flush()
        return
    build.status = "ready"
    stats = termstats.collect(d.embedder, termstats.version_texts(session, tenant.id, build.version))
    build.term_stats = stats.to_json() if stats is not None else None
    session.flush()
    verdict = _gate(session, d, tenant, build, stats)
    build.scores, report.scores = verdict["scores"], verdict["scores"]
    build.calibration = report.calibration = calibration.for_build(d, eval_key(tenant.id), tenant.id,
                                                                   build.version, stats)
    if not promote:
        report.notes = "built with --version-only: promote it when ready"
    elif verdict["reason"]:
        report.notes = verdict["reason"]
    else:
        versions.promote(session, tenant.id, build.version)
        report.promoted = True
        versions.prune(session, d.vectors, d.objects, tenant.id, get_settings().pack_versions_kept)
    build.notes = report.notes
    report.status = build.status
    session.flush()


def _gate(session: Session, d: Deps, tenant: Tenant, build: PackVersion, stats: TermStats | None) -> dict[str, Any]:
    """Score the new version (and the live one) on the tenant's eval set, if it has one."""
    from app.knowledge.evaluate import evaluate, parse_questions
    from app.knowledge.retrieval import Retriever

    try:
        questions = parse_questions(d.objects.get(eval_key(tenant.id)))
    except KeyError:
        return {"scores": {}, "reason": None}

    def score(version: int, stats: TermStats | None) -> dict[str, Any]:
        return evaluate(tenant.id, questions, pack_version=version, term_stats=stats,
                        retriever=Retriever(d.embedder, d.sparse, d.vectors))

    new = score(build.version, stats)
    live = tenant.live_pack_version
    if live is None or live == build.version:
        return {"scores": new, "reason": None}
    old = score(live, termstats.for_version(tenant.id, live, d.embedder, session))
    margin = get_settings().eval_regression_margin
    scores = {**new, "live": {"version": live, **old}}
    if new["hit@5"] < old["hit@5"] - margin:
        reason = (f"not promoted: hit@5 {new['hit@5']:.3f} is below the live version {live}'s "
                  f"{old['hit@5']:.3f} by more than {margin} (EVAL_REGRESSION_MARGIN)")
        log.warning("tenant %s: pack version %s %s", tenant.id, build.version, reason)
        return {"scores": scores, "reason": reason}
    return {"scores": scores, "reason": None}
