from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable


@dataclass(frozen=True)
class SparseVector:
    indices: list[int]
    values: list[float]


class Embedder(Protocol):
    """Dense text embeddings; normalised so cosine similarity is a dot product."""

    dim: int
    name: str

    def embed_documents(self, texts: Sequence[str]) -> list[list[float]]: ...

    def embed_query(self, text: str) -> list[float]: ...


@runtime_checkable
class TokenWeightingEmbedder(Protocol):
    """An `Embedder` that can also weight a query's tokens when it pools them (app/knowledge/termstats.py):
    `tokens` gives the token ids a text is made of (special tokens left out), `embed_query_weighted` the query
    both as `embed_query` gives it and pooled with `weight(token_id)` per token, each normalised."""

    name: str

    def tokens(self, texts: Sequence[str]) -> list[list[int]]: ...

    def embed_query_weighted(self, text: str, weight: Callable[[int], float]) -> tuple[list[float], list[float]]: ...


@runtime_checkable
class SentenceEmbedder(Protocol):
    """An `Embedder` that embeds a few short texts exactly as `embed_documents` does, in model calls shared with
    concurrent callers (the grounding check's reply sentences, app/assistant/grounding.py)."""

    def embed_sentences(self, texts: Sequence[str]) -> list[list[float]]: ...


class SparseEncoder(Protocol):
    """Term-frequency sparse vectors; the vector store applies IDF (Qdrant's `Modifier.IDF`) to make BM25."""

    def encode_documents(self, texts: Sequence[str]) -> list[SparseVector]: ...

    def encode_query(self, text: str) -> SparseVector: ...
