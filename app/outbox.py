"""The transactional outbox: a bus entry that announces a state change is written in that change's transaction.

`add` inserts the entries in the caller's session, so they commit or roll back with the change. After the commit
the writer publishes them itself (`publish_now`, the fast path) and deletes them. If the writer dies between its
commit and its publish, or the bus fails, the entries stay, and a `Relay` (any process's) publishes every entry
whose `not_before` has passed, oldest first, deleting it in the transaction that locked it. A writer that commits
often (`Publisher`) deletes what it published in its next transaction instead of one of their own. `not_before` keeps
relays off an entry while its writer publishes it (`GRACE`), or until a scheduled re-delivery is due (a burst
window, app/assistant/orchestrator.py).

At-least-once: a process that dies after publishing but before deleting leaves the entry to a relay, which
publishes it again; every consumer is idempotent. Several relays at once are safe: on Postgres each takes its rows
with `FOR UPDATE SKIP LOCKED`; on SQLite (one writer at a time) two relays may both publish an entry, which
consumers absorb like any duplicate.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Table, bindparam, delete, event, func, insert, select
from sqlalchemy.orm import Session, sessionmaker

from app import tracing
from app.bus.base import Bus, check_fields, stream_key
from app.contracts import Event
from app.db import get_sessionmaker, session_scope
from app.models import OutboxEntry, utcnow
from app.tenant_scope import session_tenant

log = logging.getLogger(__name__)

# How long relays leave an entry to the writer that publishes it right after its commit: long enough that they
# do not race a live writer, short enough that a dead writer's events are late by seconds, not minutes.
GRACE = timedelta(seconds=10)
POLL_S = 0.5  # a relay looks for due entries at least this often
BATCH = 256
# A `Publisher`'s published entries wait at most this long for a later transaction to delete them (well within
# `GRACE`, so no relay publishes them again), and at most this many at once.
FORGET_AFTER_S = 0.5
PUBLISHED_LIMIT = 1024

OUTBOX: Table = OutboxEntry.__table__  # type: ignore[assignment]

Clock = Callable[[], datetime]


@dataclass(frozen=True)
class Entry:
    """One bus entry to publish; `message_id` names the message it is about (the redrive sweep looks for it)."""

    topic: str
    tenant_id: str
    fields: dict[str, str]
    message_id: str | None = None

    @classmethod
    def of(cls, topic: str, event: Event, message_id: str | None = None, *,
           trace: Mapping[str, str] | None = None) -> Entry:
        """The entry for `event`, carrying the trace context it is made in (or `trace`, one taken earlier), so
        whoever publishes it, now or from the outbox later, continues that trace."""
        return cls(topic, event.tenant_id, tracing.with_context(event.to_bus(), trace), message_id)


@dataclass(frozen=True)
class Pending:
    """An entry written to the outbox: publish it once the transaction that wrote it has committed."""

    id: int
    entry: Entry


_INSERT = insert(OUTBOX).returning(OUTBOX.c.id, sort_by_parameter_order=True)
_DELETE = delete(OUTBOX).where(OUTBOX.c.id.in_(bindparam("ids", expanding=True)),
                               OUTBOX.c.tenant_id.in_(bindparam("tenants", expanding=True)))
_DELETE_ONE = delete(OUTBOX).where(OUTBOX.c.id == bindparam("id"), OUTBOX.c.tenant_id == bindparam("tenant"))
_DUE = (
    select(OUTBOX.c.id, OUTBOX.c.topic, OUTBOX.c.tenant_id, OUTBOX.c.fields, OUTBOX.c.message_id)
    .where(OUTBOX.c.not_before <= bindparam("now"))
    .order_by(OUTBOX.c.id)
    .limit(bindparam("limit"))
    .with_for_update(skip_locked=True)  # rendered on Postgres only
)
_NEXT_DUE = select(func.min(OUTBOX.c.not_before))


def add(session: Session, entries: Sequence[Entry], *, now: datetime | None = None,
        not_before: datetime | None = None) -> list[Pending]:
    """Write `entries` in the caller's transaction. Without `not_before`, the caller publishes them after its
    commit (`publish_now`) and relays leave them alone for `GRACE`; with it, they are a scheduled delivery that a
    relay publishes once due. Entries the bus would refuse fail here, with the caller's transaction."""
    if not entries:
        return []
    for entry in entries:
        stream_key(entry.topic, entry.tenant_id)
        check_fields(entry.fields)
    now = now or utcnow()
    due = not_before or now + GRACE
    ids = session.execute(_INSERT, [
        {"tenant_id": e.tenant_id, "topic": e.topic, "message_id": e.message_id, "fields": e.fields,
         "not_before": due, "created_at": now} for e in entries]).scalars().all()
    return [Pending(int(i), e) for i, e in zip(ids, entries, strict=True)]


