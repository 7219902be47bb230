"""Knowledge pack versions, embedded mode: ingestion throughput against the embedder's own, a rebuild of an
unchanged pack (embeddings computed: 0), and promote / rollback latency (commit included).

The pack: the example tenant's knowledge plus the COVID-QA FAQ (../shared/data/qa/covid_faq, when present), in
a throwaway SWITCHBOARD_HOME with the real MiniLM int8 embedder.

    .venv/bin/python benchmarks/knowledge_versions.py [--switches 50]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from app.bootstrap import container

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
COVID = REPO.parent / "shared" / "data" / "qa" / "covid_faq"


def _pack(root: Path) -> Path:
    pack = root / "pack"
    shutil.copytree(REPO / "tenants" / "northwind" / "knowledge", pack)
    if (COVID / "faq_corpus.jsonl").is_file():
        shutil.copy(COVID / "faq_corpus.jsonl", pack / "covid-faq.jsonl")
    return pack


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--switches", type=int, default=50)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="sb-bench-") as tmp:
        os.environ["SWITCHBOARD_HOME"] = str(Path(tmp, "home"))
        from sqlalchemy import select

        from app.db import get_sessionmaker, migrate
        from app.knowledge import versions
        from app.knowledge.service import ingest_paths
        from app.models import Chunk, Tenant

        migrate()
        pack = _pack(Path(tmp))
        with get_sessionmaker()(info={"cross_tenant": "benchmark setup"}) as db:
            db.add(Tenant(id="bench", slug="bench", name="Bench"))
            db.commit()
            container().embedder.embed_documents(["warm up"])  # model load is not ingestion
            first = ingest_paths(db, "bench", [pack], deps=container().knowledge)
            db.commit()
            texts = [f"{c.heading}\n{c.text}" if c.heading else c.text
                     for c in db.scalars(select(Chunk).where(Chunk.tenant_id == "bench"))]
            started = time.perf_counter()
            for i in range(0, len(texts), 64):
                container().embedder.embed_documents(texts[i : i + 64])
            embed_s = time.perf_counter() - started
            second = ingest_paths(db, "bench", [pack], deps=container().knowledge)
            db.commit()
            switch: dict[str, list[float]] = {"promote": [], "rollback": []}
            for _ in range(args.switches):
                t0 = time.perf_counter()
                versions.rollback(db, "bench")
                db.commit()
                t1 = time.perf_counter()
                versions.promote(db, "bench", second.pack_version)
                db.commit()
                t2 = time.perf_counter()
                switch["rollback"].append(t1 - t0)
                switch["promote"].append(t2 - t1)
    result = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "date": time.strftime("%Y-%m-%d"),
        "pack": {"documents": first.documents, "chunks": first.chunks},
        "first_ingest": {"seconds": first.seconds, "chunks_per_s": round(first.chunks / first.seconds, 1),
                         "embedded": first.embedded},
        "embedder_alone": {"texts_per_s": round(len(texts) / embed_s, 1), "seconds": round(embed_s, 2)},
        "unchanged_reingest": {"seconds": second.seconds, "embedded": second.embedded,
                               "chunks": second.chunks},
        **{f"{k}_ms": {"median": round(statistics.median(v) * 1000, 2), "max": round(max(v) * 1000, 2)}
           for k, v in switch.items()},
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
