"""CPU of one embedded hybrid search (`EdgeVectorStore.search`), on this thread, and a digest of its results.

A synthetic shard (seeded, so every run builds the same one): two tenants of `--points` chunks each, the first
with two pack versions, random unit vectors (FAQ chunks with their own question view), random sparse vectors and
payloads shaped like the ingestion's. Queries are points' vectors plus noise, ranked with a nudged copy (as
retrieval's `rank_by`), with the live pack version as filter, as the orchestrator searches; a few more shapes
(no sparse vector, list filters, other limits) only feed the digest.

    .venv/bin/python benchmarks/vector_search_cpu.py [--points 300] [--searches 2000] [--rounds 5]

Printed: the median over the rounds of the CPU µs per search (`time.thread_time`), every round, and a sha256 of
every hit (id, score as repr, payload): two branches that print the same digest return bit-identical results.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

DIM = 384
VOCAB = 3000


def unit(rng: random.Random, base: list[float] | None = None, noise: float = 1.0) -> list[float]:
    v = [rng.gauss(0.0, 1.0) * noise + (base[k] if base else 0.0) for k in range(DIM)]
    norm = sum(x * x for x in v) ** 0.5
    return [x / norm for x in v]


def sparse(rng: random.Random, terms: int) -> Any:
    from app.providers.embeddings.base import SparseVector

    indices = sorted(rng.sample(range(VOCAB), terms))
    return SparseVector(indices=indices, values=[float(rng.randint(1, 4)) for _ in indices])


def build(store: Any, points: int, rng: random.Random) -> dict[str, list[list[float]]]:
    from app.providers.vectors.base import ChunkPoint

    vectors: dict[str, list[list[float]]] = {}
    for tenant in ("tenant-a", "tenant-b"):
        batch = []
        for n in range(points):
            dense = unit(rng)
            faq = n % 3 == 0
            payload = {
                "chunk_id": f"{tenant}-{n}", "document": f"doc{n % 7}.md", "heading": f"Heading {n % 40}",
                "text": " ".join(f"word{rng.randrange(VOCAB)}" for _ in range(60)), "kind": "faq" if faq else "text",
                "language": "en", "pack_version": 1 if tenant == "tenant-b" or n % 4 else 2,
            }
            batch.append(ChunkPoint(id=str(uuid.UUID(int=rng.getrandbits(128))), tenant_id=tenant, dense=dense,
                                    sparse=sparse(rng, rng.randint(8, 30)), payload=payload,
                                    question=unit(rng, dense, 0.05) if faq else None))
            vectors.setdefault(tenant, []).append(dense)
        store.upsert(tenant, batch)
    return vectors


def queries(vectors: dict[str, list[list[float]]], count: int, rng: random.Random) -> list[tuple[Any, ...]]:
    out = []
    for _ in range(count):
        tenant = "tenant-a" if rng.random() < 0.8 else "tenant-b"
        dense = unit(rng, rng.choice(vectors[tenant]), 0.04)
        out.append((tenant, dense, sparse(rng, rng.randint(3, 8)), unit(rng, dense, 0.01)))
    return out


def digest(store: Any, qs: list[tuple[Any, ...]]) -> str:
    """Every hit of the timed searches and of a few other shapes, hashed."""
    h = hashlib.sha256()
    for n, (tenant, dense, sp, rank) in enumerate(qs):
        calls: list[dict[str, Any]] = [{"sparse": sp, "limit": 5, "filters": {"pack_version": 1}, "rank_by": rank}]
        if n % 10 == 0:
            calls += [
                {"sparse": None, "limit": 3},
                {"sparse": sp, "limit": 8, "filters": {"document": ["doc1.md", "doc2.md"], "kind": "faq"}},
                {"sparse": sp, "limit": 1, "filters": {"pack_version": [1, 2]}, "rank_by": rank},
            ]
        for call in calls:
            hits = store.search(tenant, dense, call.pop("sparse"), **call)
            for hit in hits:
                h.update(json.dumps([hit.id, repr(hit.score), hit.payload], sort_keys=True).encode())
            h.update(b"|")
    return h.hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--points", type=int, default=300)
    parser.add_argument("--searches", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    from app.providers.vectors.edge import EdgeVectorStore

    rng = random.Random(7)
    with tempfile.TemporaryDirectory(prefix="sb-search-") as folder:
        store = EdgeVectorStore(Path(folder) / "vectors", dim=DIM)
        vectors = build(store, args.points, rng)
        qs = queries(vectors, args.searches, rng)
        for tenant, dense, sp, rank in qs[:200]:  # warm up
            store.search(tenant, dense, sp, limit=5, filters={"pack_version": 1}, rank_by=rank)
        rounds = []
        for _ in range(args.rounds):
            start = time.thread_time()
            for tenant, dense, sp, rank in qs:
                store.search(tenant, dense, sp, limit=5, filters={"pack_version": 1}, rank_by=rank)
            rounds.append((time.thread_time() - start) / len(qs) * 1e6)
        print(f"search CPU µs per call: median {statistics.median(rounds):.1f}  rounds "
              + " ".join(f"{r:.1f}" for r in rounds))
        print(f"digest {digest(store, qs)}")
        store.close()


if __name__ == "__main__":
    main()
