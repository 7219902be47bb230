"""The embedding stage of an ingestion, run beside the rest of it.

Ingestion spends most of its time in the embedder (onnxruntime, which releases the GIL); parsing, chunking,
BM25 terms, database rows and vector upserts are Python work. `EmbeddingPipeline` runs the embedder on its own
thread so that work overlaps with it: the ingesting thread submits each document's texts (`submit` returns a
`Future`), goes on to the next document, and writes a document once its vectors are back, in file order.

Bounds (memory stays flat however large the pack):
- one embedder call takes at most `call_texts` texts, gathered from as many documents as are waiting (texts
  of small pages embed together, length-sorted by the embedder, instead of one short call per page); a
  document with more texts is embedded in several calls;
- at most `max_pending` texts are submitted and not yet handed back: `submit` waits while the stage is that
  far behind, so a fast parser never piles up a pack's worth of chunks in memory.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field

from app.providers.embeddings.base import Embedder

CALL_TEXTS = 256  # texts per embedder call at most
MAX_PENDING = 1024  # texts submitted and not yet returned, at most


@dataclass(eq=False)  # compared and hashed by identity
class _Request:
    texts: list[str]
    future: Future[list[list[float]]]
    vectors: list[list[float]] = field(default_factory=list)


class EmbeddingPipeline:
    """`submit(texts)` -> Future of their vectors (in order). Use as a context manager: leaving it stops the
    thread; a request still queued then gets an error rather than waiting forever."""

    def __init__(self, embedder: Embedder, *, call_texts: int = CALL_TEXTS, max_pending: int = MAX_PENDING) -> None:
        if call_texts < 1 or max_pending < call_texts:
            raise ValueError("call_texts must be at least 1 and max_pending at least call_texts")
        self.embedder = embedder
        self.call_texts = call_texts
        self.max_pending = max_pending
        self.calls = 0  # embedder calls made
        self.largest_call = 0  # texts in the largest call
        self.embedded = 0  # texts embedded
        self.seconds = 0.0  # wall time inside the embedder
        self._queue: deque[_Request] = deque()
        self._pending = 0
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="ingest-embedder", daemon=True)
        self._thread.start()

    def __enter__(self) -> EmbeddingPipeline:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    @property
    def pending(self) -> int:
        """Texts submitted and not yet returned."""
        with self._cond:
            return self._pending

    def submit(self, texts: Sequence[str]) -> Future[list[list[float]]]:
        future: Future[list[list[float]]] = Future()
        if not texts:
            future.set_result([])
            return future
        with self._cond:
            # A request larger than the bound alone is let in when nothing else is pending (it is cut into calls).
            while not self._closed and self._pending and self._pending + len(texts) > self.max_pending:
                self._cond.wait()
            if self._closed:
                raise RuntimeError("the embedding pipeline is closed")
            self._queue.append(_Request(list(texts), future))
            self._pending += len(texts)
            self._cond.notify_all()
        return future

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join()
        for request in self._queue:  # left by an error or an early exit
            if not request.future.done():
                request.future.set_exception(RuntimeError("the embedding pipeline was closed"))
        self._queue.clear()

    # -- the embedder thread -------------------------------------------------------------------------------

    def _take(self) -> list[tuple[_Request, int, int]] | None:
        """(request, start, end) slices filling one call, oldest first; None once closed and drained."""
        with self._cond:
            while not self._queue and not self._closed:
                self._cond.wait()
            if self._closed:  # an ingestion that ends normally has collected everything; anything left is abandoned
                return None
            out: list[tuple[_Request, int, int]] = []
            room = self.call_texts
            for request in self._queue:
                start = len(request.vectors)  # a long request continues where its last call stopped
                take = min(room, len(request.texts) - start)
                if take > 0:
                    out.append((request, start, start + take))
                    room -= take
                if room == 0:
                    break
            return out

    def _run(self) -> None:
        import time

        while True:
            slices = self._take()
            if slices is None:
                return
            texts = [t for request, start, end in slices for t in request.texts[start:end]]
            began = time.perf_counter()
            try:
                vectors = self.embedder.embed_documents(texts)
                if len(vectors) != len(texts):
                    raise RuntimeError(f"the embedder returned {len(vectors)} vectors for {len(texts)} texts")
            except BaseException as exc:  # every request in the call fails; the ingestion raises it
                self._fail([r for r, _, _ in slices], exc)
                continue
            self.seconds += time.perf_counter() - began
            self.calls += 1
            self.largest_call = max(self.largest_call, len(texts))
            self.embedded += len(texts)
            offset = 0
            for request, start, end in slices:
                request.vectors.extend(vectors[offset : offset + end - start])
                offset += end - start
            self._hand_back([r for r, _, _ in slices])

    def _hand_back(self, requests: list[_Request]) -> None:
        finished = []
        with self._cond:
            for request in dict.fromkeys(requests):
                if len(request.vectors) == len(request.texts) and request in self._queue:
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
