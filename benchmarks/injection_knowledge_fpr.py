"""Prompt-injection false positives on held-out knowledge: does the learned model flag benign knowledge passages?

Knowledge chunks are judged by the rules alone (app/assistant/injection.py, `passage_verdict`) because the model
flagged 34 of COVID-QA's 213 entries, a choice made looking at COVID-QA. This measures both on another corpus.

Corpus: ../shared/data/qa/dstc11_track5 `kb_snippets.jsonl` (hotels and restaurants: FAQ answers and review
sentences; the only other knowledge corpus in ../shared/data/qa). The model's training set holds a sample of 3,000
of these snippets as benign passages (benchmarks/injection_data.py, `benign_passages`); those are left out here,
so every snippet scanned is one the model never saw. The remaining snippets of each entity become a pack as a
tenant would write it: its FAQ entries as one CSV (one chunk per entry, "Q: ...\nA: ...") and its review
sentences as one Markdown page (chunked at the pack's chunk size), through the real parser and chunker; the
chunk's embedding text (heading and text) is what is scanned, as at ingestion.

    .venv/bin/python benchmarks/injection_knowledge_fpr.py [--show 10]
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import platform
import random
import sys
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATA = ROOT.parent / "shared" / "data" / "qa" / "dstc11_track5" / "kb_snippets.jsonl"


def held_out_chunks() -> dict[str, list[str]]:
    from app.config import get_settings
    from app.knowledge.chunk import chunk_document
    from app.knowledge.parse import SourceFile, parse
    from benchmarks.injection_data import SEED

    snippets = [json.loads(line) for line in DATA.open()]
    trained = {s["snippet_id"] for s in random.Random(SEED).sample(snippets, min(3000, len(snippets)))}
    by_entity: dict[str, dict[str, list[dict[str, str]]]] = defaultdict(lambda: defaultdict(list))
    for s in snippets:
        if s["snippet_id"] not in trained:
            by_entity[s["tenant"]][s["doc_type"]].append(s)
    chunks: dict[str, list[str]] = {"faq": [], "review": []}
    size = get_settings().chunk_max_words
    for entity in sorted(by_entity):
        docs = by_entity[entity]
        if docs.get("faq"):
            out = io.StringIO()
            writer = csv.writer(out)
            writer.writerow(["question", "answer"])
            writer.writerows((s["question"], s["text"]) for s in docs["faq"])
            doc = parse(SourceFile("faq.csv", out.getvalue().encode()))
            chunks["faq"] += [c.embedding_text() for c in chunk_document(doc, size)]
        if docs.get("review"):
            name = docs["review"][0]["entity_name"]
            body = "\n\n".join(s["text"] for s in docs["review"])
            doc = parse(SourceFile("reviews.md", f"# What guests say about {name}\n\n{body}\n".encode()))
            chunks["review"] += [c.embedding_text() for c in chunk_document(doc, size)]
    return chunks


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--show", type=int, default=5, help="print this many flagged chunks per detector")
    args = parser.parse_args()
    from app.assistant.injection import default_model, detect_injection, detect_with_rules

    model = default_model()
    t0 = time.perf_counter()
    sets = held_out_chunks()
    print(f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, load average "
          f"{os.getloadavg()[0]:.1f}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; chunks built in "
          f"{time.perf_counter() - t0:.1f} s; model threshold {model.threshold}\n")
    print("| chunks | n | median words | rules alone (what ships for knowledge) | model alone | rules + model |")
    print("|---|---:|---:|---:|---:|---:|")
    flagged: dict[str, list[str]] = defaultdict(list)
    for name, texts in (*sets.items(), ("all", sets["faq"] + sets["review"])):
        rules = model_alone = both = 0
        for text in texts:
            r = detect_with_rules(text).flagged
            verdict = detect_injection(text)
            m = (verdict.model_score or 0.0) >= model.threshold
            rules, model_alone, both = rules + r, model_alone + m, both + verdict.flagged
            if name != "all":
                if r:
                    flagged["rules"].append(text)
                if m:
                    flagged["model"].append(f"{verdict.model_score:.2f} {text}")
        words = sorted(len(t.split()) for t in texts)
        n = len(texts)
        print(f"| {name} | {n} | {words[n // 2]} | {rules} ({rules / n:.4f}) | {model_alone} ({model_alone / n:.4f}) "
              f"| {both} ({both / n:.4f}) |")
    for who, texts in flagged.items():
        print(f"\nFlagged by the {who} ({len(texts)}), first {args.show}:")
        for text in texts[: args.show]:
            print("  -", " ".join(text.split())[:220])


if __name__ == "__main__":
    main()
