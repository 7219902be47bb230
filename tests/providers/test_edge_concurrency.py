"""The embedded store under threads: searches side by side, writes alone, and writers never starved."""

from __future__ import annotations

import threading
import uuid
from pathlib import Path

from app.providers.embeddings.base import SparseVector
from app.providers.vectors.base import ChunkPoint
from app.providers.vectors.edge import EdgeVectorStore, ReadWriteLock

WAIT = 5.0  # seconds a step may take before the test fails (never reached when it passes)


def test_readers_share_the_lock() -> None:
    lock = ReadWriteLock()
    inside, release = threading.Barrier(2), threading.Event()

    def reader() -> None:
        with lock.read():
            inside.wait(WAIT)  # both readers are inside at once, or this times out
            release.wait(WAIT)

    threads = [threading.Thread(target=reader) for _ in range(2)]
    for t in threads:
        t.start()
    release.set()
    for t in threads:
        t.join(WAIT)
    assert not inside.broken


def test_a_writer_waits_for_readers_and_then_new_readers_wait_for_it() -> None:
    lock = ReadWriteLock()
    order: list[str] = []
    reading, writer_waiting, done_reading = threading.Event(), threading.Event(), threading.Event()

    def first_reader() -> None:
        with lock.read():
            reading.set()
            done_reading.wait(WAIT)
            order.append("first reader out")

    def writer() -> None:
        writer_waiting.set()
        with lock.write():
            order.append("writer")

    def late_reader() -> None:
        with lock.read():
            order.append("late reader")

    r = threading.Thread(target=first_reader)
    r.start()
    reading.wait(WAIT)
    w = threading.Thread(target=writer)
    w.start()
    writer_waiting.wait(WAIT)
    while not lock._writers_waiting:  # the writer is queued behind the reader
        threading.Event().wait(0.001)
    late = threading.Thread(target=late_reader)
    late.start()
    late.join(0.05)
    assert late.is_alive(), "a reader arriving while a writer waits must wait too (writers are not starved)"
    done_reading.set()
    for t in (r, w, late):
        t.join(WAIT)
    assert order == ["first reader out", "writer", "late reader"]


def test_an_error_inside_releases_the_lock() -> None:
    lock = ReadWriteLock()
    for hold in (lock.read, lock.write):
        try:
            with hold():
                raise ValueError("boom")
        except ValueError:
            pass
    got = threading.Event()

    def writer() -> None:
        with lock.write():
            got.set()

    t = threading.Thread(target=writer)
    t.start()
    t.join(WAIT)
    assert got.is_set()


def _point(tenant: str, i: int) -> ChunkPoint:
    dense = [1.0 if d == i % 8 else 0.1 for d in range(8)]
    return ChunkPoint(str(uuid.uuid5(uuid.NAMESPACE_URL, f"{tenant}/{i}")), tenant, dense,
                      SparseVector([i % 5, 10 + i % 3], [1.0, 1.0]), {"document": f"doc-{i}", "text": f"t{i}"})


def test_concurrent_searches_and_upserts_keep_every_search_whole_and_in_its_tenant(tmp_path: Path) -> None:
    store = EdgeVectorStore(tmp_path / "vectors", dim=8)
    try:
        store.upsert("acme", [_point("acme", i) for i in range(40)])
        store.upsert("globex", [_point("globex", i) for i in range(40)])
        query = [1.0] + [0.0] * 7
        expected = [h.id for h in store.search("acme", query, SparseVector([0], [1.0]), limit=5)]
        errors: list[BaseException] = []
        results: list[list[str]] = []

        def searcher() -> None:
            try:
                for _ in range(30):
                    hits = store.search("acme", query, SparseVector([0], [1.0]), limit=5)
                    assert all(h.payload["tenant_id"] == "acme" for h in hits)
                    results.append([h.id for h in hits])
            except BaseException as exc:  # reported below
                errors.append(exc)

        def writer() -> None:
            try:
                for i in range(40, 70):  # globex grows; acme's results must not move
                    store.upsert("globex", [_point("globex", i)])
            except BaseException as exc:  # reported below
                errors.append(exc)

        threads = [threading.Thread(target=searcher) for _ in range(4)] + [threading.Thread(target=writer)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not errors, errors
        assert len(results) == 120
        assert all(r == expected for r in results)
        assert store.count("globex") == 70
    finally:
        store.close()
