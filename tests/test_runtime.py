"""The composition root under concurrency: the concurrent orchestrator's workers all ask for the same stores."""

from __future__ import annotations

import threading
from pathlib import Path


def test_threads_asking_for_the_embedded_vector_store_at_once_share_one(sb_home: Path) -> None:
    """qdrant-edge locks its folder to one opener: a second store built by a racing thread failed every message
    it handled (the first messages after `serve` started waited for their redelivery)."""
    from app.runtime import get_vector_store

    (sb_home / "vectors").mkdir(parents=True)
    barrier = threading.Barrier(4)
    stores: list[object] = []
    errors: list[BaseException] = []

    def ask() -> None:
        barrier.wait()
        try:
            stores.append(get_vector_store())
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=ask) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert errors == []
    assert len(stores) == 4 and len({id(store) for store in stores}) == 1


def test_threads_asking_for_the_embedder_at_once_share_one(sb_home: Path) -> None:
    """One embedder per process: its query batcher gathers every worker's queries into shared model calls."""
    from app.runtime import get_embedder

    barrier = threading.Barrier(8)
    embedders: list[object] = []

    def ask() -> None:
        barrier.wait()
        embedders.append(get_embedder())

    threads = [threading.Thread(target=ask) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert len(embedders) == 8 and len({id(e) for e in embedders}) == 1
