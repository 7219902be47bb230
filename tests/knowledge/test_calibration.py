"""Relevance threshold calibration (app/knowledge/calibration.py): the rule on synthetic score distributions, and
ingestion of a small synthetic pack with eval questions in embedded mode (SQLite, qdrant-edge, the real MiniLM):
the version stores a threshold between the answerable and the unanswerable questions' scores, with its figures;
a pack without eval questions keeps the default and says so; one tenant's calibration never touches another's."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.bootstrap import container
from app.knowledge import calibration
from app.knowledge.calibration import Observed, calibrate_observed, choose, figures, split_of
from app.knowledge.reporting import IngestReport
from app.knowledge.service import ingest_paths
from app.models import PackVersion, Tenant
from tests.knowledge import calibration_pack


def _obs(score: float, right: bool = True) -> Observed:
    return Observed((score,), (right,))


def test_the_threshold_is_the_middle_of_the_gap_between_the_two_sides() -> None:
    answerable = [_obs(s) for s in (0.62, 0.70, 0.66, 0.81, 0.58, 0.75)]
    negatives = [_obs(s, False) for s in (0.12, 0.30, 0.41, 0.25)]
    chosen = choose(answerable, negatives)
    # Every grid point in (0.41, 0.58] answers all six and none of the negatives: the middle of that run.
    assert 0.41 < chosen <= 0.58 and chosen == pytest.approx((0.415 + 0.58) / 2, abs=0.005)
    at = figures(answerable, negatives, chosen)
    assert (at["right"], at["wrong"], at["escalated"], at["negatives_answered"]) == (6, 0, 0, 0)
    assert at["answer_precision"] == at["answer_recall"] == at["escalate_recall"] == at["escalate_precision"] == 1.0
    assert figures(answerable, [], 0.2)["escalate_precision"] is None  # nothing escalated

    # A wrong passage above the bar is a wrong answer, not a right one; the composer answers from the best-ranked
    # passage that clears the threshold.
    wrong_first = Observed((0.7, 0.5), (False, True))
    assert wrong_first.outcome(0.45) == "wrong" and wrong_first.outcome(0.6) == "wrong"
    assert wrong_first.outcome(0.75) == "escalated"
    assert Observed((0.5, 0.7), (False, True)).outcome(0.6) == "right"


def test_answering_a_negative_costs_more_than_escalating_an_answerable_question() -> None:
    # One negative scores above one answerable: escalating that one (1/8 of the answerable) costs less than
    # answering the negative (1/4 of the negatives, which weigh as much in all as the answerable).
    answerable = [_obs(s) for s in (0.50, 0.60, 0.62, 0.70, 0.72, 0.75, 0.78, 0.80)]
    negatives = [_obs(s, False) for s in (0.10, 0.20, 0.53, 0.30)]
    chosen = choose(answerable, negatives)
    assert 0.53 < chosen <= 0.60


def test_a_wrong_passage_above_the_bar_does_not_push_the_threshold_up() -> None:
    # Two answerable questions whose best passage is the wrong one, scoring high: no threshold separates them
    # from the right answers, so they count like escalations and the threshold stays above the negatives only.
    answerable = [_obs(s) for s in (0.50, 0.60, 0.62, 0.70)] + [_obs(0.72, False), _obs(0.66, False)]
    negatives = [_obs(s, False) for s in (0.10, 0.20, 0.30, 0.35)]
    chosen = choose(answerable, negatives)
    assert 0.35 < chosen <= 0.50
    assert figures(answerable, negatives, chosen)["wrong"] == 2


def test_too_few_questions_keep_the_default_and_say_why() -> None:
    answerable = {f"question {i}": _obs(0.7) for i in range(6)}
    result = calibrate_observed(answerable, {"weather?": _obs(0.1, False)}, "tenant")
    assert result["threshold"] is None and "too few questions to calibrate" in result["reason"]
    assert calibration.in_effect({}, result) == (0.45, "default")


def test_explicit_policy_wins_then_calibrated_then_default() -> None:
    found = {"threshold": 0.37}
    assert calibration.in_effect({"min_relevance": 0.6}, found) == (0.6, "policy")
    assert calibration.in_effect({"min_relevance": None}, found) == (0.37, "calibrated")
    assert calibration.in_effect({}, None) == (0.45, "default")


def test_split_is_by_question_text_and_stable() -> None:
    assert split_of("Are you open on Sunday?") == split_of("  are you open   on sunday? ")
    assert {split_of(q) for q, _ in calibration_pack.ANSWERABLE} == {"tune", "report"}


def _ingest(db: Session, tenant: str, pack: Path) -> IngestReport:
    return ingest_paths(db, tenant, [pack], deps=container().knowledge)


def _top(tenant: str, question: str) -> float:
    return container().retriever(tenant, question, filters={"pack_version": 1})[0].score


def test_ingestion_calibrates_between_the_score_distributions_per_tenant(db: Session, tmp_path: Path) -> None:
    acme = _ingest(db, "acme", calibration_pack.write(tmp_path / "acme"))
    globex = _ingest(db, "globex", calibration_pack.write(tmp_path / "globex", eval_set=False))
    db.commit()
    assert acme.promoted and globex.promoted
    rows = {r.tenant_id: r for r in db.scalars(select(PackVersion))}
    found = rows["acme"].calibration
    assert found is not None and found["negatives_source"] == "tenant" and found["pack_version"] == 1
    threshold = found["threshold"]

    # On the tune split, the threshold lies between the two distributions of best-passage scores: above all but
    # the highest unanswerable ("what time does the cinema open" reads like opening hours) and below all but the
    # lowest answerable ("what's your address" scores near 0 against "Where is the shop?").
    answerable = sorted(_top("acme", q) for q, _ in calibration_pack.ANSWERABLE if split_of(q) == "tune")
    negatives = sorted(_top("acme", q) for q in calibration_pack.UNANSWERABLE if split_of(q) == "tune")
    assert negatives[-2] < threshold < answerable[1]
    assert threshold != calibration.DEFAULT_MIN_RELEVANCE
    # The figures that justify it: both splits, at the chosen threshold and at the default.
    tune, report = found["tune"], found["report"]
    assert tune["chosen"]["answerable"] + report["chosen"]["answerable"] == len(calibration_pack.ANSWERABLE)
    assert tune["chosen"]["negatives"] + report["chosen"]["negatives"] == len(calibration_pack.UNANSWERABLE)
    assert tune["chosen"]["value"] >= tune["default"]["value"]
    assert report["default"]["threshold"] == 0.45 and report["chosen"]["threshold"] == threshold

    # No eval questions: the default, and why.
    assert rows["globex"].calibration["threshold"] is None  # type: ignore[index]
    assert "no eval questions" in rows["globex"].calibration["reason"]  # type: ignore[index]
    assert calibration.relevance(db, "globex")["source"] == "default"
    assert calibration.relevance(db, "acme") == {
        "in_effect": threshold, "source": "calibrated", "policy": None, "calibrated": threshold, "pack_version": 1,
        "calibration": found}

    # An explicit policy wins over the calibration, for that tenant only.
    db.get_one(Tenant, "acme").policies = {"min_relevance": 0.5}
    db.flush()
    assert calibration.relevance(db, "acme")["in_effect"] == 0.5
    assert calibration.relevance(db, "acme")["source"] == "policy"
    assert calibration.relevance(db, "globex")["in_effect"] == 0.45


def test_without_unanswerable_questions_negatives_come_from_other_domains(db: Session, tmp_path: Path) -> None:
    _ingest(db, "acme", calibration_pack.write(tmp_path / "acme", unanswerable=False))
    db.commit()
    found = db.scalars(select(PackVersion).where(PackVersion.tenant_id == "acme")).one().calibration
    assert found is not None and found["negatives_source"] == "generated" and found["threshold"] is not None
    shipped = len(calibration.offtopic_questions())
    used = found["tune"]["chosen"]["negatives"] + found["report"]["chosen"]["negatives"]
    # The shipped questions close to the tenant's own are left out (none of a bike shop's here is a bank's or an
    # outdoor retailer's, so few are): the rest are the negatives.
    assert 0.8 * shipped <= used <= shipped


def test_generated_negatives_leave_out_questions_near_the_tenants_own() -> None:
    embedder = container().embedder
    kept = calibration.generated_negatives(["can i pay with klarna?", "I am still waiting on my card?"],
                                           embedder.embed_query)
    assert "can i pay with klarna?" not in kept and "I am still waiting on my card?" not in kept
    assert len(kept) < len(calibration.offtopic_questions())


def test_recompute_replaces_only_that_tenants_calibration(db: Session, tmp_path: Path) -> None:
    from app.knowledge.cli import PackError, run_calibrate

    _ingest(db, "acme", calibration_pack.write(tmp_path / "acme"))
    _ingest(db, "globex", calibration_pack.write(tmp_path / "globex", eval_set=False, unanswerable=False))
    db.commit()
    before = db.scalars(select(PackVersion).where(PackVersion.tenant_id == "acme")).one().calibration
    questions = (tmp_path / "acme" / "_eval.jsonl").read_text()
    # Globex's own eval set now, with generated negatives.
    result = run_calibrate(container(), "globex", questions=questions)
    assert result["source"] == "calibrated" and result["recomputed"]["negatives_source"] == "generated"
    db.expire_all()
    after = {r.tenant_id: r.calibration for r in db.scalars(select(PackVersion))}
    assert after["acme"] == before
    assert after["globex"]["threshold"] == result["in_effect"]  # type: ignore[index]
    with pytest.raises(PackError, match="pack version 7 does not exist"):
        run_calibrate(container(), "globex", version=7)
    with pytest.raises(PackError, match="line 1"):
        run_calibrate(container(), "globex", questions="{not json")