def send(bus: Bus, pending: Sequence[Pending]) -> bool:
    """Publish committed entries now. False if the bus failed (logged): the entries stay in the outbox and a relay
    publishes them once their grace is over, so the caller's work is done either way."""
    if not pending:
        return True
    try:
        _publish(bus, [p.entry for p in pending])
    except Exception as exc:
        log.warning("could not publish %d event(s) after their commit (%s: %s); the outbox relay will",
                    len(pending), type(exc).__name__, exc)
        return False
    return True


def remove(session: Session, pending: Sequence[Pending]) -> None:
    """Delete published entries in the caller's transaction (a writer that commits again soon anyway)."""
    if len(pending) == 1:  # the usual one (an outcome's reply): no expanding IN rendered for it
        session.execute(_DELETE_ONE, {"id": pending[0].id, "tenant": pending[0].entry.tenant_id})
    elif pending:
        session.execute(_DELETE, {"ids": [p.id for p in pending], "tenants": sorted(tenants_of(pending))})


def tenants_of(pending: Sequence[Pending]) -> set[str]:
    return {p.entry.tenant_id for p in pending}


def forget(pending: Sequence[Pending], sessions: sessionmaker[Session] | None = None) -> None:
    """Delete published entries. Should that fail, a relay publishes them again later: a harmless duplicate."""
    if not pending:
        return
    [tenant, *others] = tenants_of(pending)
    try:
        with (session_scope(tenant=tenant, sessions=sessions) if not others
              else session_scope(cross_tenant="outbox relay", sessions=sessions)) as session:
            remove(session, pending)
    except Exception as exc:
        log.warning("could not delete %d published outbox entries (%s); a relay will publish them again",
                    len(pending), exc)


def publish_now(bus: Bus, pending: Sequence[Pending]) -> None:
    """The fast path after a commit: publish, then delete. Never raises; what it could not do, a relay does."""
    if send(bus, pending):
        forget(pending)


