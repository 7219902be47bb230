"""Tenant-filtered retrieval on DSTC11 Track 5 (../shared/data/qa/dstc11_track5, CDLA-Sharing-1.0): 143 hotels
and restaurants, each loaded as its own tenant with its FAQ pairs and review sentences (10,882 snippets in
one vector store), queried with the validation dialogues' knowledge-seeking turns.

    .venv/bin/python benchmarks/retrieval_dstc11.py [--data ../shared/data/qa/dstc11_track5] [--tenants N]

Each snippet is one chunk, represented the way ingestion represents it (app/knowledge/representation.py): a
FAQ pair is "Q: ...\\nA: ..." under its question as heading, with the question as a second dense view; a
review sentence is plain text. Every tenant is indexed twice in one EdgeVectorStore: as itself (all views)
and as "<tenant>#full-only" (no question view: what indexing did before it existed).

Each knowledge-seeking turn is searched inside each of its gold tenants (the entity the dialogue is about)
with limit 5. recall@5 = |gold snippets of that tenant in the top 5| / |gold snippets of that tenant|,
averaged over (turn, tenant) pairs; success@5 = at least one gold snippet in the top 5. The query is what
the orchestrator would search with (the customer's message, i.e. the user turn) or, for comparison, the turn
with the previous user turn, or the whole dialogue. Every returned point whose tenant is not the searched one
is counted (must be 0).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app.knowledge.chunk import TextChunk
from app.knowledge.representation import embed_chunks
from app.knowledge.termstats import TermStats, collect
from app.providers.embeddings.base import SparseVector
from app.providers.embeddings.minilm import MiniLMEmbedder
from app.providers.embeddings.sparse import TermFrequencyEncoder
from app.providers.vectors.base import ChunkPoint, Hit
from app.providers.vectors.edge import EdgeVectorStore

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "qa" / "dstc11_track5"
FULL_ONLY = "#full-only"
Search = Callable[[str, list[float], list[float], SparseVector], list[Hit]]


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def snippet_chunk(snippet: dict[str, Any]) -> tuple[str, TextChunk]:
    """(kind, chunk) as ingestion would build it: FAQ pairs like app/knowledge/chunk.py's, reviews as text."""
    if snippet["doc_type"] == "faq" and snippet.get("question"):
        q = snippet["question"].strip()
        return "faq", TextChunk(0, q, f"Q: {q}\nA: {snippet['text'].strip()}")
    return "text", TextChunk(0, "", snippet["text"].strip())


