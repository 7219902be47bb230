"""The tenant's relevance threshold, calibrated on its own pack and eval questions.

`min_relevance` is the full-view cosine below which the assistant escalates instead of answering (the offline
composer answers from the best-ranked retrieved passage that reaches it). One number does not suit every pack:
scores depend on how the pack is written and on how customers ask. So when a version is built and the tenant
has eval questions (`_eval.jsonl`, answerable, with their expected document), the threshold is chosen on them:

- **Negatives.** The tenant's own unanswerable questions (`_unanswerable.jsonl`, `{"question": ...}` per line)
  when it has some; otherwise questions of other domains shipped with Switchboard (offtopic_questions.txt:
  another brand's retail questions and banking questions), leaving out those within NEAR_OWN cosine of one of
  the tenant's own questions (a bank's own eval set would make the banking ones answerable).
- **Split.** Every question goes to `tune` or `report` by its text (first hex digit of SHA-256, even = tune). The
  threshold is chosen on `tune`; `report` measures it. Both are stored, with the default's figures beside.
- **Rule.** For each threshold on a 0.005 grid from 0.20 to 0.80, each question's outcome is what the offline
  composer would do: answer right (the passage it answers from is the expected one), answer wrong (another
  passage) or escalate; a negative is answered or escalated. Value per message = (1 - p) * share of the
  answerable answered right - p * WRONG_COST * share of the negatives answered, with p = UNANSWERABLE_SHARE of
  traffic the pack cannot answer (at 0.25 and 3 the two shares weigh the same). The chosen threshold is the middle
  of the longest run of grid points with the best value (the widest margin between the two sides). A wrong
  passage answered for an answerable question counts like an escalation (0): it scores as high as a right one,
  so no threshold separates them (ranking and the grounding check deal with it); a first version of the rule
  charged it WRONG_COST too and escalated most answerable questions (docs/benchmarks.md).
  p and WRONG_COST were set before any measurement and not tuned; the rule's form changed once, as said.
- Too few questions in the tune split (MIN_ANSWERABLE answerable, MIN_NEGATIVES negatives) keep the default, and
  the stored result says why.

An explicit `min_relevance` in the tenant's policies always wins (`in_effect`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.knowledge.evaluate import EvalError, Question, eval_key, jsonl_objects
from app.knowledge.indexing import Deps
from app.knowledge.retrieval import Passage, retrieve
from app.knowledge.termstats import TermStats
from app.providers.embeddings.base import Embedder, SparseEncoder
from app.providers.storage.base import ObjectStore
from app.providers.vectors.base import VectorStore

DEFAULT_MIN_RELEVANCE = 0.45
WRONG_COST = 3.0
UNANSWERABLE_SHARE = 0.25
GRID = tuple(round(0.20 + 0.005 * i, 3) for i in range(121))  # 0.20 .. 0.80
MIN_ANSWERABLE, MIN_NEGATIVES = 8, 4
NEAR_OWN = 0.6  # a generated negative this close (cosine) to one of the tenant's questions is left out
OFFTOPIC = Path(__file__).with_name("offtopic_questions.txt")
RULE = (f"threshold on a 0.005 grid in [0.20, 0.80] maximising (1-p)*right - p*{WRONG_COST:g}*negatives_answered "
        f"(shares of the answerable and of the negatives; p = {UNANSWERABLE_SHARE}), middle of the best run; chosen "
        "on the tune split (SHA-256 of the question, first hex digit even), measured on the report split")


@dataclass(frozen=True)
class Observed:
    """One question's retrieved passages, in rank order: their scores and whether each answers it."""

    scores: tuple[float, ...]
    right: tuple[bool, ...]

    def outcome(self, threshold: float) -> str:
        for score, right in zip(self.scores, self.right, strict=True):
            if score >= threshold:
                return "right" if right else "wrong"
        return "escalated"


def unanswerable_key(tenant_id: str) -> str:
    return f"{tenant_id}/knowledge/eval/unanswerable.jsonl"


def stored_unanswerable(objects: ObjectStore, tenant_id: str) -> list[str] | None:
    try:
        return parse_unanswerable(objects.get(unanswerable_key(tenant_id)))
    except KeyError:
        return None


def split_of(question: str) -> str:
    digit = hashlib.sha256(" ".join(question.casefold().split()).encode()).hexdigest()[0]
    return "tune" if int(digit, 16) % 2 == 0 else "report"


def parse_unanswerable(data: bytes | str) -> list[str]:
    """`{"question": "..."}` per line (other fields ignored)."""
    out = []
    for line_no, item in jsonl_objects(data):
        question = item.get("question")
        if not isinstance(question, str) or not question.strip():
            raise EvalError(f'line {line_no}: needs {{"question": "..."}}')
        out.append(question.strip())
    if not out:
        raise EvalError("no questions in the file")
    return out


