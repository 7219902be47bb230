"""The pure-Python CPU of the grounding check and the guardrails per message, without the model or the pipeline.

benchmarks/orchestrator_cpu.py times these steps inside the whole pipeline, where a reply sentence that is no
passage unit costs a MiniLM call that dwarfs the text work (and is the same before and after a text change). Here
the embedder is a stand-in (a fixed vector per text, made once and reused), so what is timed is the text
measures alone, on the example tenant's knowledge:

* grounding: `vet_llm_draft` on a reply per passage as the benchmark fakes write it (the first sentence of the
  passage quoted, `--paraphrase`: reworded; a greeting and an invented sentence in some), passages warm in the
  checker's cache as in a serving process;
* guardrails: what `Answerer` runs on each message (`wants_human`, `detect_injection`, `PiiVault.mask` of the
  question and of an eight-turn history, `find_banned` on the reply) on the tenant's eval questions.

    .venv/bin/python benchmarks/text_checks_cpu.py [--rounds 5] [--paraphrase]

Prints the per-message CPU (`time.thread_time`) of each step, the best of `--rounds` passes.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
import tomllib
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
EXAMPLE = REPO / "tenants" / "northwind"


def fake_embed(texts: Sequence[str]) -> list[list[float]]:
    """A unit vector per text, the same for the same text (no model: only the text work is timed)."""
    out = []
    for t in texts:
        v = np.random.default_rng(zlib.crc32(t.encode())).standard_normal(384)
        out.append((v / np.linalg.norm(v)).tolist())
    return out


def best_of(rounds: int, work: Callable[[], int]) -> float:
    """Best CPU ms per item over `rounds` passes of `work` (which returns how many items it did)."""
    best = float("inf")
    for _ in range(rounds):
        start = time.thread_time()
        n = work()
        best = min(best, (time.thread_time() - start) / n * 1000)
    return best


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--paraphrase", action="store_true", help="replies reword the sentence they quote")
    args = parser.parse_args()

    from app.assistant import guardrails
    from app.assistant.grounding import GroundingChecker, vet_llm_draft
    from app.assistant.pii_restore import PiiVault
    from app.assistant.prompts import Draft
    from benchmarks.grounding_cases import northwind_passages, paraphrase
    from tests.fakes.openai_server import first_sentence

    tenant = tomllib.loads((EXAMPLE / "tenant.toml").read_text())
    policies = tenant["policies"]
    banned = tuple(policies.get("banned_phrases") or ())
    handoff = tuple(policies.get("handoff_keywords") or ())
    persona = tenant["persona"]

    passages = northwind_passages()
    rng = random.Random(5)
    replies: list[tuple[Draft, list[object]]] = []
    for i, p in enumerate(passages):
        sentence = first_sentence(p.text)[:300]
        if args.paraphrase:
            sentence = paraphrase(sentence, random.Random(sentence)) or sentence
        extra = [" Happy to help!", " Every order ships free worldwide.", ""][i % 3]
        others = rng.sample(passages, 2)
        cited = [p, *others]
        text = f"{sentence} [1]{extra}"
        citations = [{"chunk_id": c.chunk_id} for c in cited[:1]]
        replies.append((Draft(text=text, citations=citations), cited))

    checker = GroundingChecker(fake_embed)
    vault = PiiVault()

    def grounding() -> int:
        for draft, cited in replies:
            vet_llm_draft(draft, cited, persona, vault, checker)  # type: ignore[arg-type]
        return len(replies)

    grounding()  # the passages' units cached, as in a warm process
    questions = [json.loads(line)["question"] for line in (EXAMPLE / "eval" / "questions.jsonl").open()]
    history = [("customer", questions[i]) if i % 2 == 0 else ("assistant", first_sentence(passages[i].text))
               for i in range(8)]
    history[2] = ("customer", "my order 48213 never came, call me on +1 612 555 0142 or mail ann@example.com")

    def guards() -> int:
        for i, q in enumerate(questions):
            guardrails.wants_human(q, handoff)
            guardrails.detect_injection(q, None)
            v = PiiVault()
            v.mask(q)
            for _, t in history:
                v.mask(t)
            guardrails.find_banned(replies[i % len(replies)][0].text, banned)
        return len(questions)

    guards()
    print(f"grounding check (vet_llm_draft, {len(replies)} replies{', paraphrased' if args.paraphrase else ''}): "
          f"{best_of(args.rounds, grounding):.3f} ms per reply")
    print(f"guardrails ({len(questions)} questions, history of {len(history)}): "
          f"{best_of(args.rounds, guards):.3f} ms per message")


if __name__ == "__main__":
    main()