class Publisher:
    """The fast path for a writer that commits often, one tenant at a time (the orchestrator's outcomes): publish
    after the commit, and delete the published entries in the tenant's next transaction that writes to the
    outbox (`add`), instead of a transaction of their own. One commit per outcome, not two.

    An entry published but not yet deleted is safe: relays leave it alone for its `GRACE` (10 s), and the entries
    nobody deleted with a later transaction within `forget_after_s` (well below it) are deleted by a thread of the
    publisher's own, in a transaction per tenant; so is everything at once when more than `limit` wait (bounded
    memory). A delete that rolls back with its transaction is put back. A process that dies meanwhile leaves its
    entries to a relay, which publishes them again after the grace: the at-least-once every consumer absorbs
    (the dispatcher sends a reply once, app/conversations/dispatcher.py), as when a process dies before its
    delete on the plain fast path (`publish_now`)."""

    def __init__(self, bus: Bus, *, forget_after_s: float = FORGET_AFTER_S, limit: int = PUBLISHED_LIMIT,
                 sessions: sessionmaker[Session] | None = None) -> None:
        self.bus = bus
        self.forget_after_s = forget_after_s
        self.limit = limit
        self.sessions = sessions or get_sessionmaker()
        self._published: dict[str, list[Pending]] = {}  # by tenant, to delete
        self._since: dict[str, float] = {}  # by tenant: when its oldest entry waiting here was published
        self._count = 0
        self._wake = threading.Condition()
        self._thread: threading.Thread | None = None

    def add(self, session: Session, entries: Sequence[Entry], *, now: datetime | None = None) -> list[Pending]:
        """`add` in the caller's transaction, which also deletes its tenant's entries published before."""
        pending = add(session, entries, now=now)
        tenant = session_tenant(session)
        if tenant is not None:
            self._remove_in(session, tenant)
        return pending

    def publish(self, pending: Sequence[Pending]) -> None:
        """After the commit: publish, and keep the entries to delete later. Never raises (see `send`)."""
        if not pending or not send(self.bus, pending):
            return
        with self._wake:
            for tenant in tenants_of(pending):
                self._since.setdefault(tenant, time.monotonic())
            for p in pending:
                self._published.setdefault(p.entry.tenant_id, []).append(p)
            self._count += len(pending)
            over = self._count > self.limit
            if not over and self._thread is None:
                self._thread = threading.Thread(target=self._run, name="sb-outbox-forget", daemon=True)
                self._thread.start()
            self._wake.notify()
        if over:
            self.flush()

    def flush(self, *, older_than_s: float = 0.0) -> None:
        """Delete what waits here (the entries published more than `older_than_s` ago), one transaction per
        tenant."""
        for tenant in self._take_due(older_than_s):
            forget(self._take(tenant), self.sessions)

    def waiting(self) -> int:
        """How many published entries wait for their delete."""
        with self._wake:
            return self._count

    def _remove_in(self, session: Session, tenant: str) -> None:
        taken = self._take(tenant)
        if taken:
            remove(session, taken)
            session.info.setdefault(_REMOVING, []).append((self, tenant, taken))  # see `_put_back_on_rollback`

    def _take(self, tenant: str) -> list[Pending]:
        with self._wake:
            taken = self._published.pop(tenant, [])
            self._since.pop(tenant, None)
            self._count -= len(taken)
            return taken

    def _put_back(self, tenant: str, taken: list[Pending]) -> None:
        with self._wake:
            self._published.setdefault(tenant, [])[:0] = taken
            self._since.setdefault(tenant, time.monotonic())
            self._count += len(taken)
            self._wake.notify()

    def _take_due(self, older_than_s: float) -> list[str]:
        with self._wake:
            cutoff = time.monotonic() - older_than_s
            return [tenant for tenant, since in self._since.items() if since <= cutoff]

    def _run(self) -> None:
        """Deletes what no later transaction took within `forget_after_s`; exits once nothing waits."""
        while True:
            with self._wake:
                if not self._since:
                    self._thread = None
                    return
                wait = min(self._since.values()) + self.forget_after_s - time.monotonic()
                if wait > 0:
                    self._wake.wait(wait)
                    continue
            self.flush(older_than_s=self.forget_after_s)


_REMOVING = "outbox_removing"  # Session.info: the (publisher, tenant, entries) its transaction deletes


@event.listens_for(Session, "after_soft_rollback")
def _put_back_on_rollback(session: Session, _previous: object) -> None:
    """A transaction that deleted a publisher's entries rolled back: they are still there, and wait in their
    publisher again (its flush deletes them if nothing else does). One listener for every session, looking at
    one key, costs less than one listener per transaction. (Put back after a commit, by a later rollback of the
    same session, they are deleted again: a no-op.)"""
    for publisher, tenant, taken in session.info.pop(_REMOVING, ()):
        publisher._put_back(tenant, taken)


def _publish(bus: Bus, entries: Sequence[Entry], *, relayed: bool = False) -> None:
    """One round trip per topic, entries in order."""
    if tracing.enabled():
        _publish_traced(bus, entries, relayed)
        return
    by_topic: dict[str, list[tuple[str, dict[str, str]]]] = {}
    for entry in entries:
        by_topic.setdefault(entry.topic, []).append((entry.tenant_id, entry.fields))
    for topic, items in by_topic.items():
        bus.publish_many(topic, items)