def offtopic_questions() -> list[str]:
    return [line.strip() for line in OFFTOPIC.read_text(encoding="utf-8").splitlines()
            if line.strip() and not line.startswith("#")]


def generated_negatives(own: Sequence[str], embed: Callable[[str], list[float]]) -> list[str]:
    """The shipped other-domain questions, minus those within NEAR_OWN cosine of one of the tenant's own."""
    mine = [embed(q) for q in own]
    kept = []
    for question in offtopic_questions():
        vector = embed(question)
        if all(sum(a * b for a, b in zip(vector, m, strict=True)) < NEAR_OWN for m in mine):
            kept.append(question)
    return kept


def observe(passages: Sequence[Passage], question: Question | None) -> Observed:
    """`question` None: a negative, nothing answers it."""
    return Observed(tuple(float(p.score) for p in passages),
                    tuple(question is not None and question.matches(p) for p in passages))


def figures(answerable: Sequence[Observed], negatives: Sequence[Observed], threshold: float) -> dict[str, Any]:
    outcomes = [o.outcome(threshold) for o in answerable]
    right, wrong = outcomes.count("right"), outcomes.count("wrong")
    missed = outcomes.count("escalated")
    answered_neg = sum(o.outcome(threshold) != "escalated" for o in negatives)
    answers, escalations = right + wrong + answered_neg, missed + len(negatives) - answered_neg

    def ratio(a: float, b: float) -> float | None:
        return round(a / b, 4) if b else None

    return {
        "threshold": threshold, "answerable": len(answerable), "right": right, "wrong": wrong, "escalated": missed,
        "negatives": len(negatives), "negatives_answered": answered_neg,
        # An answer is correct when it comes from the expected passage; an escalation when the question is a
        # negative.
        "answer_precision": ratio(right, answers), "answer_recall": ratio(right, len(answerable)),
        "escalate_precision": ratio(len(negatives) - answered_neg, escalations),
        "escalate_recall": ratio(len(negatives) - answered_neg, len(negatives)),
        "value": round(value(right, len(answerable), answered_neg, len(negatives)), 4),
    }


def value(right: int, answerable: int, answered_neg: int, negatives: int) -> float:
    p = UNANSWERABLE_SHARE
    return (1 - p) * right / max(answerable, 1) - p * WRONG_COST * answered_neg / max(negatives, 1)


