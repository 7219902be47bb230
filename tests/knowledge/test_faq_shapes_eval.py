"""A slice of COVID-QA (40 entries, two of them published twice, and the paraphrased questions whose answer is
among them) ingested the way a user ingests it, in embedded mode with the real MiniLM model:

- in each of the four shapes of benchmarks/faq_shapes.py (one Markdown file per entry, one Markdown file of `##`
  questions, one HTML page, JSONL), the same questions must rank the same entries in the same order and score
  the same (the shape of the pack must not change the answer);
- ingested into two fresh homes (new database, new vector store, new random tenant id), the same pack must give
  the same chunks and rank every question identically, scores included (the eval gate compares versions).

The full benchmark (all 244 questions, tuning and held-out splits, `switchboard eval`) is
benchmarks/faq_shapes.py; docs/benchmarks.md has its numbers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sqlalchemy import select

from app.bootstrap import container
from app.db import migrate
from app.knowledge.evaluate import Question, evaluate, parse_questions
from benchmarks.faq_shapes import DEFAULT_DATA, SHAPES, build_pack, load, questions
from tests.conftest import Graph

SUBSET = 40


def covid_slice() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    rows, queries = load(DEFAULT_DATA)
    rows = rows[:SUBSET]
    ids = {r["faq_id"] for r in rows}
    return rows, [q for q in queries if q["gold_faq_id"] in ids]


def eval_lines(lines: list[dict[str, Any]]) -> list[Question]:
    """The benchmark's question lines as `switchboard eval` reads them."""
    return parse_questions("\n".join(json.dumps({k: v for k, v in x.items() if k != "qid"}) for x in lines))



def ingest(slug: str, pack: Path) -> tuple[str, int]:
    """A tenant created as `switchboard tenant create` creates it (random id), the pack ingested and live."""
    from app.db import get_sessionmaker
    from app.knowledge.service import ingest_paths
    from app.tenants.service import create_tenant

    with get_sessionmaker()(info={"cross_tenant": "tests"}) as session:
        tenant_id = str(create_tenant(session, slug).tenant.id)
        session.commit()
        report = ingest_paths(session, tenant_id, [pack], deps=container().knowledge)
        session.commit()
    assert report.promoted and not report.files_failed, report
    return tenant_id, report.pack_version


def ranked(tenant_id: str, version: int, asked: list[dict[str, Any]]) -> list[list[tuple[str, str, str, float]]]:

    return [
        [(p.document, p.heading, " ".join(p.text.split()), p.score)
         for p in container().retriever(tenant_id, q["query"], top_k=10, filters={"pack_version": version})]
        for q in asked
    ]


def chunk_rows(tenant_id: str) -> list[tuple[str, int, str, str]]:
    from app.db import get_sessionmaker
    from app.models import Chunk, Document

    with get_sessionmaker()(info={"cross_tenant": "tests"}) as session:
        rows = session.execute(
            select(Document.path, Chunk.ordinal, Chunk.heading, Chunk.text)
            .join(Document, Document.id == Chunk.document_id)
            .where(Chunk.tenant_id == tenant_id)
            .order_by(Document.path, Chunk.ordinal)
        ).all()
    return [tuple(r) for r in rows]  # type: ignore[misc]


def test_every_shape_ranks_the_same_entries_and_scores_the_same(
    sb_home: Path, tmp_path: Path
) -> None:
    rows, asked = covid_slice()
    migrate()
    scores, entries = {}, {}
    for shape in SHAPES:
        single = build_pack(shape, rows, tmp_path / shape)
        tenant_id, version = ingest(shape, tmp_path / shape)
        lines = questions(rows, asked, single)
        scores[shape] = evaluate(tenant_id, eval_lines(lines), pack_version=version, retriever=container().retriever)
        # What each question gets: the entries (by question) in order, and their scores; not the file names,
        # which differ by shape.
        entries[shape] = [[(h, round(s, 5)) for _, h, _, s in hits] for hits in ranked(tenant_id, version, asked)]
    print("\n" + "\n".join(f"{shape}: {s}" for shape, s in scores.items()))
    first = SHAPES[0]
    for shape in SHAPES[1:]:
        assert scores[shape] == scores[first], shape
        assert entries[shape] == entries[first], shape
    # The slice's own bar (its questions are easier than the whole set's: fewer entries to confuse).
    assert scores[first]["n"] == len(asked) and scores[first]["hit@1"] >= 0.85 and scores[first]["hit@5"] >= 0.95


def test_two_fresh_homes_give_the_same_chunks_and_rank_identically(
    sb_home: Path, tmp_path: Path
) -> None:
    rows, asked = covid_slice()
    build_pack("md-per-entry", rows, tmp_path / "pack")  # the twins are two files: their ties must break the same
    seen = []
    for home in (sb_home, tmp_path / "second-home"):
        graph = Graph(home)
        graph.configure()  # a process of its own on this home
        try:
            migrate()
            tenant_id, version = ingest("covid", tmp_path / "pack")
            parsed = eval_lines(questions(rows, asked, ""))
            seen.append((tenant_id, chunk_rows(tenant_id), ranked(tenant_id, version, asked),
                         evaluate(tenant_id, parsed, pack_version=version, retriever=container().retriever)))
        finally:
            graph.close()
    (id_a, chunks_a, ranks_a, eval_a), (id_b, chunks_b, ranks_b, eval_b) = seen
    assert id_a != id_b  # two tenants as two homes make them: random ids
    assert chunks_a == chunks_b and len(chunks_a) == SUBSET
    assert ranks_a == ranks_b  # every question: same passages, same order, same scores
    assert eval_a == eval_b