def _publish_traced(bus: Bus, entries: Sequence[Entry], relayed: bool) -> None:
    """`_publish` with a producer span per entry, in the trace the entry carries (else the current one); the
    entry goes out carrying its publish span's context, so its consumer's span is that span's child."""
    here = tracing.current()
    by_topic: dict[str, list[tuple[str, dict[str, str]]]] = {}
    spans = []
    for entry in entries:
        attributes = tracing.bus_attributes(entry.topic, entry.tenant_id, **{
            "messaging.operation.type": "send", "switchboard.message.id": entry.message_id,
            "switchboard.outbox.relayed": relayed})
        span = tracing.start(f"publish {entry.topic}", attributes, kind=tracing.SpanKind.PRODUCER,
                             parent=tracing.extract(entry.fields) or here)
        spans.append(span)
        by_topic.setdefault(entry.topic, []).append((entry.tenant_id, tracing.with_span(entry.fields, span)))
    try:
        for topic, items in by_topic.items():
            bus.publish_many(topic, items)
    except Exception as exc:
        for span in spans:
            tracing.failed(span, exc)
        raise
    finally:
        for span in spans:
            span.end()


class Relay:
    """Publishes the due outbox entries of every tenant. Run one in every process that writes (a thread: `run`).
    It keeps the database it was built with (`sessions`, by default the process's at construction): a relay
    thread never follows the process's engine to another database."""

    def __init__(self, bus: Bus, *, clock: Clock = utcnow, batch: int = BATCH, poll_s: float = POLL_S,
                 backoff_cap_s: float = 5.0, sessions: sessionmaker[Session] | None = None) -> None:
        self.bus = bus
        self.sessions = sessions or get_sessionmaker()
        self.clock = clock
        self.batch = batch
        self.poll_s = poll_s
        self.backoff_cap_s = backoff_cap_s

    def publish_due(self) -> int:
        """One batch of due entries, oldest first: published, then deleted in the transaction that locked them.
        Raises what the bus raised (the entries stay for the next attempt)."""
        with session_scope(cross_tenant="outbox relay", sessions=self.sessions) as session:
            rows = session.execute(_DUE, {"now": self.clock(), "limit": self.batch}).all()
            if not rows:
                return 0
            _publish(self.bus, [Entry(r.topic, r.tenant_id, r.fields, r.message_id) for r in rows], relayed=True)
            session.execute(_DELETE, {"ids": [r.id for r in rows], "tenants": sorted({r.tenant_id for r in rows})})
        log.info("outbox relay published %d event(s)", len(rows))
        return len(rows)

    def publish_all_due(self) -> int:
        """Every entry due now (for tests and shutdown)."""
        total = 0
        while count := self.publish_due():
            total += count
        return total

    def next_due(self) -> datetime | None:
        with session_scope(cross_tenant="outbox relay", sessions=self.sessions) as session:
            return session.scalar(_NEXT_DUE)

    def run(self, stop: threading.Event) -> None:
        """Publish due entries until `stop`: at once while there are more, else at the next entry's time or
        after `poll_s`, whichever comes first (entries written by other processes show up within `poll_s`)."""
        backoff = 0.0
        while not stop.is_set():
            try:
                if self.publish_due() >= self.batch:
                    continue
                wait = self.poll_s
                due = self.next_due()
                if due is not None:
                    # Not below a floor: an entry due now that another relay holds locked must not make us spin.
                    wait = min(wait, max((due - self.clock()).total_seconds(), 0.05))
                backoff = 0.0
            except Exception as exc:
                backoff = min(max(backoff * 2, 0.1), self.backoff_cap_s)
                log.warning("outbox relay failed (%s: %s); retrying in %.1fs", type(exc).__name__, exc, backoff)
                wait = backoff
            stop.wait(wait)


def start_relay(bus: Bus, stop: threading.Event) -> threading.Thread:
    """A relay thread until `stop`; whoever sets `stop` joins it (`stop_threads`)."""
    thread = threading.Thread(target=Relay(bus).run, args=(stop,), name="sb-outbox-relay", daemon=True)
    thread.start()
    return thread


def stop_threads(stop: threading.Event, threads: Sequence[threading.Thread], timeout: float = 10.0) -> None:
    """Set `stop` and join `threads`. One still running after `timeout` is logged as an error, never left behind
    silently: it would go on using this process's services after their owner closed them."""
    stop.set()
    deadline = time.monotonic() + timeout
    for thread in threads:
        thread.join(max(deadline - time.monotonic(), 0.0))
    alive = [t.name for t in threads if t.is_alive()]
    if alive:
        log.error("background thread(s) still running %.0fs after stop: %s", timeout, ", ".join(alive))
