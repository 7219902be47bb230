"""The embedder alone on the long-documentation pack's chunk texts: what each way of spending the 2 cores and
each per-text cost lever gives, in texts/s and in CPU-seconds per text (the machine is shared, so wall clock
is noisy; CPU per text is not).

    .venv/bin/python benchmarks/longdoc_embedder.py [--pack DIR] [--sample 121] [--configs t1,t2,2x1,t1-128,2x1-128]

Every `--sample`-th chunk text of the pack (chunked as ingestion chunks it), in calls of 256 texts as
ingestion makes them (app/knowledge/pipeline.py CALL_TEXTS), through `MiniLMEmbedder.embed_documents`:
- `t1`: one model, one onnxruntime thread (the default);
- `t2`: one model, two intra-op threads;
- `1x2`: one model of one thread, called from two Python threads at once, each taking the next call from one
  queue (onnxruntime runs concurrent calls of one session side by side; what `SWITCHBOARD_INGEST_THREADS=0`
  does on 2 cores, app/knowledge/pipeline.py);
- `2x1`: two models of one thread each, each on its own Python thread, taking calls from one queue;
- a `-128` suffix: documents truncated at 128 tokens instead of 256.
Reports per config: texts/s (wall), CPU-seconds per text (process CPU, every thread), the CPU share used, the
load average around it, and the quiet-machine projection `cores / CPU-per-text` (2 cores for `t2` and `2x1`, 1
for `t1`), which assumes the cores are free and the work scales with them.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def run(config: str, texts: list[str], cache: Path) -> dict[str, Any]:
    from app.providers.embeddings.minilm import MiniLMEmbedder

    name, _, cap = config.partition("-")
    tokens = int(cap) if cap else 256
    models = [MiniLMEmbedder(cache, threads=2 if name == "t2" else 1, max_tokens=tokens)
              for _ in range(2 if name == "2x1" else 1)]
    for m in models:
        m.embed_documents(["warm up"])
    if name == "1x2":
        models = models * 2
    calls: queue.Queue[list[str]] = queue.Queue()
    for start in range(0, len(texts), 256):
        calls.put(texts[start : start + 256])

    def work(model: MiniLMEmbedder) -> None:
        while True:
            try:
                batch = calls.get_nowait()
            except queue.Empty:
                return
            model.embed_documents(batch)

    load = os.getloadavg()[0]
    began, cpu = time.perf_counter(), time.process_time()
    threads = [threading.Thread(target=work, args=(m,)) for m in models]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall, cpu_s = time.perf_counter() - began, time.process_time() - cpu
    cores = 1 if name == "t1" else 2
    return {"config": config, "texts": len(texts), "wall_s": round(wall, 1), "texts_per_s": round(len(texts) / wall, 2),
            "cpu_ms_per_text": round(1000 * cpu_s / len(texts), 1), "cpu_share": round(cpu_s / wall, 2),
            "quiet_texts_per_s": round(cores * len(texts) / cpu_s, 1),
            "load": [round(load, 1), round(os.getloadavg()[0], 1)]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pack", type=Path, default=Path("~/.cache/switchboard-bench/pydoc-pack").expanduser())
    parser.add_argument("--sample", type=int, default=121)
    parser.add_argument("--configs", default="1x2,1x2-128,t1,t2,2x1")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    from longdoc_ingest import chunk_texts

    texts = chunk_texts(args.pack, 120)[:: args.sample]
    cache = Path(tempfile.mkdtemp(prefix="sb-embedder-"))
    results = []
    for config in args.configs.split(","):
        results.append(run(config, texts, cache))
        print(json.dumps(results[-1]), flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    main()
