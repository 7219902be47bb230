"""Pushed updates for web chat visitors: "something new is in this visitor's conversation, read it".

A notification carries no message content, only the key `(tenant id, visitor's contact id)`. Whoever is woken
reads the conversation from the database with the visitor's own tenant-scoped query, so a notification can
never show anything to the wrong visitor; at worst it causes one needless read. That also makes losing a
notification harmless as long as every waiter reads the database once after subscribing (the widget's event
stream and long-poll do): the database is the record, the notification only shortens the wait.

Two implementations, one contract (tests/conversations/test_push.py):
- `LocalPush` (embedded): waiters in this process, woken from any thread (the dispatcher's, a request's).
- `RedisPush` (scale-out): publishes on one Redis pub/sub channel, `{namespace}:webchat:updates`, so the
  dispatcher in an orchestrator process wakes waiters in every API process. Each process holds one
  subscription (a listener thread) whatever the number of waiters; a lost connection wakes every local waiter
  (they re-read the database) and is re-established.

Publish only after the commit that made the change visible (`notify_on_commit`).

Drafts are the one exception to "no content": while the LLM streams a web chat answer, the orchestrator
publishes the reply so far (`publish_draft`) to the visitor's open event streams (waiters subscribed with
`drafts=True`; the long-poll never asks for them). A draft is ephemeral, never stored, and carries the whole text
so far, so a lost or coalesced one costs nothing: a waiter keeps only the newest draft per reply, and the stored
reply replaces it. It is routed by the same `(tenant id, contact id)` key, in-process embedded and on a second
Redis pub/sub channel, `{namespace}:webchat:drafts`, in scale-out.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

from sqlalchemy import event
from sqlalchemy.orm import Session

log = logging.getLogger(__name__)


def push_key(tenant_id: str, contact_id: str) -> str:
    # Tenant ids contain no spaces, so the key splits back unambiguously (and a collision would only wake).
    return f"{tenant_id} {contact_id}"


def outcome_key(message_id: str) -> str:
    """The second half of the key under which a gateway waiting for the orchestrator's decision on one message
    (USSD, `Intake.await_outcome`) is woken; beside visitors' contact ids and the review console's `@console`."""
    return f"@outcome:{message_id}"


@dataclass
class Update:
    """What woke a waiter: `changed` (the conversation changed: read it), and the newest draft of each reply
    being written (oldest first)."""

    changed: bool = False
    drafts: list[dict[str, Any]] = field(default_factory=list)


class Waiter:
    """One subscriber's wake-up flag, bound to the event loop it was created on. Level-triggered: a
    notification that arrives while nobody is waiting makes the next `wait` return at once. A waiter created
    with `drafts=True` also collects drafts (the newest per reply)."""

    def __init__(self, drafts: bool = False) -> None:
        self._loop = asyncio.get_running_loop()
        self._event = asyncio.Event()
        self.accepts_drafts = drafts
        self._changed = False
        self._drafts: dict[str, dict[str, Any]] = {}
        self._handed: dict[str, int] = {}  # the newest seq handed out per reply (a stream lives minutes)

    def wake(self) -> None:
        """Thread-safe."""
        self._on_loop(self._set_changed)

    def offer(self, draft: dict[str, Any]) -> None:
        """Thread-safe. Keeps only the newest draft (highest `seq`) of each reply, and never hands out one
        older than a draft already handed out."""
        if self.accepts_drafts:
            self._on_loop(lambda: self._keep(draft))

    def _set_changed(self) -> None:
        self._changed = True
        self._event.set()

    def _keep(self, draft: dict[str, Any]) -> None:
        reply_to, seq = str(draft.get("reply_to") or ""), _seq(draft)
        kept = self._drafts.get(reply_to)
        if seq <= self._handed.get(reply_to, -1) or (kept is not None and seq <= _seq(kept)):
            return
        self._drafts.pop(reply_to, None)  # re-inserted last: the dict stays ordered by arrival
        self._drafts[reply_to] = draft
        self._event.set()

    def _on_loop(self, fn: Callable[[], None]) -> None:
        try:
            on_loop = asyncio.get_running_loop() is self._loop
        except RuntimeError:  # called from a thread without a loop (a dispatcher, a sync request handler)
            on_loop = False
        if on_loop:
            fn()
            return
        with contextlib.suppress(RuntimeError):  # the loop is closed: its waiter is gone anyway
            self._loop.call_soon_threadsafe(fn)

    async def wait(self, timeout: float) -> bool:
        """True when woken (and the flag is cleared), False when `timeout` seconds passed first."""
        return await self.next(timeout) is not None

    async def next(self, timeout: float) -> Update | None:
        """What happened since the last call, once something has (None when `timeout` seconds passed first)."""
        if not self._event.is_set():
            try:
                await asyncio.wait_for(self._event.wait(), timeout)
            except TimeoutError:
                return None
        self._event.clear()
        update = Update(self._changed, list(self._drafts.values()))
        self._handed.update((reply_to, _seq(d)) for reply_to, d in self._drafts.items())
        self._changed = False
        self._drafts = {}
        return update


def _seq(draft: dict[str, Any]) -> int:
    seq = draft.get("seq")
    return seq if isinstance(seq, int) else 0


class Push(Protocol):
    in_process: bool  # publishing touches process memory only (else a network round trip: not on an event loop)

    def publish(self, tenant_id: str, contact_id: str) -> None:
        """Wake every waiter on this visitor, in any process. Never raises: a lost notification is only a
        delay (waiters time out and read the database), while raising here would fail work already committed."""
        ...

    def publish_draft(self, tenant_id: str, contact_id: str, draft: dict[str, Any]) -> None:
        """Hand a draft (JSON-serialisable, with `reply_to` and a growing `seq`) to this visitor's open event
        streams, in any process. Ephemeral and lossy by design; never raises."""
        ...

    def subscribe(
        self, tenant_id: str, contact_id: str, *, drafts: bool = False
    ) -> AbstractAsyncContextManager[Waiter]:
        """A `Waiter` for this visitor for the duration of the `async with` (collecting drafts too with
        `drafts=True`). Read the database after entering, so nothing committed before the subscription is
        missed."""
        ...

    def close(self) -> None: ...


class LocalPush:
    in_process = True

    def __init__(self) -> None:
        self._waiters: dict[str, set[Waiter]] = {}
        self._lock = threading.Lock()

    def publish(self, tenant_id: str, contact_id: str) -> None:
        self._wake(push_key(tenant_id, contact_id))

    def publish_draft(self, tenant_id: str, contact_id: str, draft: dict[str, Any]) -> None:
        self._offer(push_key(tenant_id, contact_id), draft)

    @asynccontextmanager
    async def subscribe(self, tenant_id: str, contact_id: str, *, drafts: bool = False) -> AsyncIterator[Waiter]:
        key, waiter = push_key(tenant_id, contact_id), Waiter(drafts)
        with self._lock:
            self._waiters.setdefault(key, set()).add(waiter)
        try:
            await self._ready()
            yield waiter
        finally:
            with self._lock:
                waiters = self._waiters.get(key)
                if waiters is not None:
                    waiters.discard(waiter)
                    if not waiters:
                        del self._waiters[key]

    def waiting(self) -> int:
        """How many waiters this process holds (for tests and metrics)."""
        with self._lock:
            return sum(len(w) for w in self._waiters.values())

    def close(self) -> None:
        self._wake_all()

    async def _ready(self) -> None:
        return None

    def _wake(self, key: str) -> None:
        with self._lock:
            waiters = list(self._waiters.get(key, ()))
        for waiter in waiters:
            waiter.wake()

    def _wake_all(self) -> None:
        with self._lock:
            waiters = [w for ws in self._waiters.values() for w in ws]
        for waiter in waiters:
            waiter.wake()

    def _offer(self, key: str, draft: dict[str, Any]) -> None:
        with self._lock:
            waiters = [w for w in self._waiters.get(key, ()) if w.accepts_drafts]
        for waiter in waiters:
            waiter.offer(draft)


class RedisPush(LocalPush):
    in_process = False

    def __init__(self, url: str, namespace: str = "sb", reconnect_s: float = 1.0) -> None:
        import redis

        super().__init__()
        self.channel = f"{namespace}:webchat:updates"
        self.drafts_channel = f"{namespace}:webchat:drafts"
        self._redis = redis.Redis.from_url(url, socket_timeout=5, client_name=f"{namespace}-webchat-push")
        self._reconnect_s = reconnect_s
        self._subscribed = threading.Event()
        self._stop = threading.Event()
        self._listener: threading.Thread | None = None
        self._start_lock = threading.Lock()

    def publish(self, tenant_id: str, contact_id: str) -> None:
        try:
            self._redis.publish(self.channel, push_key(tenant_id, contact_id))
        except Exception as exc:  # see Push.publish: waiters fall back to their timeout
            log.warning("could not publish a web chat update (%s); open widgets see it at their next read",
                        exc.__class__.__name__)

    def publish_draft(self, tenant_id: str, contact_id: str, draft: dict[str, Any]) -> None:
        try:
            self._redis.publish(self.drafts_channel, json.dumps({"key": push_key(tenant_id, contact_id),
                                                                 "draft": draft}))
        except Exception as exc:  # a lost draft only means the visitor sees the next one, or the reply
            log.warning("could not publish a web chat draft (%s)", exc.__class__.__name__)

    def close(self) -> None:
        self._stop.set()
        super().close()
        if self._listener is not None:
            self._listener.join(5)
        self._redis.close()

    async def _ready(self) -> None:
        """The first subscriber in a process starts the listener and waits until Redis confirms the
        subscription, so a notification published after that cannot be missed."""
        with self._start_lock:
            if self._listener is None:
                self._listener = threading.Thread(target=self._listen, name="sb-webchat-push", daemon=True)
                self._listener.start()
        if not self._subscribed.is_set():
            await asyncio.to_thread(self._subscribed.wait, 10)

    def _listen(self) -> None:
        subscribed_before = False
        while not self._stop.is_set():
            pubsub = self._redis.pubsub()
            try:
                pubsub.subscribe(self.channel, self.drafts_channel)
                while not self._stop.is_set():
                    message: dict[str, Any] | None = pubsub.get_message(timeout=1.0)
                    if message is None:
                        continue
                    if message["type"] == "subscribe" and message["data"] == 2:  # both channels confirmed
                        # A re-subscription (ours or redis-py's own reconnect): whatever was published while
                        # disconnected is in the database, so every waiter reads it.
                        if subscribed_before:
                            self._wake_all()
                        subscribed_before = True
                        self._subscribed.set()
                    elif message["type"] == "message" and _name(message["channel"]) == self.drafts_channel:
                        self._route_draft(message["data"])
                    elif message["type"] == "message":
                        data = message["data"]
                        self._wake(data.decode() if isinstance(data, bytes) else str(data))
            except Exception as exc:
                self._subscribed.clear()
                log.warning("web chat updates: Redis subscription lost (%s); retrying in %.0fs",
                            exc.__class__.__name__, self._reconnect_s)
                self._stop.wait(self._reconnect_s)
            finally:
                with contextlib.suppress(Exception):
                    pubsub.close()


    def _route_draft(self, data: bytes | str) -> None:
        try:
            envelope = json.loads(data)
            key, draft = str(envelope["key"]), envelope["draft"]
        except (ValueError, KeyError, TypeError):
            log.warning("web chat drafts: an unreadable message on %s was ignored", self.drafts_channel)
            return
        if isinstance(draft, dict):
            self._offer(key, draft)


def _name(channel: bytes | str) -> str:
    return channel.decode() if isinstance(channel, bytes) else str(channel)


def notify_on_commit(session: Session, push: Push, tenant_id: str, contact_id: str) -> None:
    """Publish an update for this visitor on `push` when `session` next commits; a rollback forgets it."""
    session.info.setdefault(_PENDING, set()).add((push, tenant_id, contact_id))


_PENDING = "webchat_push_pending"


# One listener for every session, looking at one key, costs less than two listeners added to each session that
# delivers (as app/outbox.py does).
@event.listens_for(Session, "after_commit")
def _publish_pending(session: Session) -> None:
    pending: set[tuple[Push, str, str]] = session.info.pop(_PENDING, ())
    for push, tenant_id, contact_id in pending:
        push.publish(tenant_id, contact_id)


@event.listens_for(Session, "after_rollback")
def _forget_pending(session: Session) -> None:
    session.info.pop(_PENDING, None)
