"""What a chunk looks like to the retrievers: the texts embedded for its dense views and its keyword vector.

Every chunk has a full view (`TextChunk.embedding_text()`: heading path plus text), embedded as "dense" and
encoded as BM25 terms. A FAQ chunk has a second dense view, its question alone: customers paraphrase the
questions a FAQ answers, and a question matches a question better than it matches a question glued to its
answer (COVID-QA, benchmarks/retrieval_covid.py: dense hit@1 0.566 on the full view, 0.656 on the question
view). Other chunks have no question view; the vector store uses their full view in its place.

Which chunks are FAQ chunks is read from the chunk, not from its file's type: every question/answer unit has the
same shape (app/knowledge/units.py), whether it came from a CSV row, a question heading in Markdown, HTML or
DOCX, or a file titled with its question.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from app.knowledge.chunk import TextChunk
from app.knowledge.units import unit_question
from app.providers.embeddings.base import Embedder, SparseEncoder, SparseVector


@dataclass(frozen=True)
class ChunkVectors:
    dense: list[float]
    question: list[float] | None  # FAQ chunks only
    sparse: SparseVector


def question_text(chunk: TextChunk, kind: str = "") -> str | None:
    """The question a question/answer chunk answers (its heading), or None for any other chunk. `kind` (the
    file's type) is not consulted: a unit looks the same whatever file it came from."""
    return unit_question(chunk.heading, chunk.text)


def question_vectors(
    chunks: Sequence[TextChunk], kind: str, embed: Callable[[list[str]], list[list[float]]]
) -> list[list[float] | None]:
    """The question view of each chunk (None where it has none), embedded in one call to `embed` (an
    embedder's `embed_documents`, or ingestion's cached version of it)."""
    questions = [question_text(c, kind) for c in chunks]
    asked = [i for i, q in enumerate(questions) if q is not None]
    embedded = embed([questions[i] or "" for i in asked]) if asked else []
    by_index: dict[int, list[float]] = dict(zip(asked, embedded, strict=True))
    return [by_index.get(i) for i in range(len(chunks))]


def embed_chunks(
    chunks: Sequence[TextChunk], kind: str, embedder: Embedder, sparse_encoder: SparseEncoder
) -> list[ChunkVectors]:
    """Dense full view, dense question view (FAQ only) and sparse vector of each chunk, in order."""
    texts = [c.embedding_text() for c in chunks]
    dense = embedder.embed_documents(texts)
    sparse = sparse_encoder.encode_documents(texts)
    questions = question_vectors(chunks, kind, embedder.embed_documents)
    return [ChunkVectors(dense[i], questions[i], sparse[i]) for i in range(len(chunks))]
