"""The hand-built stack issue 8 compares Switchboard with, measured on this machine under the same closed loop as
benchmarks/e2e_widget.py: LangChain + an in-process Chroma collection + the same MiniLM embedder behind one
FastAPI endpoint (benchmarks/handbuilt/app.py), the same example knowledge (tenants/northwind/knowledge), the same
eval questions and the same OpenAI-compatible fake LLM in its own process.

    python3 -m venv .venv-handbuilt && .venv-handbuilt/bin/pip install -r benchmarks/handbuilt/requirements.txt
    .venv/bin/python benchmarks/handbuilt_stack.py --python .venv-handbuilt/bin/python [--levels 1,8,32]
                                                   [--requests 400] [--llm instant]

Each level starts `concurrency` clients (one HTTP client each); each asks the questions one after another, each
as soon as the answer to the one before arrived (`POST /chat`: the answer is in the response), until the level
has `--requests` answers. Printed per level as e2e_widget.py prints Switchboard's: req/s, p50/p95/p99 ms, errors,
server CPU ms per answer, the load generator's CPU ms per answer, the server's peak RSS; then the machine's speed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.e2e_widget import FakeLLM, Served, free_port, machine_speed, percentile  # noqa: E402


class HandBuilt(Served):
    def __init__(self, python: str, llm: FakeLLM, home: Path) -> None:
        from app.providers.embeddings.minilm import prepare_model_dir

        port = free_port()
        env = {**os.environ, "KNOWLEDGE": str(ROOT / "tenants/northwind/knowledge"), "PORT": str(port),
               "MODEL_DIR": str(prepare_model_dir(home / "models")), "LLM_BASE_URL": llm.base_url,
               "LLM_API_KEY": llm.api_key, "HF_HUB_OFFLINE": "1", "ANONYMIZED_TELEMETRY": "False"}
        super().__init__([python, str(ROOT / "benchmarks/handbuilt/app.py")], env, home, home / "handbuilt.log",
                         port, "/ready")


async def run_level(server: HandBuilt, questions: list[str], concurrency: int, requests: int) -> dict[str, Any]:
    latencies: list[float] = []
    state = {"issued": 0, "errors": 0, "first_error": None}
    server.reset_peak_rss()

    async def client(index: int) -> None:
        async with httpx.AsyncClient(timeout=60) as http:
            n = 0
            while state["issued"] < requests:
                state["issued"] += 1
                question = questions[(index * 7 + n) % len(questions)]
                n += 1
                started = time.perf_counter()
                try:
                    response = await http.post(f"{server.url}/chat", json={"question": question})
                    response.raise_for_status()
                    latencies.append(time.perf_counter() - started)
                except httpx.HTTPError as exc:
                    state["errors"] += 1
                    state["first_error"] = state["first_error"] or repr(exc)

    cpu0, t0, mine0 = server.cpu_s(), time.perf_counter(), time.process_time()
    await asyncio.gather(*(client(i) for i in range(concurrency)))
    elapsed, cpu, mine = time.perf_counter() - t0, server.cpu_s() - cpu0, time.process_time() - mine0
    done = len(latencies)
    return {"concurrency": concurrency, "replies": done, "req_s": round(done / elapsed, 1),
            "p50_ms": round(percentile(latencies, 0.50) * 1000), "p95_ms": round(percentile(latencies, 0.95) * 1000),
            "p99_ms": round(percentile(latencies, 0.99) * 1000), "errors": state["errors"],
            "cpu_ms_per_msg": round(cpu * 1000 / done, 1) if done else None,
            "client_cpu_ms_per_msg": round(mine * 1000 / done, 1) if done else None,
            "peak_rss_mb": round(server.peak_rss_mb()), "first_error": state["first_error"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--python", required=True, help="the hand-built virtualenv's interpreter")
    parser.add_argument("--levels", default="1,8,32")
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--llm", choices=["instant", "1s"], default="instant")
    parser.add_argument("--warm-passes", type=int, default=1)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    questions = [json.loads(line)["question"] for line in
                 (ROOT / "tenants/northwind/eval/questions.jsonl").read_text().splitlines() if line.strip()]
    speed_before = machine_speed()
    llm = FakeLLM(0.0 if args.llm == "instant" else 1.0)
    home = Path(tempfile.mkdtemp(prefix="sb-handbuilt-"))
    server = HandBuilt(args.python, llm, home)
    results = []
    try:
        for _ in range(args.warm_passes):
            asyncio.run(run_level(server, questions, 4, len(questions)))
        for level in (int(c) for c in args.levels.split(",")):
            print(f"  c={level} ...", flush=True)
            results.append(asyncio.run(run_level(server, questions, level, args.requests)))
            print("   ", results[-1], flush=True)
    finally:
        server.stop()
        llm.close()
    print(f"\nhand-built stack, {args.llm} LLM; the load generator on the same machine")
    print("| c | answers | req/s | p50 / p95 / p99 ms | errors | server CPU ms/answer | client CPU ms/answer "
          "| peak RSS MB |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['concurrency']} | {r['replies']} | {r['req_s']} | {r['p50_ms']} / {r['p95_ms']} / {r['p99_ms']} "
              f"| {r['errors']} | {r['cpu_ms_per_msg']} | {r['client_cpu_ms_per_msg']} | {r['peak_rss_mb']} |")
    print(f"machine: a loop of 20 M additions took {speed_before} s before, {machine_speed()} s after")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
