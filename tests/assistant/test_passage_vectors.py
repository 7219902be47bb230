"""Passages' units vectors kept in the database (app/assistant/passage_units.py, `StoredVectors`, migration 0018):
a restarted process, an answering process or a replica reads them instead of embedding the passage again; they
are kept per tenant and model, anything unreadable is embedded again, and a text no chunk holds any more is
forgotten when its pack version is pruned. On SQLite and Postgres (row-level security on)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from app.assistant.grounding import GroundingChecker
from app.assistant.passage_units import StoredVectors
from app.db import migrate, session_scope
from app.knowledge import versions
from app.knowledge.ids import passage_digest
from app.models import Base, Chunk, Document, PackVersion, PassageVectors, new_id
from tests.assistant.helpers import SHIPPING_FAQ, FakePassage
from tests.conftest import Graph
from tests.knowledge.test_migration import _cfg, empty_db  # noqa: F401  (fixture)

SHIPPING = FakePassage("c2", "faq.csv", "", SHIPPING_FAQ, 0.7)
REPLY = "We ship to Norway in 5 days [1]."


class Embed:
    """A deterministic stand-in for the model (the vectors' origin does not matter here), counting its calls."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, texts: Sequence[str]) -> list[list[float]]:
        self.calls += 1
        rng = np.random.default_rng(len(texts))
        return [list(v / np.linalg.norm(v)) for v in rng.normal(size=(len(texts), 8))]


@pytest.fixture(params=["sqlite", "postgres"])
def tenants(request: pytest.FixtureRequest, graph: Graph) -> tuple[str, str]:
    from app.tenants.service import create_tenant

    if request.param == "postgres":
        graph.configure(database_url=request.getfixturevalue("pg_url"))
    migrate()
    with session_scope(cross_tenant="tests") as session:
        first, second = (create_tenant(session, f"pv-{request.param}-{id(request)}-{n}").tenant.id for n in (1, 2))
        return first, second


def _checker(embed: Embed, model: str = "test-model/8") -> GroundingChecker:
    """A process's checker: its own empty cache, the database's kept vectors."""
    return GroundingChecker(embed, store=StoredVectors(model))


def _kept(tenant_id: str) -> list[PassageVectors]:
    with session_scope(cross_tenant="tests") as session:
        return list(session.scalars(select(PassageVectors).where(PassageVectors.tenant_id == tenant_id)))


def test_a_passage_embedded_once_is_read_back_by_a_later_process(tenants: tuple[str, str]) -> None:
    tenant, _ = tenants
    first = Embed()
    units = _checker(first)._units(SHIPPING, tenant)
    assert first.calls == 1
    [row] = _kept(tenant)
    assert (row.rows, row.dim) == units.vectors.shape

    later = Embed()  # a restart: nothing in memory
    again = _checker(later)._units(SHIPPING, tenant)
    assert later.calls == 0
    assert np.array_equal(again.vectors, units.vectors) and again.texts == units.texts
    verdicts = [_checker(e).check(REPLY, [SHIPPING], tenant_id=tenant) for e in (Embed(), Embed())]
    assert verdicts[0] == verdicts[1]


def test_kept_vectors_are_the_tenants_own_and_the_models(tenants: tuple[str, str]) -> None:
    tenant, other = tenants
    _checker(Embed())._units(SHIPPING, tenant)
    other_tenant, other_model = Embed(), Embed()
    _checker(other_tenant)._units(SHIPPING, other)  # the same text in another tenant's pack: embedded for it
    _checker(other_model, model="another-model/8")._units(SHIPPING, tenant)
    assert (other_tenant.calls, other_model.calls) == (1, 1)
    assert len(_kept(tenant)) == 2 and len(_kept(other)) == 1
    untagged = Embed()  # a check that names no tenant (a benchmark, a tool) neither reads nor keeps
    _checker(untagged)._units(FakePassage("c9", "x.md", "", "Returns are free. We refund in 5 days.", 0.5))
    assert untagged.calls == 1 and len(_kept(tenant)) == 2


def test_a_passage_evicted_during_a_check_is_read_back_not_embedded(tenants: tuple[str, str]) -> None:
    """A checker whose cache holds fewer passages than a reply cites loses the first between reading the units and
    measuring the sentences against them: it reads them back from the tenant's kept vectors again."""
    tenant, _ = tenants
    returns = FakePassage("c3", "returns.md", "", "Returns are free within 30 days. We refund in 5 days.", 0.6)
    for passage in (SHIPPING, returns):
        _checker(Embed())._units(passage, tenant)
    units, sentences = Embed(), Embed()
    checker = GroundingChecker(units, embed_sentences=sentences, cache_size=1, store=StoredVectors("test-model/8"))
    checker.check("We ship to Norway in 5 days [1]. Returns are free within 30 days [2].", [SHIPPING, returns],
                  tenant_id=tenant)
    assert units.calls == 0


def test_vectors_of_another_shape_are_embedded_again(tenants: tuple[str, str]) -> None:
    tenant, _ = tenants
    units = _checker(Embed())._units(SHIPPING, tenant)
    with session_scope(cross_tenant="tests") as session:
        session.execute(update(PassageVectors).where(PassageVectors.tenant_id == tenant)
                        .values(vectors=b"\x00" * 12))  # a truncated row
    embed = Embed()
    again = _checker(embed)._units(SHIPPING, tenant)
    assert embed.calls == 1 and np.array_equal(again.vectors, units.vectors)


def test_0018_matches_the_model_round_trips_and_holds_rows_to_their_tenant(empty_db: str) -> None:  # noqa: F811
    url = empty_db.replace("postgresql://", "postgresql+psycopg://")
    command.upgrade(_cfg(url), "head")
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
            assert [d for d in diff if "passage_vectors" in repr(d)] == []
            if engine.dialect.name == "postgresql":
                assert conn.execute(sa.text("SELECT relrowsecurity AND relforcerowsecurity FROM pg_class "
                                            "WHERE relname = 'passage_vectors'")).scalar() is True
        command.downgrade(_cfg(url), "0017")
        with engine.connect() as conn:
            assert "passage_vectors" not in sa.inspect(conn).get_table_names()
        command.upgrade(_cfg(url), "head")
    finally:
        engine.dispose()


class _Stores:
    """The vector and object stores `versions.prune` clears, as no-ops: only the database matters here."""

    def delete_where(self, tenant_id: str, filters: dict) -> None: ...
    def delete(self, key: str) -> None: ...
    def list(self, prefix: str) -> list[str]:
        return []


def _version(session: Session, tenant_id: str, version: int, status: str, texts: list[str]) -> None:
    session.add(PackVersion(id=new_id(), tenant_id=tenant_id, version=version, status=status))
    doc = Document(id=new_id(), tenant_id=tenant_id, pack_version=version, path="faq.md", kind="markdown",
                   content_hash=str(version))
    session.add(doc)
    session.flush()
    session.add_all(Chunk(id=new_id(), tenant_id=tenant_id, document_id=doc.id, ordinal=i, text=text)
                    for i, text in enumerate(texts))


def test_pruning_a_version_forgets_the_vectors_only_it_held(tenants: tuple[str, str]) -> None:
    tenant, other = tenants
    gone, kept, live = "Old shipping: 9 days.", "Returns are free.", "We ship to Norway in 5 days."
    with session_scope(tenant=tenant) as session:
        _version(session, tenant, 1, "retired", [gone, kept])
        _version(session, tenant, 2, "retired", [kept])
        _version(session, tenant, 3, "live", [kept, live])
    with session_scope(tenant=other) as session:  # the same text in another tenant's live pack
        _version(session, other, 1, "live", [gone])
    for tenant_id, text in ((tenant, gone), (tenant, kept), (tenant, live), (other, gone)):
        StoredVectors("test-model/8").save(tenant_id, passage_digest(text), np.ones((2, 8), dtype=np.float32))
    stores = _Stores()
    with session_scope(tenant=tenant) as session:
        assert versions.prune(session, stores, stores, tenant, keep=1) == [1]  # type: ignore[arg-type]
    assert {row.digest for row in _kept(tenant)} == {passage_digest(kept), passage_digest(live)}
    assert [row.digest for row in _kept(other)] == [passage_digest(gone)]  # another tenant's text stays its own
    with session_scope(tenant=tenant) as session:  # texts still held, or never kept: nothing goes
        assert versions.forget_passage_vectors(session, tenant, [kept, live, "Never cited."]) == 0
        assert versions.prune(session, stores, stores, tenant, keep=1) == []  # type: ignore[arg-type]
    assert len(_kept(tenant)) == 2
