"""Retrieval quality and embedding cost on a real FAQ corpus: deepset's COVID-QA FAQ (213 pairs) with 244
human-written paraphrased questions whose gold answer is one FAQ (../shared/data/qa/covid_faq, Apache-2.0).

    .venv/bin/python benchmarks/retrieval_covid.py [--data ../shared/data/qa/covid_faq] [--batch-size 16]

The corpus goes through the same path as a tenant's pack: `faq_corpus.jsonl` is parsed and chunked by
app/knowledge (one FAQ per chunk, "Q: ...\nA: ..." under the question as heading), embedded by
app/knowledge/representation.py (full view, question view, BM25 terms) and indexed in a real EdgeVectorStore
in a temporary folder, twice: as tenant "bench" with the question view and as tenant "bench-full-only"
without it (what indexing did before the question view). Each query is then run through that store: dense
only, sparse only (BM25: our saturated term frequencies times Qdrant's IDF) and hybrid (all views and BM25
fused, what `retrieve` does), each with the plain query embedding and with the IDF-weighted one
(app/knowledge/termstats.py, statistics counted over the corpus' chunks as ingestion counts a version's).
Metrics: hit@1, hit@5 and MRR@10 against the gold FAQ, and how many
returned points belong to another tenant (must be 0). Also: indexing throughput (chunks/s, all views and
the upsert) against the embedder's own texts/s on the same chunks, and the process's peak RSS.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app.knowledge.chunk import chunk_document
from app.knowledge.ids import chunk_id
from app.knowledge.parse import SourceFile, parse
from app.knowledge.representation import embed_chunks
from app.knowledge.termstats import collect
from app.providers.embeddings.base import SparseVector
from app.providers.embeddings.minilm import MiniLMEmbedder
from app.providers.embeddings.sparse import TermFrequencyEncoder
from app.providers.vectors.base import ChunkPoint, Hit
from app.providers.vectors.edge import EdgeVectorStore

TENANT = "bench"
FULL_ONLY = "bench-full-only"
DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "qa" / "covid_faq"


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def score(ranked: list[list[int]], gold: list[set[int]]) -> dict[str, float]:
    """`gold` holds the gold FAQ and its exact duplicates: the corpus has the same Q/A three times under two
    ids, and which twin of an exact tie an engine lists first is arbitrary."""
    hits = [[i for i, faq in enumerate(r[:10]) if faq in g] for r, g in zip(ranked, gold, strict=True)]
    n = len(gold)
    return {
        "hit@1": sum(bool(h) and h[0] == 0 for h in hits) / n,
        "hit@5": sum(bool(h) and h[0] < 5 for h in hits) / n,
        "MRR@10": sum(1 / (h[0] + 1) for h in hits if h) / n,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()

    corpus_file = args.data / "faq_corpus.jsonl"
    rows = [json.loads(line) for line in corpus_file.read_text().splitlines() if line.strip()]
    faq_ids = [r["faq_id"] for r in rows]
    twins: dict[tuple[str, str], set[int]] = {}
    for r in rows:
        twins.setdefault((r["question"].strip(), r["answer"].strip()), set()).add(r["faq_id"])
    same_as = {r["faq_id"]: twins[(r["question"].strip(), r["answer"].strip())] for r in rows}
    queries = [json.loads(line) for line in (args.data / "retrieval_queries.jsonl").read_text().splitlines()]
    doc = parse(SourceFile("faq_corpus.jsonl", corpus_file.read_bytes()))
    chunks = chunk_document(doc)
    assert len(chunks) == len(faq_ids), "one FAQ per chunk"
    texts = [c.embedding_text() for c in chunks]
    words = [len(t.split()) for t in texts]
    print(
        f"corpus: {len(chunks)} FAQ chunks (words: mean {statistics.mean(words):.0f}, "
        f"median {statistics.median(words):.0f}, max {max(words)}); {len(queries)} queries",
        flush=True,
    )

    with tempfile.TemporaryDirectory(prefix="sb-bench-") as tmp:
        embedder = MiniLMEmbedder(cache_dir=Path(tmp) / "models", batch_size=args.batch_size)
        embedder.embed_documents(["warm-up"])
        rss_loaded = peak_rss_mb()
        started = time.perf_counter()
        embedder.embed_documents(texts)
        embed_s = time.perf_counter() - started
        print(f"embedder alone: {len(texts)} chunks in {embed_s:.1f}s = {len(texts) / embed_s:.1f} texts/s", flush=True)

        encoder = TermFrequencyEncoder()
        store = EdgeVectorStore(Path(tmp) / "vectors", dim=embedder.dim)
        ids = [chunk_id(TENANT, 1, doc.path, c.ordinal) for c in chunks]
        full_ids = [chunk_id(FULL_ONLY, 1, doc.path, c.ordinal) for c in chunks]
        id_to_faq = dict(zip(ids + full_ids, faq_ids + faq_ids, strict=True))
        started = time.perf_counter()
        vectors = embed_chunks(chunks, doc.kind, embedder, encoder)
        points = [
            ChunkPoint(pid, TENANT, v.dense, v.sparse, {"document": doc.path, "text": c.text}, question=v.question)
            for pid, v, c in zip(ids, vectors, chunks, strict=True)
        ]
        store.upsert(TENANT, points)
        index_s = time.perf_counter() - started
        print(f"indexed {len(chunks)} chunks (all views) in {index_s:.1f}s = {len(chunks) / index_s:.1f} chunks/s")
        store.upsert(
            FULL_ONLY,
            [
                ChunkPoint(pid, FULL_ONLY, v.dense, v.sparse, {"document": doc.path, "text": c.text})
                for pid, v, c in zip(full_ids, vectors, chunks, strict=True)
            ],
        )

        stats = collect(embedder, texts)
        assert stats is not None
        started = time.perf_counter()
        q_dense, q_weighted = [], []
        for q in queries:
            plain, weighted = embedder.embed_query_weighted(q["query"], stats.weight)
            q_dense.append(plain)
            q_weighted.append(weighted)
        q_embed_s = time.perf_counter() - started
        q_sparse = [encoder.encode_query(q["query"]) for q in queries]
        gold = [same_as[q["gold_faq_id"]] for q in queries]
        Search = Callable[[str, list[float], list[float], SparseVector], list[Hit]]

        def ranked(tenant: str, search: Search) -> tuple[list[list[int]], float, int]:
            t0 = time.perf_counter()
            out, foreign = [], 0
            for d, w, s in zip(q_dense, q_weighted, q_sparse, strict=True):
                hits = search(tenant, d, w, s)
                foreign += sum(h.payload.get("tenant_id") != tenant for h in hits)
                out.append([id_to_faq[h.id] for h in hits])
            return out, (time.perf_counter() - t0) / len(queries) * 1000, foreign

        modes: dict[str, tuple[str, Search]] = {
            "dense, full view only (before)": (FULL_ONLY, lambda t, d, w, s: store.search(t, d, limit=10)),
            "sparse (BM25 via IDF)": (TENANT, lambda t, d, w, s: store.sparse_search(t, s, limit=10)),
            "hybrid, full view + BM25": (FULL_ONLY, lambda t, d, w, s: store.search(t, d, s, limit=10)),
            "dense, best of question and full view": (TENANT, lambda t, d, w, s: store.search(t, d, limit=10)),
            "dense, best view, IDF-weighted query": (
                TENANT, lambda t, d, w, s: store.search(t, d, limit=10, rank_by=w)
            ),
            "hybrid, both views + BM25, plain query": (TENANT, lambda t, d, w, s: store.search(t, d, s, limit=10)),
            "hybrid, both views + BM25, IDF-weighted query (now)": (
                TENANT, lambda t, d, w, s: store.search(t, d, s, limit=10, rank_by=w)
            ),
        }
        results = {}
        for name, (tenant, fn) in modes.items():
            ranking, ms, foreign = ranked(tenant, fn)
            results[name] = (score(ranking, gold), ms, foreign)
        store.close()

    print()
    print(
        f"Machine: {platform.machine()}, {platform.system()} {platform.release()}, Python "
        f"{platform.python_version()}; date {datetime.now(UTC):%Y-%m-%d}"
    )
    print()
    print("| mode | hit@1 | hit@5 | MRR@10 | search ms/query | other tenants' hits |")
    print("|---|---|---|---|---|---|")
    for name, (m, ms, foreign) in results.items():
        print(f"| {name} | {m['hit@1']:.3f} | {m['hit@5']:.3f} | {m['MRR@10']:.3f} | {ms:.2f} | {foreign} |")
    print()
    print("| step | texts | seconds | per second | mean words |")
    print("|---|---|---|---|---|")
    q_words = statistics.mean(len(q["query"].split()) for q in queries)
    print(
        f"| embedder alone, full view (batch {args.batch_size}) | {len(texts)} | {embed_s:.1f} "
        f"| {len(texts) / embed_s:.1f} texts/s | {statistics.mean(words):.0f} |"
    )
    print(
        f"| indexing: both views + BM25 + upsert | {len(texts)} | {index_s:.1f} | {len(texts) / index_s:.1f} chunks/s "
        f"| {statistics.mean(words):.0f} |"
    )
    print(
        f"| queries (plain + IDF-weighted, one model pass) | {len(queries)} | {q_embed_s:.1f} "
        f"| {len(queries) / q_embed_s:.1f} texts/s | {q_words:.0f} |"
    )
    print()
    print(f"Peak RSS: {rss_loaded:.0f} MB after loading the model, {peak_rss_mb():.0f} MB at the end.")


if __name__ == "__main__":
    main()
