"""The same FAQ in the shapes brands upload, through `switchboard eval`: does the shape change the answer?

    .venv/bin/python benchmarks/faq_shapes.py [--data ../shared/data/qa/covid_faq] [--repeat 2] [--out DIR]

Builds four packs from deepset's COVID-QA FAQ (213 pairs, ../shared/data/qa/covid_faq, Apache-2.0):

- `md-per-entry`: one Markdown file per entry, `# <question>` then the answer (a help centre's export);
- `md-one-file`: one Markdown file, `# COVID-19 FAQ` then `## <question>` and the answer, entry after entry;
- `html`: one HTML page, `<h1>` then `<h2>` per question and `<p>` per paragraph of its answer;
- `jsonl`: one JSONL file of `{"question", "answer"}` lines (the FAQ path);

and for each, in a fresh SWITCHBOARD_HOME (embedded mode: SQLite, qdrant-edge, MiniLM), runs the CLI a user
runs: `switchboard tenant create`, `switchboard ingest`, `switchboard eval --json` on the 244 paraphrased
queries, split by a fixed rule into a tuning half and a held-out half (`split_of`: the first hex digit of the
SHA-256 of the query's `qid`, even = tune, odd = held out). A query's expected passage is its gold FAQ's file
(and, where one file holds many entries, its question as `expected_heading`); the corpus has the same entry
twice under two ids three times, and either copy counts.

`--repeat 2` builds every pack twice, each time in a new home, and reports whether the scores are identical
(determinism). Prints a Markdown table for docs/benchmarks.md with the machine, the date and the load average.
"""

from __future__ import annotations

import argparse
import hashlib
import html
import json
import os
import platform
import subprocess
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "qa" / "covid_faq"
SHAPES = ("md-per-entry", "md-one-file", "html", "jsonl")
TENANT = "covid"


def split_of(qid: str) -> str:
    """The fixed split of a query: 'tune' or 'heldout', from the SHA-256 of its id (no randomness, no state)."""
    return "tune" if int(hashlib.sha256(qid.encode()).hexdigest()[0], 16) % 2 == 0 else "heldout"


