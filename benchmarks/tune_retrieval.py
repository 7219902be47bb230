"""Choose the retrieval parameters on the tuning half of the COVID-QA queries, report them on the held-out half.

    .venv/bin/python benchmarks/tune_retrieval.py [--data ../shared/data/qa/covid_faq]

The split is benchmarks/faq_shapes.py's `split_of` (SHA-256 of the query id: even first hex digit = tune). The
FAQ is chunked and embedded as ingestion does (every view: full, question, BM25), then every query's fused
score is computed for every chunk in numpy, for each point of a grid:

- `keyword weight`: how much BM25 (as a share of the query's best) adds to the better view's cosine
  (app/providers/vectors/common.py KEYWORD_WEIGHT);
- `IDF exponent`: the query pooled with each token's IDF raised to this power (0: the plain mean; 1: what
  app/knowledge/termstats.py does);
- `views`: the better of the full and the question view, or the full view only.

The store fuses the top candidates of each list rather than every chunk; on 213 chunks with 40 candidates per
list the two agree on the top 10 (the shipped setting's simulated numbers match the store's, printed below).
Exact ties (the corpus has three entries twice) count for either copy. The grid point with the best tuning
MRR (then hit@1) is chosen; both halves are printed for every point so the choice can be checked.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app.knowledge.chunk import chunk_document
from app.knowledge.parse import SourceFile, parse
from app.knowledge.representation import embed_chunks
from app.knowledge.termstats import collect
from app.providers.embeddings.minilm import MiniLMEmbedder
from app.providers.embeddings.sparse import TermFrequencyEncoder
from app.providers.vectors.base import ChunkPoint
from app.providers.vectors.common import KEYWORD_WEIGHT
from app.providers.vectors.edge import EdgeVectorStore
from benchmarks.faq_shapes import DEFAULT_DATA, load, split_of

WEIGHTS = (0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3)
EXPONENTS = (0.0, 0.5, 1.0, 1.5, 2.0)


def metrics(scores: np.ndarray, gold: list[set[int]]) -> dict[str, float]:
    """hit@1, hit@5, MRR@10 of `scores` (queries x chunks), ties broken by chunk order as the store does
    (stable sort), a twin of the gold counting as the gold."""
    order = np.argsort(-scores, axis=1, kind="stable")[:, :10]
    ranks = []
    for row, g in zip(order, gold, strict=True):
        hits = [i for i, c in enumerate(row) if int(c) in g]
        ranks.append(hits[0] + 1 if hits else None)
    n = len(gold)
    return {"hit@1": sum(r == 1 for r in ranks) / n, "hit@5": sum(r is not None and r <= 5 for r in ranks) / n,
            "mrr": sum(1 / r for r in ranks if r) / n}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    args = parser.parse_args()
    rows, queries = load(args.data)
    lines = "\n".join(json.dumps({"question": r["question"], "answer": r["answer"]}) for r in rows)
    doc = parse(SourceFile("covid-faq.jsonl", lines.encode()))
    chunks = chunk_document(doc)
    twins: dict[tuple[str, str], set[int]] = {}
    for i, r in enumerate(rows):
        twins.setdefault((r["question"], r["answer"]), set()).add(i)
    index_of = {r["faq_id"]: i for i, r in enumerate(rows)}
    gold = [twins[(rows[index_of[q["gold_faq_id"]]]["question"], rows[index_of[q["gold_faq_id"]]]["answer"])]
            for q in queries]
    split = np.array([split_of(q["qid"]) for q in queries])

    with tempfile.TemporaryDirectory(prefix="sb-tune-") as tmp:
        embedder = MiniLMEmbedder(cache_dir=Path(tmp) / "models")
        encoder = TermFrequencyEncoder()
        vectors = embed_chunks(chunks, doc.kind, embedder, encoder)
        full = np.array([v.dense for v in vectors])
        question = np.array([v.question if v.question is not None else v.dense for v in vectors])
        stats = collect(embedder, [c.embedding_text() for c in chunks])
        assert stats is not None
        store = EdgeVectorStore(Path(tmp) / "vectors", dim=embedder.dim)
        ids = [f"00000000-0000-0000-0000-{i:012d}" for i in range(len(chunks))]
        store.upsert("t", [ChunkPoint(pid, "t", v.dense, v.sparse, {"i": i}, question=v.question)
                           for i, (pid, v) in enumerate(zip(ids, vectors, strict=True))])
        bm25 = np.zeros((len(queries), len(chunks)))
        for qi, q in enumerate(queries):
            for hit in store.sparse_search("t", encoder.encode_query(q["query"]), limit=len(chunks)):
                bm25[qi, int(hit.payload["i"])] = hit.score
        best = bm25.max(axis=1, keepdims=True)
        lexical = np.divide(bm25, best, out=np.zeros_like(bm25), where=best > 0)
        store.close()
        results: list[tuple[dict[str, Any], dict[str, dict[str, float]]]] = []
        for exponent in EXPONENTS:
            qv = np.array([embedder.embed_query_weighted(q["query"], lambda t, e=exponent: stats.idf(t) ** e)[1]
                           for q in queries])
            for views in ("both", "full"):
                semantic = qv @ full.T if views == "full" else np.maximum(qv @ full.T, qv @ question.T)
                for weight in WEIGHTS:
                    fused = semantic + weight * lexical
                    got = {s: metrics(fused[split == s], [g for g, x in zip(gold, split, strict=True) if x == s])
                           for s in ("tune", "heldout")}
                    results.append(({"keyword weight": weight, "IDF exponent": exponent, "views": views}, got))

    chosen = max(results, key=lambda r: (round(r[1]["tune"]["mrr"], 6), r[1]["tune"]["hit@1"]))
    shipped = next(r for r in results if r[0] == {"keyword weight": KEYWORD_WEIGHT, "IDF exponent": 1.0,
                                                    "views": "both"})
    print(f"{len(queries)} queries: {int((split == 'tune').sum())} tune, {int((split == 'heldout').sum())} held out")
    print()
    print("| keyword weight | IDF exponent | views | tune hit@1 | tune hit@5 | tune MRR | held-out hit@1 "
          "| held-out hit@5 | held-out MRR |")
    print("|---|---|---|---|---|---|---|---|---|")
    for params, got in results:
        mark = " **chosen**" if (params, got) == chosen else (" (shipped)" if (params, got) == shipped else "")
        t, h = got["tune"], got["heldout"]
        print(f"| {params['keyword weight']}{mark} | {params['IDF exponent']} | {params['views']} | {t['hit@1']:.3f} "
              f"| {t['hit@5']:.3f} | {t['mrr']:.3f} | {h['hit@1']:.3f} | {h['hit@5']:.3f} | {h['mrr']:.3f} |")
    print()
    print("chosen on the tuning half:", chosen[0], "held out:", chosen[1]["heldout"])
    print("shipped before:", shipped[0], "held out:", shipped[1]["heldout"])


if __name__ == "__main__":
    main()
