"""Ingestion embeds a repeated text once (INGEST_DEDUPE): every chunk still gets its own row, point and citation,
with the shared vector. Real MiniLM; the wrapper only records what reaches the model."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.bootstrap import container
from app.knowledge.indexing import Deps
from app.knowledge.reporting import IngestProgress
from app.knowledge.service import ingest_paths
from app.models import Chunk

SHARED = ("Write the object's contents encoded to the stream. Errors raise UnicodeEncodeError unless the "
          "errors argument names another handler, such as replace or ignore.")


class CountingEmbedder:
    """The real embedder, recording every text it is asked to embed."""

    def __init__(self) -> None:
        self.inner = container().embedder
        self.name, self.dim = self.inner.name, self.inner.dim
        self.texts: list[str] = []

    def embed_documents(self, texts: Sequence[str]) -> list[list[float]]:
        self.texts.extend(texts)
        return self.inner.embed_documents(texts)

    def embed_query(self, text: str) -> list[float]:
        return self.inner.embed_query(text)


def _deps(embedder: CountingEmbedder, *, by_passage: bool = False) -> Deps:
    """The container's ingestion services with the counting embedder (and passage sharing, as INGEST_DEDUPE
    would set it)."""
    return dataclasses.replace(container().knowledge, embedder=embedder, by_passage=by_passage)  # type: ignore[arg-type]


def _page(root: Path, name: str, heading: str, own: str) -> None:
    (root / name).write_text(f"# {heading}\n\n{SHARED}\n\n## Notes\n\n{own}\n")


def _cited(tenant: str, version: int) -> dict[str, tuple[str, float]]:
    """{document: (chunk id, score)} of the passages about the shared text."""
    passages = container().retriever(tenant, "how do I write encoded text to a stream and handle encode errors",
                                     top_k=5, filters={"pack_version": version})
    return {p.document: (p.chunk_id, round(p.score, 5)) for p in passages if p.text == SHARED}


def test_the_same_chunk_on_two_pages_is_embedded_once_and_cited_for_each(db: Session, tmp_path: Path) -> None:
    root = tmp_path / "docs"
    root.mkdir()
    _page(root, "big5.md", "StreamWriter", "Big5 is a traditional Chinese encoding.")
    _page(root, "cp932.md", "StreamWriter", "Code page 932 is Microsoft's Shift JIS.")
    embedder = CountingEmbedder()
    seen: list[IngestProgress] = []
    report = ingest_paths(db, "acme", [root], deps=_deps(embedder), progress=seen.append)
    db.commit()
    assert report.status == "live" and report.chunks == 4 and report.reused == 1
    # Progress counts chunks, reused or not: the last file's event has them all and nothing left.
    assert [e.chunks for e in seen] == [2, 4] and seen[-1].bytes_done == seen[-1].bytes_total
    assert seen[-1].phase == "finishing" and seen[-1].eta_s == 0.0
    assert embedder.texts.count(f"StreamWriter\n{SHARED}") == 1 and len(embedder.texts) == 3
    cited = _cited("acme", report.pack_version)
    assert set(cited) == {"big5.md", "cp932.md"}  # each page cites its own chunk
    (big5_id, big5_score), (cp932_id, cp932_score) = cited["big5.md"], cited["cp932.md"]
    assert big5_id != cp932_id and big5_score == cp932_score  # the same vector
    rows = db.scalars(select(Chunk.text).where(Chunk.tenant_id == "acme")).all()
    assert rows.count(SHARED) == 2


def test_by_passage_the_same_text_under_other_headings_shares_the_first_vector(
    db: Session, tmp_path: Path
) -> None:
    root = tmp_path / "docs"
    root.mkdir()
    _page(root, "big5.md", "big5.StreamWriter", "Big5 is a traditional Chinese encoding.")
    _page(root, "cp932.md", "cp932.StreamWriter", "Code page 932 is Microsoft's Shift JIS.")
    embedder = CountingEmbedder()
    plain = ingest_paths(db, "acme", [root], deps=_deps(embedder))
    assert plain.reused == 0 and len(embedder.texts) == 4  # by default, another heading is another text

    embedder.texts.clear()
    report = ingest_paths(db, "acme", [root], deps=_deps(embedder, by_passage=True), replace=True)
    db.commit()
    # The embedding cache of the first run is not used: its vectors were each chunk's own.
    assert report.reused == 1 and len(embedder.texts) == 3
    assert [t for t in embedder.texts if t.endswith(SHARED)] == [f"big5.StreamWriter\n{SHARED}"]  # the first page's
    cited = _cited("acme", report.pack_version)
    assert set(cited) == {"big5.md", "cp932.md"} and cited["big5.md"][1] == cited["cp932.md"][1]