def load(data: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    rows = [json.loads(line) for line in (data / "faq_corpus.jsonl").read_text().splitlines() if line.strip()]
    for r in rows:
        r["question"] = " ".join(r["question"].split())
        r["answer"] = r["answer"].strip()
    queries = [json.loads(line) for line in (data / "retrieval_queries.jsonl").read_text().splitlines()
               if line.strip()]
    return rows, queries


def entry_file(faq_id: int) -> str:
    return f"faq-{faq_id:03d}.md"


def html_answer(answer: str) -> str:
    """An answer as HTML: a `<p>` per paragraph, `<br>` for a line break inside one."""
    return "".join("<p>" + "<br>".join(html.escape(line) for line in p.strip().split("\n")) + "</p>"
                   for p in answer.split("\n\n") if p.strip())


def build_pack(shape: str, rows: list[dict[str, Any]], folder: Path) -> str:
    """Write the pack; returns the file that holds every entry ("" when each entry has its own file)."""
    folder.mkdir(parents=True)
    if shape == "md-per-entry":
        for r in rows:
            (folder / entry_file(r["faq_id"])).write_text(f"# {r['question']}\n\n{r['answer']}\n")
        return ""
    if shape == "md-one-file":
        parts = ["# COVID-19 FAQ\n"] + [f"## {r['question']}\n\n{r['answer']}\n" for r in rows]
        (folder / "covid-faq.md").write_text("\n".join(parts))
        return "covid-faq.md"
    if shape == "html":
        items = [f"<h2>{html.escape(r['question'])}</h2>\n{html_answer(r['answer'])}" for r in rows]
        page = ("<!doctype html><html><head><title>COVID-19 FAQ</title></head><body><main><h1>COVID-19 FAQ</h1>\n"
                + "\n".join(items) + "\n</main></body></html>\n")
        (folder / "covid-faq.html").write_text(page)
        return "covid-faq.html"
    if shape == "jsonl":
        lines = [json.dumps({"question": r["question"], "answer": r["answer"]}) for r in rows]
        (folder / "covid-faq.jsonl").write_text("\n".join(lines) + "\n")
        return "covid-faq.jsonl"
    raise ValueError(shape)


def questions(rows: list[dict[str, Any]], queries: list[dict[str, Any]], single_file: str) -> list[dict[str, Any]]:
    """Eval lines: the gold entry's file (every copy's, for a duplicated entry) and, in a one-file pack, its
    question as the expected heading."""
    by_id = {r["faq_id"]: r for r in rows}
    twins: dict[tuple[str, str], list[int]] = {}
    for r in rows:
        twins.setdefault((r["question"], r["answer"]), []).append(r["faq_id"])
    out = []
    for q in queries:
        gold = by_id[q["gold_faq_id"]]
        line: dict[str, Any] = {"question": q["query"], "qid": q["qid"]}
        if single_file:
            line["expected_document"] = single_file
            line["expected_heading"] = gold["question"]
        else:
            line["expected_document"] = [entry_file(i) for i in twins[(gold["question"], gold["answer"])]]
        out.append(line)
    return out


def sb(home: Path, *args: str) -> dict[str, Any]:
    env = {**os.environ, "SWITCHBOARD_HOME": str(home)}
    done = subprocess.run([str(ROOT / ".venv" / "bin" / "switchboard"), *args], env=env, capture_output=True,
                          text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"switchboard {' '.join(args)} failed: {done.stderr[-2000:]}")
    return dict(json.loads(done.stdout))


def run_shape(shape: str, rows: list[dict[str, Any]], queries: list[dict[str, Any]], tmp: Path,
              attempt: int) -> dict[str, Any]:
    base = tmp / f"{shape}-{attempt}"
    pack = base / "pack"
    single = build_pack(shape, rows, pack)
    home = base / "home"
    sb(home, "tenant", "create", TENANT, "--json")
    started = time.perf_counter()
    report = sb(home, "ingest", "--tenant", TENANT, str(pack), "--json")
    ingest_s = time.perf_counter() - started
    lines = questions(rows, queries, single)
    scores: dict[str, Any] = {"chunks": report.get("version_chunks", report.get("chunks")), "ingest_s": ingest_s}
    for split in ("tune", "heldout", "all"):
        chosen = [x for x in lines if split == "all" or split_of(x["qid"]) == split]
        qfile = base / f"questions-{split}.jsonl"
        qfile.write_text("\n".join(json.dumps({k: v for k, v in x.items() if k != "qid"}) for x in chosen) + "\n")
        scores[split] = sb(home, "eval", "--tenant", TENANT, "--questions", str(qfile), "--json")
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--repeat", type=int, default=2, help="fresh homes per shape (2: a determinism check)")
    parser.add_argument("--shapes", default=",".join(SHAPES))
    args = parser.parse_args()
    rows, queries = load(args.data)
    splits = {s: sum(split_of(q["qid"]) == s for q in queries) for s in ("tune", "heldout")}
    print(f"{len(rows)} entries, {len(queries)} queries: {splits['tune']} tune, {splits['heldout']} held out",
          flush=True)
    load_before = os.getloadavg()
    results: dict[str, list[dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory(prefix="sb-faq-shapes-") as tmp:
        for shape in args.shapes.split(","):
            for attempt in range(args.repeat):
                got = run_shape(shape, rows, queries, Path(tmp), attempt)
                results.setdefault(shape, []).append(got)
                print(shape, attempt, json.dumps(got), flush=True)
    load_after = os.getloadavg()
    print()
    print(f"Machine: {platform.node()}, {platform.machine()}, {os.cpu_count()} cores, Python "
          f"{platform.python_version()}; date {datetime.now(UTC):%Y-%m-%d %H:%M} UTC; load average "
          f"{load_before[0]:.1f} before, {load_after[0]:.1f} after")
    print()
    print("| shape | chunks | tune hit@1 | tune hit@5 | held-out hit@1 | held-out hit@5 | held-out MRR | all hit@1 "
          "| all hit@5 | identical in fresh homes |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for shape, runs in results.items():
        first = runs[0]
        same = all({k: r[k] for k in ("chunks", "tune", "heldout", "all")}
                   == {k: first[k] for k in ("chunks", "tune", "heldout", "all")} for r in runs)
        t, h, a = first["tune"], first["heldout"], first["all"]
        print(f"| {shape} | {first['chunks']} | {t['hit@1']:.3f} | {t['hit@5']:.3f} | {h['hit@1']:.3f} "
              f"| {h['hit@5']:.3f} | {h['mrr']:.3f} | {a['hit@1']:.3f} | {a['hit@5']:.3f} "
              f"| {'yes' if same else 'NO'} ({len(runs)} runs) |")


if __name__ == "__main__":
    main()
