"""Retrieval evaluation of a pack version: the share of questions whose expected document comes back first
(hit@1), in the top five (hit@5), and the mean reciprocal rank of its first passage (MRR, over the top 10).

Questions are JSONL, one `{"question": ..., "expected_document": <file name within the pack>}` per line. The
same numbers gate automatic promotion (app/knowledge/service.py) and back `switchboard eval`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from app.knowledge.retrieval import retrieve
from app.knowledge.termstats import TermStats
from app.providers.embeddings.base import Embedder, SparseEncoder
from app.providers.vectors.base import VectorStore

DEPTH = 10


class EvalError(ValueError):
    """A questions file that cannot be used; the message names the line."""


@dataclass(frozen=True)
class Question:
    question: str
    expected_document: str


def parse_questions(data: bytes | str) -> list[Question]:
    text = data.decode("utf-8-sig") if isinstance(data, bytes) else data
    out = []
    for line_no, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            raise EvalError(f"line {line_no}: invalid JSON ({exc.msg})") from exc
        question = item.get("question") if isinstance(item, dict) else None
        expected = item.get("expected_document") if isinstance(item, dict) else None
        if not isinstance(question, str) or not question.strip() or not isinstance(expected, str) or not expected:
            raise EvalError(f'line {line_no}: needs {{"question": "...", "expected_document": "file name"}}')
        out.append(Question(question.strip(), expected))
    if not out:
        raise EvalError("no questions in the file")
    return out


def evaluate(
    tenant_id: str,
    questions: list[Question],
    *,
    pack_version: int | None,
    filters: dict[str, Any] | None = None,
    embedder: Embedder | None = None,
    sparse_encoder: SparseEncoder | None = None,
    vector_store: VectorStore | None = None,
    term_stats: TermStats | None = None,
) -> dict[str, Any]:
    """{"n", "hit@1", "hit@5", "mrr"} (rounded to 4 places) for one pack version (`term_stats`: its term
    statistics, for a version whose row is not committed yet)."""
    where = {**(filters or {}), **({"pack_version": pack_version} if pack_version is not None else {})}
    hit1 = hit5 = 0
    rr = 0.0
    for q in questions:
        passages = retrieve(tenant_id, q.question, top_k=DEPTH, filters=where or None, embedder=embedder,
                            sparse_encoder=sparse_encoder, vector_store=vector_store, term_stats=term_stats)
        docs = [p.document for p in passages]
        if q.expected_document in docs:
            rank = docs.index(q.expected_document) + 1
            hit1 += rank == 1
            hit5 += rank <= 5
            rr += 1 / rank
    n = len(questions)
    return {"n": n, "hit@1": round(hit1 / n, 4), "hit@5": round(hit5 / n, 4), "mrr": round(rr / n, 4)}
