"""Automatic relevance-threshold calibration (app/knowledge/calibration.py) on the example tenant and on COVID-QA.

Each pack is ingested into a fresh embedded home; every eval question is retrieved as the orchestrator retrieves
it (top 5 of the live version); the threshold is chosen on the tune split (SHA-256 of the question text, first
hex digit even) by the module's rule, and answer / escalate precision and recall are reported on the report
split, at the chosen threshold and at the fixed 0.45.

- northwind: tenants/northwind/eval/questions.jsonl (76) and unanswerable.jsonl (20, the tenant's own negatives);
  and again with generated negatives instead (what a tenant without unanswerable questions gets), to see how
  far those stand in for real ones.
- covid: ../shared/data/qa/covid_faq as one JSONL FAQ (213 entries), its 244 paraphrased queries as the eval
  questions; no unanswerable set exists, so the negatives are generated (app/knowledge/offtopic_questions.txt:
  the example pack's answerable questions and one BANKING77 query per intent, minus those near COVID queries).

    .venv/bin/python benchmarks/calibration_eval.py [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
NORTHWIND = REPO / "tenants" / "northwind"
COVID = REPO.parent / "shared" / "data" / "qa" / "covid_faq"


def run(slug: str, questions_text: str, unanswerable: list[str] | None, cache: Path | None = None
        ) -> dict[str, Any]:
    """The calibration of the tenant's live version; with `cache`, the retrieved scores are kept there (and read
    back on the next run), so the rule can be re-applied without retrieving again."""
    from app.knowledge import calibration

    if cache is not None and cache.is_file():
        data = json.loads(cache.read_text())
        answerable = {q: calibration.Observed(tuple(s), tuple(r)) for q, (s, r) in data["answerable"].items()}
        negatives = {q: calibration.Observed(tuple(s), tuple(r)) for q, (s, r) in data["negatives"].items()}
        return {**calibration.calibrate_observed(answerable, negatives, data["source"]), "seconds": 0}
    result = _observe(slug, questions_text, unanswerable)
    if cache is not None:
        cache.write_text(json.dumps({
            "source": result["source"],
            "answerable": {q: [o.scores, o.right] for q, o in result["answerable"].items()},
            "negatives": {q: [o.scores, o.right] for q, o in result["negatives"].items()}}))
    return {**calibration.calibrate_observed(result["answerable"], result["negatives"], result["source"]),
            "seconds": result["seconds"]}


def _observe(slug: str, questions_text: str, unanswerable: list[str] | None) -> dict[str, Any]:
    from app.bootstrap import container
    from app.config import get_settings
    from app.db import session_scope
    from app.knowledge import calibration, termstats
    from app.knowledge.evaluate import parse_questions
    from app.tenants.service import get_by_slug

    with session_scope(cross_tenant="benchmark setup") as session:
        tenant = get_by_slug(session, slug)
        tenant_id, version = tenant.id, tenant.live_pack_version
        assert version is not None
        d = container().knowledge
        stats = termstats.for_version(tenant_id, version, d.embedder, session)
    t0 = time.perf_counter()
    answerable, negatives, source = calibration.observations(
        tenant_id, version, parse_questions(questions_text), unanswerable, top_k=get_settings().retrieval_top_k,
        embedder=d.embedder, sparse_encoder=d.sparse, vector_store=d.vectors, term_stats=stats)
    return {"answerable": answerable, "negatives": negatives, "source": source,
            "seconds": round(time.perf_counter() - t0, 1)}


def row(name: str, result: dict[str, Any]) -> list[str]:
    lines = []
    for split in ("tune", "report"):
        for which in ("default", "chosen"):
            f = result[split][which]
            lines.append(
                f"| {name} | {split} | {f['threshold']}{' (chosen)' if which == 'chosen' else ''} | "
                f"{f['right']}/{f['answerable']} | {f['wrong']} | {f['escalated']} | "
                f"{f['negatives_answered']}/{f['negatives']} | {f['answer_precision']} | {f['answer_recall']} | "
                f"{f['escalate_precision']} | {f['escalate_recall']} | {f['value']} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--cache", type=Path, help="folder to keep the retrieved scores in (and read them from)")
    args = parser.parse_args()
    if args.cache is not None and (args.cache / "covid.json").is_file():
        print_results(args, {name: run("", "", None, args.cache / f"{key}.json") for name, key in CASES.items()})
        return
    home = Path(tempfile.mkdtemp(prefix="sb-calib-bench-"))
    os.environ["SWITCHBOARD_HOME"] = str(home)
    for var in ("DATABASE_URL", "REDIS_URL", "QDRANT_URL", "S3_BUCKET", "LLM_BASE_URL", "LLM_API_KEY"):
        os.environ.pop(var, None)
    from app import operations
    from app.bootstrap import container
    from app.db import migrate
    from benchmarks.faq_shapes import build_pack, load, questions

    migrate()
    operations.create_tenant("northwind", folder=NORTHWIND)
    operations.ingest(container(), "northwind", [NORTHWIND / "knowledge"])
    rows, queries = load(COVID)
    single = build_pack("jsonl", rows, home / "covid-pack")
    operations.create_tenant("covid")
    operations.ingest(container(), "covid", [home / "covid-pack"])
    covid_questions = "\n".join(json.dumps(q) for q in questions(rows, queries, single))

    northwind_q = (NORTHWIND / "eval" / "questions.jsonl").read_text()
    own = [json.loads(line)["question"] for line in (NORTHWIND / "eval" / "unanswerable.jsonl").read_text()
           .splitlines() if line.strip()]
    inputs = {"northwind-own": ("northwind", northwind_q, own), "northwind-generated": ("northwind", northwind_q, None),
              "covid": ("covid", covid_questions, None)}
    if args.cache is not None:
        args.cache.mkdir(parents=True, exist_ok=True)
    print_results(args, {name: run(*inputs[key], args.cache / f"{key}.json" if args.cache else None)
                         for name, key in CASES.items()})


CASES = {"northwind, its own unanswerable questions": "northwind-own",
         "northwind, generated negatives": "northwind-generated", "covid, generated negatives": "covid"}


def print_results(args: argparse.Namespace, results: dict[str, Any]) -> None:
    meta = {"date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"), "machine": f"{platform.machine()}, "
            f"{os.cpu_count()} cores", "load_average_1m": round(os.getloadavg()[0], 2)}
    if args.json:
        print(json.dumps({"meta": meta, "results": results}, indent=2))
        return
    print(meta)
    print("| tenant, negatives | split | threshold | answerable answered right | answered wrong | escalated | "
          "negatives answered | answer precision | answer recall | escalate precision | escalate recall | value |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name, result in results.items():
        print("\n".join(row(name, result)))
    for name, result in results.items():
        print(name, "chosen", result["threshold"], "in", result["seconds"], "s")


if __name__ == "__main__":
    main()
