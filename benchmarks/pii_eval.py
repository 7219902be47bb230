"""PII detection (app/assistant/pii.py) on presidio_synth: recall and false positives per claimed type, on a
fixed split, and the cost per text. Prints markdown for docs/benchmarks.md.

    .venv/bin/python benchmarks/pii_eval.py [--data ../shared/data] [--split tune|report|all] [--baseline REF]

Split (fixed, documented): a sentence belongs to the *tune* split when its template id is even, to the *report*
split when it is odd (`generated_small.json` and `synth_dataset_v2.json` number their templates separately; the
file is part of the key). Whole templates are held out, so the report split has sentence shapes the rules never
saw. The rules were chosen looking at the tune split only; report numbers come from the other.

Types: presidio_synth labels 17 entity types. We claim six structured ones: EMAIL_ADDRESS -> EMAIL,
PHONE_NUMBER -> PHONE, CREDIT_CARD, IBAN_CODE -> IBAN, US_SSN, IP_ADDRESS. PERSON and STREET_ADDRESS (ADDRESS in
generated_small) are what the optional `[ner]` extra adds; they are not claimed by the default install and are not
measured here (the extra needs a spaCy model this machine does not have). Not claimed: GPE, LOCATION,
ORGANIZATION, DATE_TIME, TITLE, AGE, NRP, ZIP_CODE, DOMAIN_NAME, US_DRIVER_LICENSE.

A predicted span is a true positive when it overlaps a gold span of the same type; recall counts gold spans
overlapped by a prediction of their type; a false positive is a predicted span that overlaps no gold span of its
type (the table says how many of those sit on another gold entity, e.g. a phone number read in a driver's
licence number). Also: false positives on banking77's 3,080 test queries (benign support questions with no PII),
and the time per text of `find_pii` over every sentence, against `--baseline REF` (the git revision whose
app/assistant/guardrails.py held the previous regex detector, `_find_spans`).
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app.assistant.pii import find_pii  # noqa: E402

CLAIMED = {
    "EMAIL_ADDRESS": "EMAIL",
    "PHONE_NUMBER": "PHONE",
    "CREDIT_CARD": "CREDIT_CARD",
    "IBAN_CODE": "IBAN",
    "US_SSN": "US_SSN",
    "IP_ADDRESS": "IP_ADDRESS",
}
FILES = ("synth_dataset_v2.json", "generated_small.json")


def load(data: Path, split: str) -> list[dict[str, Any]]:
    rows = []
    for name in FILES:
        for row in json.loads((data / "pii" / "presidio_synth" / name).read_text()):
            side = "tune" if int(row["template_id"]) % 2 == 0 else "report"
            if split in ("all", side):
                rows.append(row)
    return rows


def _overlap(a: tuple[int, int], b: tuple[int, int]) -> bool:
    return a[0] < b[1] and b[0] < a[1]


# Forms and look-alikes written for this benchmark (not from presidio_synth): each positive must be found with its
# kind, each negative must yield nothing. The same cases are in tests/assistant/test_pii.py.
FORMS = [
    ("PHONE", "Call me on +44 20 7946 0958 please"), ("PHONE", "my cell is 212-736-5000"),
    ("PHONE", "office (212) 736-5000"), ("PHONE", "Ring +49 30 901820 tomorrow"),
    ("PHONE", "UK landline 020 7946 0958"), ("PHONE", "reach me at 212.736.5000 x123"),
    ("PHONE", "Please call 2127365000"), ("PHONE", "whatsapp +15417543010"),
    ("PHONE", "Ana Miranda\n07658225245-Fax"), ("PHONE", "90224810 Mobile"),
    ("US_SSN", "SSN 514-69-0360"), ("US_SSN", "ssn: 514 69 0360"), ("US_SSN", "it is 514.69.0360"),
    ("US_SSN", "my SSN is 514690360"), ("US_SSN", "Social Security number: 853371694"),
    ("IP_ADDRESS", "full 2001:0db8:85a3:0000:0000:8a2e:0370:7334 here"),
    ("IP_ADDRESS", "compressed 2001:db8::8a2e:370:7334"), ("IP_ADDRESS", "loopback ::1 only"),
    ("IP_ADDRESS", "link-local fe80::1%eth0 down"), ("IP_ADDRESS", "mapped ::ffff:192.0.2.128 seen"),
    ("IP_ADDRESS", "bracketed [2001:db8::1]:8080"), ("IP_ADDRESS", "with a port 192.168.1.20:8080"),
    ("IP_ADDRESS", "block 10.0.0.0/8 blocked"),
]
LOOK_ALIKES = [
    "Order 2125551234 has not arrived", "Order #2127365000 was charged twice", "invoice no. 99887766",
    "ref 212 736 5000", "Your order 123-456-7890 shipped", "My driver's license number is 2270-66-1551",
    "ISBN 978-3-16-148410-0", "pages 100-200 and chapters 3-7", "from 1999-2004 we sold 12 345 678 items",
    "I paid 1 200 000 dollars, it costs $1 250 000", "delivered on 2024-05-01 at 10:30, or 12/03/2023",
    "version 2.0.1 and build 10.4.3.2", "256.1.1.1 1.2.3", "room 1204 on floor 12", "3744 Retreat Avenue",
    "SSN 000-12-3456", "SSN 666-12-3456", "SSN 912-34-5678", "SSN 123-00-4567", "SSN 123-45-0000",
    "SSN 123-45 6789", "SSN 111-11-1111", "SSN 078-05-1120", "tracking 514690360", "version 1.2.3.4",
    "MAC 00:1a:2b:3c:4d:5e", "at 10:30:45", "std::vector and a::b", "card 4111 1111 1111 1112",
    "IBAN GB82 WEST 1234 5698 7654 33", "000-12-3456 666-12-3456", "the total was 509 941 264",
    "version 10.12.1.18 crashes on start", "Order 2125551234-Home delivery was late",
]


def forms_table(detectors: list[tuple[str, Callable[[str], Any]]]) -> str:
    lines = [f"| detector | forms found (of {len(FORMS)}) | look-alikes flagged (of {len(LOOK_ALIKES)}) |",
             "|---|---:|---:|"]
    for name, fn in detectors:
        hits = sum(any(s.kind == kind for s in fn(text)) for kind, text in FORMS)
        wrong = sum(bool(list(fn(text))) for text in LOOK_ALIKES)
        lines.append(f"| {name} | {hits} | {wrong} |")
    return "\n".join(lines)


def evaluate(rows: list[dict[str, Any]], show: int = 0,
             detect: Callable[[str], Any] = find_pii) -> tuple[str, dict[str, float]]:
    gold_n: Counter[str] = Counter()
    found: Counter[str] = Counter()
    pred_n: Counter[str] = Counter()
    fp: Counter[str] = Counter()
    fp_on_other: Counter[str] = Counter()
    missed: list[tuple[str, str]] = []
    wrong: list[tuple[str, str]] = []
    for row in rows:
        text = row["full_text"]
        pred = detect(text)
        gold = [(CLAIMED.get(s["entity_type"]), (s["start_position"], s["end_position"]), s) for s in row["spans"]]
        for kind, g, s in gold:
            if kind is None:
                continue
            gold_n[kind] += 1
            if any(p.kind == kind and _overlap((p.start, p.end), g) for p in pred):
                found[kind] += 1
            else:
                missed.append((kind, s["entity_value"]))
        for p in pred:
            pred_n[p.kind] += 1
            if not any(kind == p.kind and _overlap((p.start, p.end), g) for kind, g, _ in gold):
                fp[p.kind] += 1
                wrong.append((p.kind, p.value))
                if any(_overlap((p.start, p.end), g) for _, g, _ in gold):
                    fp_on_other[p.kind] += 1
    lines = [
        "| type | gold spans | found | recall | predicted | false positives (on another gold entity) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    recalls = {}
    for kind in CLAIMED.values():
        r = found[kind] / gold_n[kind] if gold_n[kind] else float("nan")
        recalls[kind] = r
        lines.append(f"| {kind} | {gold_n[kind]} | {found[kind]} | {r:.3f} | {pred_n[kind]} | "
                     f"{fp[kind]} ({fp_on_other[kind]}) |")
    total_g, total_f = sum(gold_n.values()), sum(found.values())
    lines.append(f"| **all claimed** | {total_g} | {total_f} | {total_f / max(1, total_g):.3f} | "
                 f"{sum(pred_n.values())} | {sum(fp.values())} ({sum(fp_on_other.values())}) |")
    if show:
        lines.append("")
        lines.append("Missed: " + ("; ".join(f"{k} `{v!r}`" for k, v in missed[:show]) or "none"))
        lines.append("")
        lines.append("False positives: " + ("; ".join(f"{k} `{v!r}`" for k, v in wrong[:show]) or "none"))
    return "\n".join(lines), recalls


FRESH = ROOT / "benchmarks" / "data" / "phone_fresh.jsonl"


def fresh_phones(show: int = 0, detect: Callable[[str], Any] = find_pii) -> str:
    """PHONE on the fresh Faker set (benchmarks/phone_fresh.py), per template: numbers found, and PHONE spans
    where there is no phone number (on the negatives, or beside the gold number)."""
    rows = [json.loads(line) for line in FRESH.read_text(encoding="utf-8").splitlines() if line.strip()]
    per: dict[str, list[int]] = {}
    missed, wrong = [], []
    for row in rows:
        spans = [p for p in detect(row["text"]) if p.kind == "PHONE"]
        gold = [tuple(g) for g in row["phones"]]
        hit = sum(any(_overlap((p.start, p.end), g) for p in spans) for g in gold)
        bad = [p for p in spans if not any(_overlap((p.start, p.end), g) for g in gold)]
        counts = per.setdefault(row["template"], [0, 0, 0, 0])  # gold, found, texts, false positives
        counts[0] += len(gold)
        counts[1] += hit
        counts[2] += 1
        counts[3] += len(bad)
        if hit < len(gold):
            missed.append(row["text"])
        wrong += [f"{p.value} in {row['text']}" for p in bad]
    lines = ["| template | texts | phone numbers | found | PHONE false positives |", "|---|---:|---:|---:|---:|"]
    for template, (g, f, n, fp) in sorted(per.items(), key=lambda kv: (kv[1][0] == 0, kv[0])):
        lines.append(f"| `{template.replace(chr(10), ' / ')}` | {n} | {g} | {f} | {fp} |")
    g, f = sum(c[0] for c in per.values()), sum(c[1] for c in per.values())
    neg_fp = sum(c[3] for c in per.values() if c[0] == 0)
    lines.append(f"| **all** | {sum(c[2] for c in per.values())} | {g} | {f} ({f / g:.3f}) | "
                 f"{sum(c[3] for c in per.values())} (on negatives: {neg_fp}) |")
    if show:
        lines += ["", "Missed: " + ("; ".join(repr(t) for t in missed[:show]) or "none"), "",
                  "False positives: " + ("; ".join(repr(t) for t in wrong[:show]) or "none")]
    return "\n".join(lines)


def banking_false_positives(data: Path) -> str:
    with (data / "intents" / "banking77" / "test.csv").open() as fh:
        texts = [r["text"] for r in csv.DictReader(fh)]
    hits = [(s.kind, s.value) for t in texts for s in find_pii(t)]
    kinds = Counter(k for k, _ in hits)
    shown = ", ".join(f"{k} {n}" for k, n in sorted(kinds.items())) or "none"
    examples = "; ".join(f"{k} `{v}`" for k, v in hits[:8])
    return f"banking77 test queries: {len(texts)} texts, {len(hits)} spans found ({shown}). {examples}"


def _baseline(ref: str) -> Callable[[str], Any]:
    source = subprocess.run(["git", "-C", str(ROOT), "show", f"{ref}:app/assistant/guardrails.py"],
                            check=True, capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp()) / "baseline_guardrails.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("baseline_guardrails", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module._find_spans  # type: ignore[no-any-return]


def _time_per_text(fn: Callable[[str], Any], texts: list[str], rounds: int = 3) -> tuple[float, float]:
    """Median and p95 microseconds per text, the best of `rounds` passes per text."""
    for t in texts[:50]:
        fn(t)  # warm-up (regex compilation, libphonenumber metadata)
    per_text = []
    for t in texts:
        best = float("inf")
        for _ in range(rounds):
            start = time.perf_counter()
            fn(t)
            best = min(best, time.perf_counter() - start)
        per_text.append(best * 1e6)
    per_text.sort()
    return statistics.median(per_text), per_text[int(0.95 * (len(per_text) - 1))]


def latency(data: Path, baseline_ref: str | None) -> str:
    synth = [r["full_text"] for r in load(data, "all")]
    with (data / "intents" / "banking77" / "test.csv").open() as fh:
        banking = [r["text"] for r in csv.DictReader(fh)]
    rows = ["| detector | presidio_synth sentences (median / p95 µs) | banking77 queries (median / p95 µs) |",
            "|---|---:|---:|"]
    candidates: list[tuple[str, Callable[[str], Any]]] = [("find_pii (this build)", find_pii)]
    if baseline_ref:
        candidates.insert(0, (f"regex detector before ({baseline_ref})", _baseline(baseline_ref)))
    for name, fn in candidates:
        s_med, s_p95 = _time_per_text(fn, synth)
        b_med, b_p95 = _time_per_text(fn, banking)
        rows.append(f"| {name} | {s_med:.0f} / {s_p95:.0f} | {b_med:.0f} / {b_p95:.0f} |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--split", choices=("tune", "report", "all"), default="report")
    parser.add_argument("--show", type=int, default=0, help="list this many misses and false positives")
    parser.add_argument("--baseline", default=None, help="git revision to time the previous detector at")
    parser.add_argument("--no-latency", action="store_true")
    parser.add_argument("--fresh", action="store_true", help="also PHONE on the fresh Faker set (phone_fresh.py)")
    args = parser.parse_args()
    if not (args.data / "pii" / "presidio_synth").is_dir():
        sys.exit(f"{args.data}/pii/presidio_synth not found; pass --data path/to/shared/data")
    rows = load(args.data, args.split)
    print(f"Machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; "
          f"load average {os.getloadavg()[0]:.1f}; {time.strftime('%Y-%m-%d', time.gmtime())}\n")
    print(f"## presidio_synth, {args.split} split ({len(rows)} sentences)\n")
    table, _ = evaluate(rows, args.show)
    print(table)
    print()
    print(banking_false_positives(args.data))
    if args.fresh:
        print("\n## PHONE on the fresh Faker set (benchmarks/data/phone_fresh.jsonl)\n")
        print(fresh_phones(args.show))
    detectors: list[tuple[str, Callable[[str], Any]]] = [("find_pii (this build)", find_pii)]
    if args.baseline:
        before = _baseline(args.baseline)
        print(f"\nThe previous detector ({args.baseline}) on the same split:\n")
        print(evaluate(rows, 0, before)[0])
        detectors.insert(0, (f"regex detector before ({args.baseline})", before))
    print("\n## Forms and look-alikes\n")
    print(forms_table(detectors))
    if not args.no_latency:
        print("\n## Time per text\n")
        print(latency(args.data, args.baseline))


if __name__ == "__main__":
    main()
