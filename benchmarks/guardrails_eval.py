"""Guardrail quality on the shared third-party data sets. Prints markdown tables for docs/benchmarks.md.

    .venv/bin/python benchmarks/guardrails_eval.py [--data ../shared/data]

PII (presidio_synth, 1,600 sentences): span precision/recall per type we redact (a predicted span counts when
it overlaps a gold span of the same type) and the leak rate: the fraction of gold PII strings still present
verbatim in the redacted text, for the types we cover and, for honesty, for the types we do not (names and
addresses come only with the optional `[ner]` extra). Per-type recall and false positives on a held-out split:
benchmarks/pii_eval.py.

Injection: detection rate on the 692 attacks and false-positive rate on the 339 benign trigger-word prompts of
dev_set.jsonl, and the false-positive rate on banking77's 3,080 benign test queries.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections import Counter, defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app.assistant.guardrails import detect_injection
from app.assistant.pii import redact_pii

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


def eval_injection(data: Path) -> str:
    rows = [json.loads(line) for line in (data / "prompt_injection" / "dev_set.jsonl").open()]
    by_source: dict[tuple[str, int], list[bool]] = defaultdict(list)
    for row in rows:
        by_source[(row["source"].split(" ")[0], row["label"])].append(detect_injection(row["text"]).flagged)
    attacks = [f for (_, label), fl in by_source.items() if label == 1 for f in fl]
    benign = [f for (_, label), fl in by_source.items() if label == 0 for f in fl]
    with (data / "intents" / "banking77" / "test.csv").open() as fh:
        banking = [detect_injection(r["text"]).flagged for r in csv.DictReader(fh)]
    lines = ["| injection set | rows | flagged | rate |", "|---|---:|---:|---:|"]
    for (source, label), flags in sorted(by_source.items()):
        kind = "attack" if label else "benign"
        lines.append(f"| {source} ({kind}) | {len(flags)} | {sum(flags)} | {sum(flags) / len(flags):.3f} |")
    lines.append(f"| **detection rate** (all attacks) | {len(attacks)} | {sum(attacks)} | "
                 f"{sum(attacks) / len(attacks):.3f} |")
    lines.append(f"| **false-positive rate** (NotInject benign) | {len(benign)} | {sum(benign)} | "
                 f"{sum(benign) / len(benign):.3f} |")
    lines.append(f"| **false-positive rate** (banking77 test) | {len(banking)} | {sum(banking)} | "
                 f"{sum(banking) / len(banking):.4f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    args = parser.parse_args()
    if not args.data.is_dir():
        sys.exit(f"data folder {args.data} not found; pass --data path/to/shared/data")
    print("## PII redaction (presidio_synth)\n")
    print(eval_pii(args.data))
    print("\n## Prompt-injection detection\n")
    print(eval_injection(args.data))


if __name__ == "__main__":
    main()
