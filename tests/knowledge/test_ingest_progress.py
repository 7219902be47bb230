"""Ingestion's embedding stage (bounded calls and pending texts, order, errors) and its progress: bytes, rate and
ETA on every event, and the finishing phase. Nothing here depends on how fast the machine is."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future
from pathlib import Path

import pytest
from sqlalchemy.orm import Session

from app.bootstrap import container
from app.knowledge.pipeline import EmbeddingPipeline
from app.knowledge.reporting import IngestProgress, IngestReport, ProgressMeter
from app.knowledge.service import ingest_paths
from tests.conftest import Graph, installed


class RecordingEmbedder:
    """A stand-in embedder (the pipeline's dependency, not the code under test): each text's vector is its own
    number, so order mistakes show; records every call's size and the pipeline's pending count during it."""

    dim, name = 1, "recording"

    def __init__(self, gate: threading.Event | None = None, fail_on: str | None = None) -> None:
        self.calls: list[int] = []
        self.pending_seen: list[int] = []
        self.pipe: EmbeddingPipeline | None = None
        self.gate, self.fail_on = gate, fail_on
        self.entered: threading.Event | None = None  # set when a call starts

    def embed_documents(self, texts: Sequence[str]) -> list[list[float]]:
        if self.entered is not None:
            self.entered.set()
        if self.gate is not None:
            assert self.gate.wait(30), "the test never opened the gate"
        if self.fail_on is not None and self.fail_on in texts:
            raise RuntimeError("embedder down")
        self.calls.append(len(texts))
        if self.pipe is not None:
            self.pending_seen.append(self.pipe.pending)
        return [[float(t)] for t in texts]

    def embed_query(self, text: str) -> list[float]:
        return [0.0]


def _texts(start: int, n: int) -> list[str]:
    return [str(i) for i in range(start, start + n)]


def test_pipeline_merges_small_documents_splits_large_ones_and_keeps_order() -> None:
    embedder = RecordingEmbedder()
    sizes = [3, 1, 2, 9, 4, 1, 30, 2]  # one request larger than a call, several smaller than one
    with EmbeddingPipeline(embedder, call_texts=8, max_pending=32) as pipe:
        embedder.pipe = pipe
        requests, start = [], 0
        for n in sizes:
            texts = _texts(start, n)
            requests.append((texts, pipe.submit(texts)))
            start += n
        for texts, future in requests:
            assert future.result(timeout=30) == [[float(t)] for t in texts]
        assert pipe.embedded == sum(sizes) == sum(embedder.calls)
    assert max(embedder.calls) <= 8  # no call over the bound, the 30-text request included
    assert max(embedder.pending_seen) <= 32
    assert pipe.largest_call == max(embedder.calls) and pipe.calls < len(sizes) + 3  # small ones merged


def test_submit_waits_while_the_pipeline_holds_its_maximum_of_texts() -> None:
    gate = threading.Event()
    embedder = RecordingEmbedder(gate)
    with EmbeddingPipeline(embedder, call_texts=4, max_pending=8) as pipe:
        futures: list[Future[list[list[float]]]] = []
        producer = threading.Thread(target=lambda: futures.extend(pipe.submit(_texts(4 * i, 4)) for i in range(3)))
        producer.start()
        producer.join(timeout=1.0)  # the third request cannot get in while the first two are pending
        assert producer.is_alive() and pipe.pending == 8
        gate.set()
        producer.join(timeout=30)
        assert not producer.is_alive()
        assert [f.result(timeout=30) for f in futures] == [[[float(t)] for t in _texts(4 * i, 4)] for i in range(3)]
    assert pipe.pending == 0


def test_an_embedder_error_fails_the_requests_of_that_call_and_the_next_ones_still_run() -> None:
    embedder = RecordingEmbedder(fail_on="boom")
    with EmbeddingPipeline(embedder, call_texts=4, max_pending=16) as pipe:
        bad = pipe.submit(["boom", "x"])
        with pytest.raises(RuntimeError, match="embedder down"):
            bad.result(timeout=30)
        assert pipe.submit(["1", "2"]).result(timeout=30) == [[1.0], [2.0]]
    with pytest.raises(RuntimeError, match="closed"):
        pipe.submit(["3"])


def test_pipeline_bounds_are_checked() -> None:
    with pytest.raises(ValueError, match="max_pending"):
        EmbeddingPipeline(RecordingEmbedder(), call_texts=8, max_pending=4)


def test_eta_is_the_rate_so_far_applied_to_the_bytes_left() -> None:
    report = IngestReport("acme", 1, "job", "source", chunks=30)
    meter = ProgressMeter(total_bytes=1000, started=time.monotonic() - 10)
    assert meter.event("a.md", "indexed", 4, report).eta_s is None  # no byte done yet: no rate to go by
    meter.files_done, meter.bytes_done = 1, 250
    event = meter.event("a.md", "indexed", 4, report)
    assert event.eta_s == round(event.elapsed_s * 3, 1) and event.phase == "indexing"
    assert event.chunks_per_s == round(30 / event.elapsed_s, 2)
    meter.files_done, meter.bytes_done = 4, 1000
    done = meter.event("d.md", "indexed", 4, report)
    assert done.eta_s == 0.0 and done.phase == "finishing"


def test_every_progress_event_carries_bytes_rate_and_eta(db: Session, pack: Path) -> None:
    (pack / "empty.md").write_text("   \n")  # refused (no text): its bytes count as done all the same
    total = sum(p.stat().st_size for p in pack.iterdir())
    seen: list[IngestProgress] = []
    report = ingest_paths(db, "acme", [pack], progress=seen.append, deps=container().knowledge)
    assert report.status == "live" and len(report.files_failed) == 1
    assert [e.files_done for e in seen] == list(range(1, 6))
    assert all(e.bytes_total == total for e in seen)
    done = [e.bytes_done for e in seen]
    assert done == sorted(done) and done[-1] == total and done[0] > 0
    assert all(e.eta_s is not None and e.eta_s >= 0 for e in seen)
    assert [e.phase for e in seen] == ["indexing"] * 4 + ["finishing"] and seen[-1].eta_s == 0.0
    assert seen[-1].chunks == report.chunks and seen[-1].embedded == report.embedded > 0
    assert seen[-1].chunks_per_s > 0
    assert set(report.timings) == {"files", "embedding", "finishing"}


@pytest.mark.redis
def test_a_scale_out_job_keeps_its_progress_in_redis_for_the_admin_api() -> None:
    import uuid

    from tests.conftest import REDIS_TEST_URL
    from workers.ingest import RedisProgress, RqJobQueue

    namespace = f"sbtest-{uuid.uuid4().hex[:8]}"
    record, queue = RedisProgress(REDIS_TEST_URL, namespace), RqJobQueue(REDIS_TEST_URL, namespace=namespace)
    event = IngestProgress("a.md", "indexed", 1, 4, 12, 12, 250, 1000, 2.0, 6.0, 6.0).to_dict()
    record("job-1", event)
    assert queue.progress("job-1") == event
    assert RqJobQueue(REDIS_TEST_URL, namespace="another").progress("job-1") is None
    record("job-1", None)  # the job ended: its row has the outcome
    assert queue.progress("job-1") is None


def test_ingestion_shares_the_answering_embedder_unless_it_truncates_elsewhere(tmp_path: Path) -> None:
    from app.bootstrap import Container
    from tests.conftest import settings_for

    shared = Container(settings_for(tmp_path, ingest_threads=0, ingest_max_tokens=256))  # no second model
    own = Container(settings_for(tmp_path))  # ingestion truncates at 128 by default, queries at 256
    try:
        assert shared.ingest_embedder is shared.embedder
        ingest = own.ingest_embedder
        assert ingest is not own.embedder and ingest is own.ingest_embedder  # built once
        assert ingest.name == own.embedder.name  # the same model: term statistics and searches are unchanged
        assert ingest.max_tokens == 128 and own.embedder.max_tokens == 256  # type: ignore[attr-defined]
        assert ingest.threads == 1 and own.embedder.threads == 1  # type: ignore[attr-defined]
    finally:
        shared.close()
        own.close()


def test_every_core_embeds_only_where_ingesting_is_all_the_process_does(tmp_path: Path) -> None:
    from app.bootstrap import Container
    from tests.conftest import settings_for

    cores = os.cpu_count() or 1
    default = Container(settings_for(tmp_path / "default"))
    try:
        # A process that answers or serves HTTP (serve, its job queue, the operator route) keeps the other cores.
        assert default.knowledge.threads == 1 and default.ingestion(dedicated=False).threads == 1
        # `switchboard ingest` with no server running, and the worker, have nothing else to do.
        assert default.ingestion(dedicated=True).threads == cores
        assert default.ingestion(dedicated=True).embedder is default.knowledge.embedder  # threads share one model
    finally:
        default.close()
    # A configured count wins everywhere; 0 is one per core.
    for configured, threads in ((1, 1), (0, cores), (3, 3)):
        set_ = Container(settings_for(tmp_path / str(configured), ingest_threads=configured))
        try:
            assert set_.knowledge.threads == threads and set_.ingestion(dedicated=True).threads == threads
        finally:
            set_.close()


def test_a_job_an_rq_worker_took_by_its_old_name_embeds_as_the_worker_does(graph: Graph, db: Session) -> None:
    """`run_ingestion_job` without deps is what RQ runs for a job enqueued before `run_queued_job` existed: the
    worker process's ingestion, every core unless INGEST_THREADS says otherwise."""
    from app.bootstrap import Container
    from app.knowledge.indexing import Deps
    from workers.ingest import run_ingestion_job

    asked: list[bool] = []

    class Recording(Container):
        def ingestion(self, *, dedicated: bool) -> Deps:
            asked.append(dedicated)
            return super().ingestion(dedicated=dedicated)

    with installed(Recording(graph.settings())):
        run_ingestion_job("no-such-job")  # nothing to do, after the deps are chosen
    assert asked == [True]


def test_the_embedding_cache_tells_truncation_and_passage_sharing_apart(tmp_path: Path) -> None:
    from app.knowledge.indexing import Deps
    from app.providers.embeddings.minilm import MiniLMEmbedder

    def name(tokens: int, by_passage: bool) -> str:
        return Deps(MiniLMEmbedder(tmp_path, max_tokens=tokens), None, None, None, None,  # type: ignore[arg-type]
                    by_passage=by_passage).cache_name

    assert name(256, False) == "all-MiniLM-L6-v2-int8"  # what earlier versions cached stays valid
    assert len({name(256, False), name(128, False), name(256, True), name(128, True)}) == 4
    with pytest.raises(ValueError, match="max_tokens"):
        MiniLMEmbedder(tmp_path, max_tokens=512)


def test_a_repeated_key_is_embedded_once_and_every_request_gets_its_vector() -> None:
    embedder = RecordingEmbedder()
    with EmbeddingPipeline(embedder, call_texts=4, max_pending=16, remember=8) as pipe:
        first = pipe.submit(["1", "2", "1"])  # a repeat inside one call
        assert first.result(timeout=30) == [[1.0], [2.0], [1.0]]
        # Keys decide, not texts: "9" has key "2", embedded already; "3" is new.
        second = pipe.submit(["9", "3", "1"], keys=["2", "3", "1"])
        assert second.result(timeout=30) == [[2.0], [3.0], [1.0]]
        assert pipe.embedded == 3 and pipe.reused == 3 and sum(embedder.calls) == 3
        with pytest.raises(ValueError, match="2 keys for 1 texts"):
            pipe.submit(["4"], keys=["4", "5"])


def test_only_the_last_remembered_keys_are_reused() -> None:
    embedder = RecordingEmbedder()
    with EmbeddingPipeline(embedder, call_texts=2, max_pending=8, remember=2) as pipe:
        for texts in (["1", "2"], ["3", "4"], ["1", "4"]):  # "1" has been forgotten by then, "4" not
            pipe.submit(texts).result(timeout=30)
        assert pipe.embedded == 5 and pipe.reused == 1 and len(pipe._known) == 2


class HoldsOn(RecordingEmbedder):
    """Waits for the gate only in a call that embeds `text`."""

    def __init__(self, text: str, gate: threading.Event, entered: threading.Event) -> None:
        super().__init__()
        self.text, self.hold, self.entered_hold = text, gate, entered

    def embed_documents(self, texts: Sequence[str]) -> list[list[float]]:
        if self.text in texts:
            self.entered_hold.set()
            assert self.hold.wait(30), "the test never opened the gate"
        return super().embed_documents(texts)


def test_a_reused_vector_forgotten_by_another_thread_meanwhile_still_reaches_its_request() -> None:
    # Found on the whole documentation pack with two threads: a call reused "1", another thread's call evicted
    # "1" while the first was embedding its new texts, and the first thread died on the missing key, leaving
    # the ingestion waiting for ever.
    gate, entered = threading.Event(), threading.Event()
    embedders = [HoldsOn("2", gate, entered), HoldsOn("2", gate, entered)]
    with EmbeddingPipeline(embedders, call_texts=2, max_pending=8, remember=1) as pipe:
        assert pipe.submit(["1"]).result(timeout=30) == [[1.0]]
        held = pipe.submit(["1", "2"])  # reuses "1", embeds "2" behind the gate
        assert entered.wait(30)
        assert pipe.submit(["3"]).result(timeout=30) == [[3.0]]  # the other thread: "3" in, "1" out
        assert "1" not in pipe._known
        gate.set()
        assert held.result(timeout=30) == [[1.0], [2.0]]
        assert pipe.reused == 1 and pipe.embedded == 3


def test_several_embedders_share_the_calls_and_the_order_holds() -> None:
    gate = threading.Event()
    first, second = RecordingEmbedder(gate), RecordingEmbedder(gate)
    entered = [threading.Event(), threading.Event()]
    for embedder, event in zip((first, second), entered, strict=True):
        embedder.entered = event
    with EmbeddingPipeline([first, second], call_texts=4, max_pending=64) as pipe:
        futures = [(texts, pipe.submit(texts)) for texts in (_texts(10 * i, 7) for i in range(6))]
        # Each embedder's first call waits for the gate, so the other thread has to take the next call.
        assert all(event.wait(30) for event in entered)
        gate.set()
        for texts, future in futures:
            assert future.result(timeout=30) == [[float(t)] for t in texts]
    assert sum(first.calls) + sum(second.calls) == 42 and max(first.calls + second.calls) <= 4
    assert first.calls and second.calls


def test_a_document_embedder_truncating_at_fewer_tokens_ignores_what_comes_after(tmp_path: Path) -> None:
    from app.providers.embeddings.minilm import MiniLMEmbedder

    short = MiniLMEmbedder(tmp_path, max_tokens=32)
    head = " ".join(["the parser reads the stream and returns a document"] * 5)  # over 32 tokens already
    one, other = short.embed_documents([head + " about birds", head + " about ships"])
    assert one == other and len(short.tokens([head])[0]) == 30  # 32 with [CLS] and [SEP]
    full = MiniLMEmbedder(tmp_path)
    assert full.embed_documents([head + " about birds"]) != full.embed_documents([head + " about ships"])
