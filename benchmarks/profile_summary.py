"""Summarise a py-spy profile in collapsed form (`py-spy record --format raw`): where the samples went.

    py-spy record --format raw -o answer.txt -- .venv/bin/python benchmarks/orchestrator_cpu.py
    .venv/bin/python benchmarks/profile_summary.py answer.txt [--top 30] [--under Orchestrator.process]

Printed: the share of samples spent in each function itself (self), and in each function and what it called
(inclusive, counted once per stack however deep the recursion), largest first; `--under NAME` keeps only the
stacks that pass through a function whose name contains NAME (one step of the pipeline).
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path

FRAME = re.compile(r"^(?P<function>.+?) \((?P<file>[^()]*?)(?::\d+)?\)$")


def frames(stack: str) -> list[str]:
    """`function (path/to/module.py:12)` frames as `function (module.py)`, outermost first; process and thread
    frames are left out."""
    out = []
    for frame in stack.split(";"):
        match = FRAME.match(frame.strip())
        if match is None:
            continue
        path = match["file"]
        short = "/".join(path.split("/")[-2:]) if "site-packages" in path or "/app/" in path else path
        out.append(f"{match['function']} ({short})")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("profile", type=Path)
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--under", help="only stacks through a function whose name contains this")
    args = parser.parse_args()
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in args.profile.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        stack_frames = frames(stack)
        if not stack_frames or (args.under and not any(args.under in f for f in stack_frames)):
            continue
        n = int(count)
        total += n
        own[stack_frames[-1]] += n
        for frame in set(stack_frames):
            inclusive[frame] += n
    if not total:
        raise SystemExit(f"no samples in {args.profile}" + (f" under {args.under!r}" if args.under else ""))
    print(f"{total} samples" + (f" under {args.under!r}" if args.under else ""))
    for title, counts in (("self", own), ("inclusive", inclusive)):
        print(f"\n{title}:")
        for frame, n in counts.most_common(args.top):
            print(f"  {n / total:6.1%}  {frame}")


if __name__ == "__main__":
    main()
