"""The embedding stage of an ingestion, run beside the rest of it.

Ingestion spends most of its time in the embedder (onnxruntime, which releases the GIL); parsing, chunking,
BM25 terms, database rows and vector upserts are Python work. `EmbeddingPipeline` runs the embedder on threads
of its own so that work overlaps with it: the ingesting thread submits each document's texts (`submit` returns
a `Future`), goes on to the next document, and writes a document once its vectors are back, in file order.
Given several embedders (copies of one model, e.g. one per core), it runs one thread per embedder, each taking
the next call's worth of texts.

A text is embedded once: each text comes with a key (by default the text itself) and a text whose key was
embedded recently (the last `remember` keys, as float32) gets that vector again instead of a model call, as does
a repeat inside one call. Large documentation packs repeat themselves: an inherited method's docstring appears
on every subclass's page.

Bounds (memory stays flat however large the pack):
- one embedder call takes at most `call_texts` texts, gathered from as many documents as are waiting (texts
  of small pages embed together, length-sorted by the embedder, instead of one short call per page); a
  document with more texts is embedded in several calls;
- at most `max_pending` texts are submitted and not yet handed back: `submit` waits while the stage is that
  far behind, so a fast parser never piles up a pack's worth of chunks in memory;
- at most `remember` vectors are kept for reuse (least recently used first out; 8,192 are 12.6 MB).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict, deque
from collections.abc import Hashable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np

from app.providers.embeddings.base import Embedder

CALL_TEXTS = 256  # texts per embedder call at most
MAX_PENDING = 1024  # texts submitted and not yet returned, at most
REMEMBER = 8192  # vectors kept for texts that come again


@dataclass(eq=False)  # compared and hashed by identity
class _Request:
    texts: list[str]
    keys: list[Hashable]
    future: Future[list[list[float]]]
    taken: int = 0  # texts handed to an embedder call so far
    filled: int = 0  # texts whose vectors are back
    vectors: list[list[float]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.vectors = [[] for _ in self.texts]


class EmbeddingPipeline:
    """`submit(texts, keys)` -> Future of their vectors (in order). Use as a context manager: leaving it stops
    the threads; a request still queued then gets an error rather than waiting forever."""

    def __init__(self, embedder: Embedder | Sequence[Embedder], *, call_texts: int = CALL_TEXTS,
                 max_pending: int = MAX_PENDING, remember: int = REMEMBER) -> None:
        if call_texts < 1 or max_pending < call_texts:
            raise ValueError("call_texts must be at least 1 and max_pending at least call_texts")
        embedders = list(embedder) if isinstance(embedder, Sequence) else [embedder]
        if not embedders:
            raise ValueError("at least one embedder is needed")
        self.call_texts = call_texts
        self.max_pending = max_pending
        self.remember = remember
        self.calls = 0  # embedder calls made
        self.largest_call = 0  # texts in the largest call
        self.embedded = 0  # texts embedded by the model
        self.reused = 0  # texts given a vector embedded before (same key)
        self.seconds = 0.0  # wall time inside the embedders (summed over threads)
        self._known: OrderedDict[Hashable, np.ndarray] = OrderedDict()
        self._queue: deque[_Request] = deque()
        self._pending = 0
        self._cond = threading.Condition()
        self._closed = False
        self._threads = [threading.Thread(target=self._run, args=(e,), name=f"ingest-embedder-{i}", daemon=True)
                         for i, e in enumerate(embedders)]
        for thread in self._threads:
            thread.start()

    def __enter__(self) -> EmbeddingPipeline:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    @property
    def pending(self) -> int:
        """Texts submitted and not yet returned."""
        with self._cond:
            return self._pending

    def submit(self, texts: Sequence[str], keys: Sequence[Hashable] | None = None) -> Future[list[list[float]]]:
        """`keys[i]`: what makes text i the same as another for embedding (texts with equal keys get one
        vector); by default the text itself."""
        future: Future[list[list[float]]] = Future()
        if keys is not None and len(keys) != len(texts):
            raise ValueError(f"{len(keys)} keys for {len(texts)} texts")
        if not texts:
            future.set_result([])
            return future
        with self._cond:
            # A request larger than the bound alone is let in when nothing else is pending (it is cut into calls).
            while not self._closed and self._pending and self._pending + len(texts) > self.max_pending:
                self._cond.wait()
            if self._closed:
                raise RuntimeError("the embedding pipeline is closed")
            self._queue.append(_Request(list(texts), list(keys if keys is not None else texts), future))
            self._pending += len(texts)
            self._cond.notify_all()
        return future

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        for thread in self._threads:
            thread.join()
        for request in self._queue:  # left by an error or an early exit
            if not request.future.done():
                request.future.set_exception(RuntimeError("the embedding pipeline was closed"))
        self._queue.clear()

    # -- the embedder threads ------------------------------------------------------------------------------

    def _take(self) -> list[tuple[_Request, int, int]] | None:
        """(request, start, end) slices filling one call, oldest first; None once closed."""
        with self._cond:
            while not self._closed and not any(r.taken < len(r.texts) for r in self._queue):
                self._cond.wait()
            if self._closed:  # an ingestion that ends normally has collected everything; anything left is abandoned
                return None
            out: list[tuple[_Request, int, int]] = []
            room = self.call_texts
            for request in self._queue:
                start = request.taken  # a long request continues where its last call stopped
                take = min(room, len(request.texts) - start)
                if take > 0:
                    out.append((request, start, start + take))
                    request.taken += take
                    room -= take
                if room == 0:
                    break
            return out

    def _run(self, embedder: Embedder) -> None:
        while True:
            slices = self._take()
            if slices is None:
                return
            try:
                self._embed(embedder, slices)
            except BaseException as exc:  # every request in the call fails and the ingestion raises it; a
                self._fail([r for r, _, _ in slices], exc)  # thread that died instead would hang it for good

    def _embed(self, embedder: Embedder, slices: list[tuple[_Request, int, int]]) -> None:
        keys = [k for request, start, end in slices for k in request.keys[start:end]]
        texts = [t for request, start, end in slices for t in request.texts[start:end]]
        with self._cond:
            known = {k: self._known[k] for k in keys if k in self._known}
        new: dict[Hashable, str] = {}  # the keys to embed, each with its first text
        for key, text in zip(keys, texts, strict=True):
            if key not in known:
                new.setdefault(key, text)
        began = time.perf_counter()
        vectors = embedder.embed_documents(list(new.values())) if new else []
        if len(vectors) != len(new):
            raise RuntimeError(f"the embedder returned {len(vectors)} vectors for {len(new)} texts")
        fresh = dict(zip(new, vectors, strict=True))
        with self._cond:
            self.seconds += time.perf_counter() - began
            self.calls += 1 if new else 0
            self.largest_call = max(self.largest_call, len(new))
            self.embedded += len(new)
            self.reused += len(keys) - len(new)
            for key, vector in fresh.items():
                self._known[key] = np.asarray(vector, dtype=np.float32)
            for key, kept in known.items():  # another thread may have evicted it meanwhile: put it back
                self._known[key] = kept
                self._known.move_to_end(key)
            while len(self._known) > self.remember:
                self._known.popitem(last=False)
        out = iter([fresh[k] if k in fresh else known[k].astype(float).tolist() for k in keys])
        for request, start, end in slices:
            request.vectors[start:end] = [next(out) for _ in range(end - start)]
        self._hand_back([(r, end - start) for r, start, end in slices])

    def _hand_back(self, slices: list[tuple[_Request, int]]) -> None:
        finished = []
        with self._cond:
            for request, count in slices:
                request.filled += count
                if request.filled == len(request.texts) and request in self._queue:
                    self._queue.remove(request)
                    self._pending -= len(request.texts)
                    finished.append(request)
            self._cond.notify_all()
        for request in finished:
            request.future.set_result(request.vectors)

    def _fail(self, requests: list[_Request], exc: BaseException) -> None:
        failed = []
        with self._cond:
            for request in dict.fromkeys(requests):
                if request in self._queue:
                    self._queue.remove(request)
                    self._pending -= len(request.texts)
                    failed.append(request)
            self._cond.notify_all()
        for request in failed:
            request.future.set_exception(exc)
