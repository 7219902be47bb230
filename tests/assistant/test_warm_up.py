"""An answering role loads the models every message needs when it starts, before it reads the first message
(app/workers_runtime.py `warm_up`): otherwise the customers who write first after a deploy all wait for them."""

from __future__ import annotations

import threading

import pytest

from app.assistant import language
from app.bootstrap import Container
from app.bus.memory import MemoryBus
from app.providers.embeddings.minilm import MiniLMEmbedder
from app.workers_runtime import build_consumers
from tests.conftest import Graph


@pytest.fixture
def unloaded(graph: Graph, monkeypatch: pytest.MonkeyPatch) -> Container:
    """A new container (its embedder has no model yet) and no language detector loaded in the process."""
    monkeypatch.setattr(language, "_detector", None)
    container = graph.configure()
    embedder = container.embedder
    assert isinstance(embedder, MiniLMEmbedder) and embedder._model is None
    return container


def test_the_answering_role_loads_its_models_before_it_reads(unloaded: Container) -> None:
    [orchestrator] = build_consumers(unloaded, MemoryBus(), threading.Event(), answer=True, deliver=False)
    assert orchestrator.group == "orchestrator"
    assert unloaded.embedder._model is not None  # type: ignore[attr-defined]
    assert language._detector is not None
    assert language.detect("Bonjour, je voudrais retourner mes chaussures").language == "fr"


def test_a_delivering_role_loads_none(unloaded: Container) -> None:
    [dispatcher] = build_consumers(unloaded, MemoryBus(), threading.Event(), answer=False, deliver=True)
    assert dispatcher.group == "dispatcher"
    assert unloaded.embedder._model is None  # type: ignore[attr-defined]
    assert language._detector is None
