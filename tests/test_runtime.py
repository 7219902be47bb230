"""The composition root: the concurrent orchestrator's workers all ask for the same stores, and an installed container
is the process's settings and database."""

from __future__ import annotations

import threading
from pathlib import Path

from app.bootstrap import Container


def test_threads_asking_for_the_embedded_vector_store_at_once_share_one(sb_home: Path, services: Container) -> None:
    """qdrant-edge locks its folder to one opener: a second store built by a racing thread failed every message
    it handled (the first messages after `serve` started waited for their redelivery)."""
    (sb_home / "vectors").mkdir(parents=True)
    barrier = threading.Barrier(4)
    stores: list[object] = []
    errors: list[BaseException] = []

    def ask() -> None:
        barrier.wait()
        try:
            stores.append(services.vector_store)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=ask) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert errors == []
    assert len(stores) == 4 and len({id(store) for store in stores}) == 1


def test_threads_asking_for_the_embedder_at_once_share_one(services: Container) -> None:
    """One embedder per process: its query batcher gathers every worker's queries into shared model calls."""
    barrier = threading.Barrier(8)
    embedders: list[object] = []

    def ask() -> None:
        barrier.wait()
        embedders.append(services.embedder)

    threads = [threading.Thread(target=ask) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert len(embedders) == 8 and len({id(e) for e in embedders}) == 1


def test_a_test_container_is_the_one_entry_points_and_apps_use(services: Container) -> None:
    """The `services` fixture installs its graph: what `create_app()` serves with and what the CLI's entry points
    look up is that object, so a test's fakes reach every part without environment variables."""
    from app.bootstrap import container
    from app.main import create_app

    assert container() is services
    assert create_app(run_workers=False).state.container is services
    assert services.knowledge.vectors is services.vector_store and services.knowledge.bus is services.bus
    assert services.retriever.embedder is services.embedder


def test_the_grounding_checker_is_the_containers_own(services: Container) -> None:
    """One checker (and passage cache) per container, on its embedder; another container gets its own (not
    closed here: it holds this one's embedder)."""
    from app.config import get_settings

    assert services.grounding is services.grounding
    assert Container(get_settings(), embedder=services.embedder).grounding is not services.grounding


def test_an_orchestrator_given_a_retrieval_builds_no_store_of_its_own(services: Container) -> None:
    """`Orchestrator.of` takes from the container only what it is not given: a test's retrieval opens no vector
    store (the embedded one allows one opener: here another container already holds it)."""
    import pytest

    from app.assistant.orchestrator import Orchestrator
    from app.bus.memory import MemoryBus
    from app.config import get_settings
    from app.providers.vectors.edge import VectorStoreLocked

    (services.settings.home_dir / "vectors").mkdir(parents=True, exist_ok=True)
    services.vector_store  # opening it takes the folder's lock
    other = Container(get_settings(), bus=MemoryBus())
    orchestrator = Orchestrator.of(other, retrieve=lambda *a, **k: [])
    assert orchestrator.bus is other.bus and orchestrator.push is other.push
    with pytest.raises(VectorStoreLocked):
        other.retriever  # what the orchestrator would have opened by default
    with pytest.raises(TypeError, match="unknown services \\['retriever'\\]"):
        Orchestrator.of(other, retriever=lambda *a, **k: [])


def test_an_installed_container_brings_its_settings_and_database_and_takes_them_back(tmp_path: Path) -> None:
    """What `get_settings()` and `session_scope()` use without being handed anything follows the installed
    container: a test's graph reaches every module, and the one installed before comes back afterwards."""
    from sqlalchemy import event

    from app import db
    from app.config import get_settings
    from tests.conftest import installed, settings_for

    first, second = Container(settings_for(tmp_path / "a")), Container(settings_for(tmp_path / "b"))
    engine, disposed = second.database.engine, []
    event.listen(engine, "engine_disposed", disposed.append)
    with installed(first):
        assert get_settings() is first.settings and db.current() is first.database
        with installed(second):
            assert get_settings() is second.settings and db.get_engine() is engine
            with db.session_scope(cross_tenant="test") as session:
                assert session.get_bind() is engine
            assert str(db.get_engine().url).endswith(f"{tmp_path / 'b' / 'switchboard.db'}")
        assert disposed == [engine]  # closed with its container
        assert get_settings() is first.settings and db.current() is first.database


def test_without_a_container_installed_the_process_builds_one_from_its_environment(tmp_path: Path) -> None:
    """The production path (an entry point's first `container()`): the environment's settings, and the database
    module-level code already used, in one graph."""
    import os
    import subprocess
    import sys

    from tests.conftest import REPO

    probe = ("from app import bootstrap, config, db\n"
             "before = db.current()\n"
             "services = bootstrap.container()\n"
             "assert services.settings is config.get_settings() is config.from_environment()\n"
             "assert services.database is db.current() is before\n"
             "print(services.settings.home, services.settings.llm_model)\n")
    env = {k: v for k, v in os.environ.items() if not k.endswith(("DATABASE_URL", "REDIS_URL"))}
    env.update(SWITCHBOARD_HOME=str(tmp_path), LLM_MODEL="from-the-environment")
    done = subprocess.run([sys.executable, "-c", probe], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [str(tmp_path), "from-the-environment"]
