"""Long documentation at the embedder's speed: time to live, chunks/s against the embedder's own texts/s on the
same chunk texts, peak RSS, ETA accuracy and retrieval quality on a ~20 MB, ~2,600-page pack.

    .venv/bin/python benchmarks/longdoc_ingest.py [--pack DIR] [--sample 5] [--json out.json]

The pack is the Python standard library's and some installed packages' documentation rendered to Markdown by
benchmarks/longdoc_pack.py (built first if `--pack` does not exist). The run, in one process, on a fresh
embedded home (SQLite, qdrant-edge, file object store, the default MiniLM embedder):
1. the embedder alone, on every `--sample`-th chunk text of the pack (chunked exactly as ingestion chunks it),
   in calls of the size ingestion makes (app/knowledge/pipeline.py CALL_TEXTS): texts/s, first half;
2. `operations.ingest` (what `switchboard ingest` runs): parse, chunk, embed, BM25, rows, upserts, term
   statistics and promotion, until the version is live; the progress events' ETA is recorded;
3. the embedder alone again, second half of the sample (the machine is shared: averaging before and after
   evens out a load that changes during the run);
4. `switchboard eval`'s scoring on benchmarks/data/longdoc_questions.jsonl, tune and held-out splits apart.
Peak RSS is the process's maximum resident set (it includes the embedder-alone step 1, which is smaller).

The questions (benchmarks/data/longdoc_questions.jsonl, 80) were written by hand for this pack: what a developer
would ask, in their own words, each with the one page that answers it; none names its page's module (a page's
heading is its module name). Split by a fixed rule: question i (0-based, file order) is `tune` when i % 3 == 0
(27), `heldout` otherwise (53). Choose retrieval parameters on `tune`; report `heldout`.
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
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

QUESTIONS = Path(__file__).resolve().parent / "data" / "longdoc_questions.jsonl"


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def chunk_texts(pack: Path, max_words: int) -> list[str]:
    from app.knowledge.chunk import chunk_document
    from app.knowledge.collect import collect
    from app.knowledge.parse import parse

    files, _ = collect([pack], max_bytes=1 << 30)
    texts: list[str] = []
    for f in files:
        texts.extend(c.embedding_text() for c in chunk_document(parse(f), max_words))
    return texts


def questions(pack: Path, gold_max_chunks: int | None) -> list[tuple[int, dict[str, Any]]]:
    """(index in the file, question); with `gold_max_chunks`, only those whose page has at most that many chunks
    (a cheaper run: the long pages are most of the questions' chunks). The index keeps the tune/heldout split."""
    from app.knowledge.chunk import chunk_document
    from app.knowledge.collect import collect
    from app.knowledge.parse import parse

    lines = [json.loads(line) for line in QUESTIONS.read_text().splitlines() if line.strip()]
    if gold_max_chunks is None:
        return list(enumerate(lines))
    files, _ = collect([pack / q["expected_document"] for q in lines if (pack / q["expected_document"]).exists()],
                       max_bytes=1 << 30)
    size = {f.path: len(chunk_document(parse(f), 120)) for f in files}
    return [(i, q) for i, q in enumerate(lines) if size.get(q["expected_document"], 0) <= gold_max_chunks]


def subset(pack: Path, every: int, gold: set[str]) -> Path:
    out = Path(tempfile.mkdtemp(prefix="sb-longdoc-subset-"))
    for i, page in enumerate(sorted(pack.glob("*.md"))):
        if i % every == 0 or page.name in gold:
            (out / page.name).write_bytes(page.read_bytes())
    return out


def embedder_alone(embedder: Any, texts: list[str], call: int, threads: int = 1) -> dict[str, float]:
    """`texts` in calls of `call`, made by `threads` threads at once (as ingestion's pipeline makes them)."""
    import queue
    import threading

    calls: queue.Queue[list[str]] = queue.Queue()
    for start in range(0, len(texts), call):
        calls.put(texts[start : start + call])

    def work() -> None:
        while True:
            try:
                embedder.embed_documents(calls.get_nowait())
            except queue.Empty:
                return

    began, cpu = time.perf_counter(), time.process_time()
    workers = [threading.Thread(target=work) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    wall = time.perf_counter() - began
    return {"texts": len(texts), "seconds": round(wall, 2), "cpu_s": round(time.process_time() - cpu, 2),
            "texts_per_s": round(len(texts) / wall, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pack", type=Path, default=Path("~/.cache/switchboard-bench/pydoc-pack").expanduser())
    parser.add_argument("--sample", type=int, default=5, help="embed every N-th chunk text for the baseline")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--every", type=int, default=1, help="ingest every N-th page only, plus every page a "
                        "question is about (for a machine too loaded to ingest the whole pack: say so with the "
                        "numbers, the haystack is N times smaller)")
    parser.add_argument("--no-questions", action="store_true", help="with --every: leave the questions' pages "
                        "out and score nothing (a timing run)")
    parser.add_argument("--gold-max-chunks", type=int, default=None, help="only the questions whose page has at "
                        "most this many chunks (with --every: a cheaper run for comparing settings)")
    args = parser.parse_args()
    if not args.pack.exists():
        import longdoc_pack

        print("building the pack:", longdoc_pack.build(args.pack), flush=True)
    asked = [] if args.no_questions else questions(args.pack, args.gold_max_chunks)
    if args.every > 1:
        args.pack = subset(args.pack, args.every, {q["expected_document"] for _, q in asked})

    home = Path(tempfile.mkdtemp(prefix="sb-longdoc-"))
    os.environ["SWITCHBOARD_HOME"] = str(home)
    os.environ["SWITCHBOARD_MAX_PACK_FILES"] = "100000"
    from app import operations
    from app.bootstrap import container
    from app.config import get_settings
    from app.db import migrate
    from app.knowledge.cli import run_eval
    from app.knowledge.pipeline import CALL_TEXTS

    migrate()
    settings = get_settings()
    load_before = os.getloadavg()
    texts = chunk_texts(args.pack, settings.chunk_max_words)
    sample = texts[:: args.sample]
    # The embedder as `switchboard ingest` runs it: its embedder (INGEST_MAX_TOKENS), from as many threads.
    embedder = container().ingest_embedder
    threads = container().ingestion(dedicated=True).threads
    embedder.embed_documents(["warm up"])  # the model loads once, outside every timing
    first = embedder_alone(embedder, sample[: len(sample) // 2], CALL_TEXTS, threads)
    print("embedder alone (first half):", first, flush=True)

    operations.create_tenant("docs", "Docs")
    events: list[dict[str, Any]] = []
    last = [0.0]

    def progress(event: Any) -> None:
        now = time.monotonic()
        if now - last[0] >= 10 or event.files_done == event.files_total:
            last[0] = now
            events.append({**event.to_dict(), "rss_mb": round(rss_mb(), 1)})
            print(f"  {event.files_done}/{event.files_total} files, {event.chunks} chunks, "
                  f"{event.chunks_per_s:.1f} chunks/s, eta {event.eta_s}s, rss {rss_mb():.0f} MB", flush=True)

    cpu = time.process_time()
    began = time.perf_counter()
    report = operations.ingest(container(), "docs", [args.pack], progress, dedicated=True)  # as the CLI
    live_s = time.perf_counter() - began
    ingest_cpu = time.process_time() - cpu
    rss = peak_rss_mb()
    load_during = os.getloadavg()
    second = embedder_alone(embedder, sample[len(sample) // 2 :], CALL_TEXTS, threads)
    print("embedder alone (second half):", second, flush=True)
    alone = (first["texts"] + second["texts"]) / (first["seconds"] + second["seconds"])

    scores = {}
    for split in () if args.no_questions else ("tune", "heldout"):
        chosen = "\n".join(json.dumps(q) for i, q in asked if ("tune" if i % 3 == 0 else "heldout") == split)
        scores[split] = {k: v for k, v in run_eval(container(), "docs", chosen).items() if k != "pack_version"}
    # ETA accuracy: at a quarter and at half of the bytes, the estimate against the time that was really left.
    files_end = events[-1]["elapsed_s"] if events else live_s
    eta_checks = []
    for share in (0.25, 0.5):
        at = next((e for e in events if e["bytes_total"] and e["bytes_done"] >= share * e["bytes_total"]), None)
        if at is not None and at["eta_s"] is not None:
            left = round(files_end - at["elapsed_s"], 1)
            eta_checks.append({"at_bytes": share, "eta_s": at["eta_s"], "actual_s": left})
    result = {
        "every": args.every,
        "questions": len(asked),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()} {os.cpu_count()} cores, {platform.python_implementation()} "
                   f"{platform.python_version()}",
        "load_average": {"before": [round(x, 2) for x in load_before],
                         "after_ingest": [round(x, 2) for x in load_during],
                         "end": [round(x, 2) for x in os.getloadavg()]},
        "pack": {"pages": report["documents"] + len(report["files_failed"]), "bytes": sum(
            p.stat().st_size for p in args.pack.glob("*.md"))},
        "status": report["status"],
        "documents": report["documents"],
        "refused": len(report["files_failed"]),
        "chunks": report["chunks"],
        "settings": {"ingest_threads": threads, "ingest_max_tokens": settings.ingest_max_tokens,
                     "ingest_dedupe": settings.ingest_dedupe},
        "embedded": report["embedded"],
        "reused": report["reused"],  # of the embedded texts, given an earlier text's vector (INGEST_DEDUPE)
        "cpu_ms_per_chunk": round(1000 * ingest_cpu / max(1, report["chunks"]), 1),
        "time_to_live_s": round(live_s, 1),
        "ingest_cpu_s": round(ingest_cpu, 1),
        "timings": report.get("timings", {}),
        "chunks_per_s": round(report["chunks"] / live_s, 2),
        "embedder_alone_texts_per_s": round(alone, 2),
        "embedder_alone": [first, second],
        "ratio": round(report["chunks"] / live_s / alone, 3),
        "peak_rss_mb": round(rss, 1),
        # RSS at a quarter, half, three quarters and the end of the files: flat means bounded.
        "rss_mb_over_time": [e["rss_mb"] for e in events[:: max(1, len(events) // 4)]] + (
            [events[-1]["rss_mb"]] if events else []),
        "eta": eta_checks,
        "scores": scores,
    }
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    container().close()


if __name__ == "__main__":
    main()