def query_text(turn: dict[str, Any], context: str) -> str:
    if context == "user turn":
        return str(turn["user_turn"])
    if context == "previous user turn + user turn":
        users = [c["text"] for c in turn["context"] if c["speaker"] == "U"][-1:]
        return " ".join([*users, turn["user_turn"]])
    return " ".join([*(c["text"] for c in turn["context"]), turn["user_turn"]])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--tenants", type=int, default=0, help="only the first N tenants (0: all), for a quick run")
    parser.add_argument("--params", default="", help='before/after of the fusion parameters: "W:E,W:E" (keyword '
                        "weight : IDF exponent) runs only the shipped mode on the user turn, once per pair")
    args = parser.parse_args()

    snippets = [json.loads(line) for line in (args.data / "kb_snippets.jsonl").read_text().splitlines() if line]
    tenants = sorted({s["tenant"] for s in snippets}, key=lambda t: (t.split("/")[0], int(t.split("/")[1])))
    if args.tenants:
        tenants = tenants[: args.tenants]
    keep = set(tenants)
    snippets = [s for s in snippets if s["tenant"] in keep]
    turns = [
        t
        for t in (json.loads(line) for line in (args.data / "eval_turns.jsonl").read_text().splitlines() if line)
        if t["knowledge_seeking"] and keep & set(t["gold_tenants"])
    ]
    print(f"{len(tenants)} tenants, {len(snippets)} snippets, {len(turns)} knowledge-seeking turns", flush=True)

    with tempfile.TemporaryDirectory(prefix="sb-bench-") as tmp:
        embedder = MiniLMEmbedder(cache_dir=Path(tmp) / "models")
        embedder.embed_documents(["warm-up"])
        encoder = TermFrequencyEncoder()
        store = EdgeVectorStore(Path(tmp) / "vectors", dim=embedder.dim)
        point_to_snippet: dict[str, str] = {}
        by_tenant: dict[str, list[dict[str, Any]]] = defaultdict(list)
        stats: dict[str, TermStats] = {}
        for s in snippets:
            by_tenant[s["tenant"]].append(s)
        started = time.perf_counter()
        for n, tenant in enumerate(tenants, start=1):
            points: dict[str, list[ChunkPoint]] = {tenant: [], tenant + FULL_ONLY: []}
            by_kind: dict[str, list[tuple[dict[str, Any], TextChunk]]] = defaultdict(list)
            for s in by_tenant[tenant]:
                kind, chunk = snippet_chunk(s)
                by_kind[kind].append((s, chunk))
            counted = collect(embedder, [c.embedding_text() for items in by_kind.values() for _, c in items])
            assert counted is not None
            stats[tenant] = counted
            for kind, items in by_kind.items():
                vectors = embed_chunks([c for _, c in items], kind, embedder, encoder)
                for (s, c), v in zip(items, vectors, strict=True):
                    for name, question in ((tenant, v.question), (tenant + FULL_ONLY, None)):
                        pid = str(uuid.uuid5(uuid.NAMESPACE_URL, f"{name}/{s['snippet_id']}"))
                        point_to_snippet[pid] = s["snippet_id"]
                        payload = {"document": s["doc_type"], "text": c.text}
                        points[name].append(ChunkPoint(pid, name, v.dense, v.sparse, payload, question=question))
            for name, batch in points.items():
                store.upsert(name, batch)
            if n % 20 == 0 or n == len(tenants):
                elapsed = time.perf_counter() - started
                print(f"  indexed {n}/{len(tenants)} tenants, {elapsed:.0f}s", flush=True)
        index_s = time.perf_counter() - started
        rss_indexed = peak_rss_mb()

        contexts = ["user turn"] if args.params else ["user turn", "previous user turn + user turn", "whole dialogue"]
        queries = {c: [query_text(t, c) for t in turns] for c in contexts}
        dense = {c: embedder.embed_documents(q) for c, q in queries.items()}
        sparse = {c: [encoder.encode_query(x) for x in q] for c, q in queries.items()}

        def evaluate(context: str, suffix: str, search: Search) -> tuple[float, float, int, float]:
            recalls, successes, foreign, calls = [], [], 0, 0
            t0 = time.perf_counter()
            for i, turn in enumerate(turns):
                for tenant in turn["gold_tenants"]:
                    gold = {g for g in turn["gold_snippet_ids"] if g.startswith(tenant + "/")}
                    if tenant not in keep or not gold:
                        continue
                    _, weighted = embedder.embed_query_weighted(queries[context][i], stats[tenant].weight)
                    hits = search(tenant + suffix, dense[context][i], weighted, sparse[context][i])
                    calls += 1
                    foreign += sum(h.payload.get("tenant_id") != tenant + suffix for h in hits)
                    found = gold & {point_to_snippet[h.id] for h in hits}
                    recalls.append(len(found) / len(gold))
                    successes.append(bool(found))
            ms = (time.perf_counter() - t0) / max(calls, 1) * 1000
            return sum(recalls) / len(recalls), sum(successes) / len(successes), foreign, ms

        modes: list[tuple[str, str, str, Search]] = [
            ("dense, full view only", "user turn", FULL_ONLY, lambda t, d, w, s: store.search(t, d, limit=5)),
            ("sparse (BM25)", "user turn", "", lambda t, d, w, s: store.sparse_search(t, s, limit=5)),
            ("hybrid, full view + BM25", "user turn", FULL_ONLY, lambda t, d, w, s: store.search(t, d, s, limit=5)),
            ("dense, best view", "user turn", "", lambda t, d, w, s: store.search(t, d, limit=5)),
            (
                "dense, best view, IDF-weighted query",
                "user turn",
                "",
                lambda t, d, w, s: store.search(t, d, limit=5, rank_by=w),
            ),
            (
                "hybrid, both views + BM25, plain query",
                "user turn",
                "",
                lambda t, d, w, s: store.search(t, d, s, limit=5),
            ),
        ]
        modes += [
            (
                "hybrid, both views + BM25, IDF-weighted query (now)",
                c,
                "",
                lambda t, d, w, s: store.search(t, d, s, limit=5, rank_by=w),
            )
            for c in contexts
        ]
        chosen: dict[str, tuple[float, float]] = {}
        if args.params:
            from app.knowledge import termstats
            from app.providers.vectors import common

            shipped = modes[-len(contexts)]
            modes = []
            for pair in args.params.split(","):
                weight, exponent = (float(x) for x in pair.split(":"))
                name = f"{shipped[0]}, keyword weight {weight}, IDF exponent {exponent}"
                chosen[name] = (weight, exponent)
                modes.append((name, "user turn", "", shipped[3]))
        rows = []
        for n, (name, context, suffix, fn) in enumerate(modes, start=1):
            if name in chosen:  # read at call time by the fusion and by TermStats.weight
                common.KEYWORD_WEIGHT, termstats.IDF_EXPONENT = chosen[name]
            rows.append((name, context, *evaluate(context, suffix, fn)))
            print(f"  searched mode {n}/{len(modes)}: {name} ({context}): recall@5 {rows[-1][2]:.3f}", flush=True)
        store.close()

    print()
    print(
        f"Machine: {platform.machine()}, {platform.system()} {platform.release()}, Python "
        f"{platform.python_version()}; date {datetime.now(UTC):%Y-%m-%d}"
    )
    print()
    print("| mode | query | recall@5 | success@5 | search ms/query | other tenants' hits |")
    print("|---|---|---|---|---|---|")
    for name, context, recall, success, foreign, ms in rows:
        print(f"| {name} | {context} | {recall:.3f} | {success:.3f} | {ms:.2f} | {foreign} |")
    print()
    print(
        f"Indexing {len(snippets)} snippets (both views, BM25, upsert twice): {index_s:.0f}s = "
        f"{len(snippets) / index_s:.1f} chunks/s. Peak RSS {rss_indexed:.0f} MB after indexing, "
        f"{peak_rss_mb():.0f} MB at the end."
    )


if __name__ == "__main__":
    main()