def choose(answerable: Sequence[Observed], negatives: Sequence[Observed]) -> float:
    values = [figures(answerable, negatives, t)["value"] for t in GRID]
    best = max(values)
    runs: list[tuple[int, int]] = []  # (start, length) of each run of grid points at the best value
    for i, v in enumerate(values):
        if v == best:
            if runs and runs[-1][0] + runs[-1][1] == i:
                runs[-1] = (runs[-1][0], runs[-1][1] + 1)
            else:
                runs.append((i, 1))
    start, length = max(runs, key=lambda r: r[1])  # the first of the longest
    return GRID[start + (length - 1) // 2]


def calibrate_observed(answerable: dict[str, Observed], negatives: dict[str, Observed], source: str
                       ) -> dict[str, Any]:
    """The result stored on the pack version. Keys of both dicts are the question texts (they decide the split)."""
    parts = {name: ([o for q, o in answerable.items() if split_of(q) == name],
                    [o for q, o in negatives.items() if split_of(q) == name]) for name in ("tune", "report")}
    tune_a, tune_n = parts["tune"]
    result: dict[str, Any] = {"threshold": None, "default": DEFAULT_MIN_RELEVANCE, "negatives_source": source,
                              "rule": RULE, "computed_at": datetime.now(UTC).isoformat(timespec="seconds")}
    if len(tune_a) < MIN_ANSWERABLE or len(tune_n) < MIN_NEGATIVES:
        result["reason"] = (f"too few questions to calibrate: the tune split has {len(tune_a)} answerable and "
                            f"{len(tune_n)} unanswerable ({source}); it needs {MIN_ANSWERABLE} and {MIN_NEGATIVES}. "
                            f"The default {DEFAULT_MIN_RELEVANCE} applies")
        return result
    chosen = choose(tune_a, tune_n)
    result["threshold"] = chosen
    for name, (a, n) in parts.items():
        result[name] = {"chosen": figures(a, n, chosen), "default": figures(a, n, DEFAULT_MIN_RELEVANCE)}
    return result


def observations(tenant_id: str, pack_version: int, questions: Sequence[Question], unanswerable: Sequence[str] | None,
                 *, top_k: int, embedder: Embedder, sparse_encoder: SparseEncoder, vector_store: VectorStore,
                 term_stats: TermStats | None) -> tuple[dict[str, Observed], dict[str, Observed], str]:
    """Every question retrieved as the orchestrator would (top `top_k` of `pack_version`): the answerable, the
    negatives, and where the negatives came from (`tenant` or `generated`)."""
    def passages(text: str) -> list[Passage]:
        return retrieve(tenant_id, text, top_k=top_k, filters={"pack_version": pack_version}, embedder=embedder,
                        sparse_encoder=sparse_encoder, vector_store=vector_store, term_stats=term_stats)

    source = "tenant"
    if not unanswerable:
        source = "generated"
        unanswerable = generated_negatives([q.question for q in questions], embedder.embed_query)
    answerable = {q.question: observe(passages(q.question), q) for q in questions}
    negatives = {text: observe(passages(text), None) for text in unanswerable}
    return answerable, negatives, source


def calibrate(tenant_id: str, pack_version: int, questions: Sequence[Question], unanswerable: Sequence[str] | None,
              **retrieval: Any) -> dict[str, Any]:
    """Retrieve every question (`retrieval`: as `observations` takes), then choose."""
    answerable, negatives, source = observations(tenant_id, pack_version, questions, unanswerable, **retrieval)
    return {**calibrate_observed(answerable, negatives, source), "pack_version": pack_version}


def for_build(d: Deps, eval_key: str, tenant_id: str, version: int, stats: TermStats | None) -> dict[str, Any]:
    """The calibration of a version from the tenant's stored eval sets (`eval_key`: its `_eval.jsonl`)."""
    from app.config import get_settings
    from app.knowledge.evaluate import parse_questions

    try:
        questions = parse_questions(d.objects.get(eval_key))
    except KeyError:
        return not_calibrated(f"no eval questions (_eval.jsonl in the pack): the default {DEFAULT_MIN_RELEVANCE} "
                              "applies")
    return calibrate(tenant_id, version, questions, stored_unanswerable(d.objects, tenant_id),
                     top_k=get_settings().retrieval_top_k, embedder=d.embedder, sparse_encoder=d.sparse,
                     vector_store=d.vectors, term_stats=stats)


def not_calibrated(reason: str) -> dict[str, Any]:
    return {"threshold": None, "default": DEFAULT_MIN_RELEVANCE, "reason": reason,
            "computed_at": datetime.now(UTC).isoformat(timespec="seconds")}


def in_effect(policies: dict[str, Any], calibration: dict[str, Any] | None) -> tuple[float, str]:
    """The threshold the assistant uses and where it comes from: `policy` (set explicitly: it wins), `calibrated`
    (the live version's calibration) or `default`."""
    explicit = policies.get("min_relevance")
    if explicit is not None:
        return float(explicit), "policy"
    threshold = (calibration or {}).get("threshold")
    if threshold is not None:
        return float(threshold), "calibrated"
    return DEFAULT_MIN_RELEVANCE, "default"


class CalibrationError(ValueError):
    """A recalibration that cannot be done; `status` is the HTTP status that says why."""

    def __init__(self, message: str, status: int = 409) -> None:
        super().__init__(message)
        self.status = status


def relevance(session: Session, tenant_id: str) -> dict[str, Any]:
    """What the admin API and `switchboard eval --calibrate` show: the threshold in effect and its source, the
    explicit policy (if any) and the live version's calibration with its figures."""
    from app.models import PackVersion, Tenant

    tenant = session.get_one(Tenant, tenant_id)
    live = tenant.live_pack_version
    row = None if live is None else session.scalars(
        select(PackVersion).where(PackVersion.tenant_id == tenant_id, PackVersion.version == live)).first()
    found = row.calibration if row is not None else None
    threshold, source = in_effect(tenant.policies or {}, found)
    return {"in_effect": threshold, "source": source, "policy": (tenant.policies or {}).get("min_relevance"),
            "calibrated": (found or {}).get("threshold"), "pack_version": live, "calibration": found}


def recompute(session: Session, d: Deps, tenant_id: str, version: int | None = None, actor: str = "operator"
              ) -> dict[str, Any]:
    """Calibrate `version` (default: the live one) again from the tenant's stored eval sets; flushes."""
    from app.audit import record
    from app.knowledge import termstats, versions
    from app.models import Tenant

    version = version if version is not None else session.get_one(Tenant, tenant_id).live_pack_version
    if version is None:
        raise CalibrationError("no live pack version to calibrate: ingest knowledge first")
    try:
        row = versions.get_version(session, tenant_id, version)
    except versions.VersionError as exc:
        raise CalibrationError(str(exc), 404) from exc
    if row.status not in versions.PROMOTABLE:
        raise CalibrationError(f"pack version {version} is {row.status}: only a built version can be calibrated")
    row.calibration = for_build(d, eval_key(tenant_id), tenant_id, version,
                                termstats.for_version(tenant_id, version, d.embedder, session))
    record(session, tenant_id, actor, "knowledge.relevance_calibrated", "pack_version", str(version),
           {"threshold": row.calibration.get("threshold")})
    session.flush()
    return {**relevance(session, tenant_id), "recomputed_version": version, "recomputed": row.calibration}
