"""Retrieval evaluation of a pack version: the share of questions whose expected document comes back first
(hit@1), in the top five (hit@5), and the mean reciprocal rank of its first passage (MRR, over the top 10).

Questions are JSONL, one `{"question": ..., "expected_document": <file name within the pack>}` per line. A line
may name the passage more closely with `"expected_heading"`: the question of a FAQ entry, or a section's heading
(its own or its whole path, "Returns > Refunds"), so one file with many entries (a CSV, a Markdown file of `##`
questions, an HTML page) is scored entry by entry; and `expected_document` may be a list of files, any of which
counts (the same entry published twice). The same numbers gate automatic promotion (app/knowledge/service.py)
and back `switchboard eval`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from app.knowledge.chunk import HEADING_SEP
from app.knowledge.retrieval import Passage, Retriever
from app.knowledge.termstats import TermStats

DEPTH = 10


class EvalError(ValueError):
    """A questions file that cannot be used; the message names the line."""


@dataclass(frozen=True)
class Question:
    question: str
    expected_document: str | tuple[str, ...]
    expected_heading: str | None = None

    def matches(self, passage: Passage) -> bool:
        documents = (self.expected_document,) if isinstance(self.expected_document, str) else self.expected_document
        if passage.document not in documents:
            return False
        if self.expected_heading is None:
            return True
        wanted = _norm(self.expected_heading)
        return wanted in (_norm(passage.heading), _norm(passage.heading.split(HEADING_SEP)[-1]))


def _norm(text: str) -> str:
    return " ".join(text.casefold().split())


def jsonl_objects(data: bytes | str) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) of each non-blank JSONL line; a line that is not an object reads as `{}`."""
    text = data.decode("utf-8-sig") if isinstance(data, bytes) else data
    for line_no, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            raise EvalError(f"line {line_no}: invalid JSON ({exc.msg})") from exc
        yield line_no, item if isinstance(item, dict) else {}


def eval_key(tenant_id: str) -> str:
    """Where the tenant's eval questions (`_eval.jsonl` of its last upload that had one) are kept."""
    return f"{tenant_id}/knowledge/eval/questions.jsonl"


def parse_questions(data: bytes | str) -> list[Question]:
    out = []
    for line_no, item in jsonl_objects(data):
        question, expected, heading = item.get("question"), item.get("expected_document"), item.get("expected_heading")
        if isinstance(expected, list) and expected and all(isinstance(e, str) and e for e in expected):
            expected = tuple(expected)
        if not isinstance(question, str) or not question.strip() or not isinstance(expected, str | tuple) \
                or not expected:
            raise EvalError(f'line {line_no}: needs {{"question": "...", "expected_document": "file name"}} (or a '
                            "list of file names)")
        if heading is not None and (not isinstance(heading, str) or not heading.strip()):
            raise EvalError(f"line {line_no}: expected_heading must be a non-empty string when given")
        out.append(Question(question.strip(), expected, heading.strip() if heading else None))
    if not out:
        raise EvalError("no questions in the file")
    return out


def evaluate(
    tenant_id: str,
    questions: list[Question],
    *,
    pack_version: int | None,
    retriever: Retriever,
    filters: dict[str, Any] | None = None,
    term_stats: TermStats | None = None,
) -> dict[str, Any]:
    """{"n", "hit@1", "hit@5", "mrr"} (rounded to 4 places) for one pack version (`term_stats`: its term
    statistics, for a version whose row is not committed yet)."""
    where = {**(filters or {}), **({"pack_version": pack_version} if pack_version is not None else {})}
    hit1 = hit5 = 0
    rr = 0.0
    for q in questions:
        passages = retriever(tenant_id, q.question, top_k=DEPTH, filters=where or None, term_stats=term_stats)
        rank = next((p.rank for p in passages if q.matches(p)), None)
        if rank is not None:
            hit1 += rank == 1
            hit5 += rank <= 5
            rr += 1 / rank
    n = len(questions)
    return {"n": n, "hit@1": round(hit1 / n, 4), "hit@5": round(hit5 / n, 4), "mrr": round(rr / n, 4)}
