"""A burst of questions embedded at once, as the orchestrator's workers ask for them: `--customers` threads each
embed one question (with the term weights retrieval uses) at the same moment, through the embedder's
micro-batcher, with 1 and with 2 model calls side by side (`MiniLMEmbedder(query_calls=...)`).

    .venv/bin/python benchmarks/query_burst.py [--customers 64] [--rounds 7] [--calls 1 2]

Printed per setting: the time until the last question of a burst is embedded (median and range over the rounds)
and the process CPU per question (onnxruntime's threads included), from getrusage.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def burst(embedder: object, questions: list[str]) -> float:
    """Seconds from the common start to the last question embedded."""
    barrier = threading.Barrier(len(questions) + 1)
    done: list[float] = []

    def ask(text: str) -> None:
        barrier.wait()
        embedder.embed_query_weighted(text, lambda token: 1.0 + token % 3)  # type: ignore[attr-defined]
        done.append(time.perf_counter())

    threads = [threading.Thread(target=ask, args=(q,)) for q in questions]
    for thread in threads:
        thread.start()
    barrier.wait()
    start = time.perf_counter()
    for thread in threads:
        thread.join()
    return max(done) - start


def main() -> None:
    from app.providers.embeddings.minilm import MiniLMEmbedder

    parser = argparse.ArgumentParser()
    parser.add_argument("--customers", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--calls", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    eval_file = REPO / "tenants" / "northwind" / "eval" / "questions.jsonl"
    pool = [json.loads(line)["question"] for line in eval_file.open()]
    print(f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} cores, Python "
          f"{platform.python_version()}; load {os.getloadavg()[0]:.1f}; {args.customers} questions per burst")
    cache = Path(tempfile.mkdtemp(prefix="sb-models-"))
    embedders = {n: MiniLMEmbedder(cache_dir=cache, query_calls=n) for n in args.calls}
    for embedder in embedders.values():
        burst(embedder, pool[:8])  # load the model
    results: dict[int, tuple[list[float], float, int]] = {n: ([], 0.0, 0) for n in args.calls}
    for round_no in range(args.rounds):  # interleaved, so both see the same load
        questions = [f"{pool[(round_no * 7 + i) % len(pool)]} ({round_no}.{i})" for i in range(args.customers)]
        for n, embedder in embedders.items():
            calls_before = embedder.queries.stats.calls
            before = cpu_s()
            wall = burst(embedder, questions)
            walls, cpu, calls = results[n]
            walls.append(wall)
            results[n] = (walls, cpu + cpu_s() - before, calls + embedder.queries.stats.calls - calls_before)
    for n, (walls, cpu, calls) in results.items():
        questions_total = args.rounds * args.customers
        print(f"{n} call(s) at once: last question embedded after {statistics.median(walls) * 1000:.0f} ms "
              f"(median; {min(walls) * 1000:.0f}-{max(walls) * 1000:.0f}), CPU {cpu * 1000 / questions_total:.1f} "
              f"ms per question, {calls / args.rounds:.0f} model calls per burst")
    print(f"load after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
