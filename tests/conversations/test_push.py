"""Pushed widget updates: one contract for LocalPush and RedisPush (on the real Redis), the after-commit hook,
the web chat sender that uses it, and the widget read that never moves its cursor past an undelivered reply."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from app.bootstrap import container
from app.bus.memory import MemoryBus
from app.conversations.dispatcher import Dispatcher
from app.conversations.push import LocalPush, Push, RedisPush, notify_on_commit
from app.conversations.replies import add_outbound, outbound_event
from app.conversations.service import accept_inbound
from app.db import migrate, session_scope
from app.models import Conversation, Message
from tests.conftest import REDIS_TEST_URL

PushFactory = Callable[[], Push]
BOUND = 10.0  # seconds before a wait that should succeed is declared failed (never an assertion on speed)


@pytest.fixture(params=["local", "redis"])
def make_push(request: pytest.FixtureRequest) -> Iterator[PushFactory]:
    """Two pushes from one factory behave like two processes: one in-process hub (local), or two Redis
    subscribers on one namespace (redis)."""
    created: list[Push] = []
    shared = LocalPush()
    namespace = request.getfixturevalue("redis_namespace") if request.param == "redis" else ""

    def factory() -> Push:
        push: Push = shared if request.param == "local" else RedisPush(REDIS_TEST_URL, namespace=namespace)
        created.append(push)
        return push

    yield factory
    for push in created:
        push.close()


def test_a_publish_wakes_the_visitors_waiter_even_from_another_process(make_push: PushFactory) -> None:
    api, dispatcher = make_push(), make_push()

    async def scenario() -> None:
        async with api.subscribe("tenant-a", "v_1") as waiter:
            await asyncio.to_thread(dispatcher.publish, "tenant-a", "v_1")  # from another thread, as dispatchers do
            assert await waiter.wait(BOUND)
            assert not await waiter.wait(0)  # the flag was consumed

    asyncio.run(scenario())


def test_a_publish_before_the_wait_is_not_lost(make_push: PushFactory) -> None:
    push = make_push()

    async def scenario() -> None:
        async with push.subscribe("tenant-a", "v_1") as waiter, push.subscribe("tenant-a", "v_2") as marker:
            push.publish("tenant-a", "v_1")
            push.publish("tenant-a", "v_2")
            assert await marker.wait(BOUND)  # delivered in order: v_1's wake-up has been handled too
            assert await waiter.wait(0)

    asyncio.run(scenario())


def test_updates_never_cross_visitors_or_tenants(make_push: PushFactory) -> None:
    push = make_push()

    async def scenario() -> None:
        async with push.subscribe("tenant-a", "v_1") as own, push.subscribe("tenant-b", "v_1") as other_tenant, \
                push.subscribe("tenant-a", "v_2") as other_visitor:
            push.publish("tenant-b", "v_1")  # the same contact id in another tenant
            assert await other_tenant.wait(BOUND)
            push.publish("tenant-a", "v_2")
            assert await other_visitor.wait(BOUND)  # both earlier publishes have been handled
            assert not await own.wait(0)

    asyncio.run(scenario())


def test_a_subscription_is_released_when_the_waiter_leaves(make_push: PushFactory) -> None:
    push = make_push()
    assert isinstance(push, LocalPush)

    async def scenario() -> None:
        async with push.subscribe("tenant-a", "v_1"), push.subscribe("tenant-a", "v_1"):
            assert push.waiting() == 2
        assert push.waiting() == 0

    asyncio.run(scenario())


def _draft(reply_to: str, seq: int, text: str) -> dict[str, object]:
    return {"tenant_id": "tenant-a", "reply_to": reply_to, "seq": seq, "text": text}


def test_drafts_reach_only_the_visitors_draft_waiters_newest_per_reply(make_push: PushFactory) -> None:
    api, orchestrator = make_push(), make_push()

    async def scenario() -> None:
        async with api.subscribe("tenant-a", "v_1", drafts=True) as stream, \
                api.subscribe("tenant-a", "v_1") as long_poll, \
                api.subscribe("tenant-b", "v_1", drafts=True) as other_tenant, \
                api.subscribe("tenant-a", "v_2", drafts=True) as other_visitor:
            def publish() -> None:  # from another thread, in order, as an orchestrator worker does
                orchestrator.publish_draft("tenant-a", "v_1", _draft("m1", 1, "Returns"))
                orchestrator.publish_draft("tenant-a", "v_1", _draft("m1", 2, "Returns are free"))
                orchestrator.publish_draft("tenant-a", "v_1", _draft("m2", 1, "Also"))
                orchestrator.publish_draft("tenant-a", "v_2", _draft("m9", 1, "marker"))

            await asyncio.to_thread(publish)
            marker = await other_visitor.next(BOUND)  # published last: the others have been handled
            assert marker is not None and [d["text"] for d in marker.drafts] == ["marker"]
            update = await stream.next(BOUND)
            assert update is not None and not update.changed  # a draft is not a change to read
            texts = [d["text"] for d in update.drafts]
            if texts == ["Returns"]:  # the first draft was taken before the rest arrived
                later = await stream.next(BOUND)
                assert later is not None
                texts = [d["text"] for d in later.drafts]
            assert texts == ["Returns are free", "Also"]  # coalesced: the newest of each reply, in order
            assert not await long_poll.wait(0)  # the long-poll never hears of drafts
            assert not await other_tenant.wait(0)  # the same contact id in another tenant
            api.publish("tenant-a", "v_1")
            woken = await stream.next(BOUND)
            assert woken is not None and woken.changed and woken.drafts == []

    asyncio.run(scenario())


def test_an_older_draft_never_replaces_a_newer_one(make_push: PushFactory) -> None:
    push = make_push()

    async def scenario() -> None:
        async with push.subscribe("tenant-a", "v_1", drafts=True) as stream:
            push.publish_draft("tenant-a", "v_1", _draft("m1", 5, "newer"))
            push.publish_draft("tenant-a", "v_1", _draft("m1", 4, "older"))
            push.publish_draft("tenant-a", "v_1", _draft("marker", 1, "x"))
            drafts: dict[str, str] = {}
            while "marker" not in drafts:
                update = await stream.next(BOUND)
                assert update is not None
                drafts.update({str(d["reply_to"]): str(d["text"]) for d in update.drafts})
            assert drafts["m1"] == "newer"

    asyncio.run(scenario())


@pytest.fixture
def webchat(sb_home: Path) -> tuple[str, str]:
    """A tenant and a web chat visitor who wrote once (embedded database)."""
    from app.tenants.service import create_tenant

    migrate()
    with session_scope(cross_tenant="tests") as session:
        tenant_id = create_tenant(session, "acme").tenant.id
    accept_inbound(MemoryBus(), tenant_id=tenant_id, channel="webchat", contact_external_id="v_visitor",
                   provider_message_id="v_visitor:1", text="do you ship to Canada?")
    return tenant_id, "v_visitor"


def _reply(tenant_id: str, key: str, text: str) -> str:
    with session_scope(cross_tenant="tests") as session:
        conversation = session.query(Conversation).filter_by(tenant_id=tenant_id).one()
        message, _ = add_outbound(session, conversation, key=key, text=text, author="bot")
        return outbound_event(message, conversation).message_id


def test_the_web_chat_sender_wakes_the_visitor_after_the_dispatcher_commits(webchat) -> None:  # type: ignore[no-untyped-def]

    tenant_id, visitor = webchat
    reply_id = _reply(tenant_id, "reply:1", "Yes, in 5-8 days.")
    push = container().push
    assert isinstance(push, LocalPush)  # embedded

    async def scenario() -> None:
        async with push.subscribe(tenant_id, visitor) as waiter, push.subscribe(tenant_id, "v_someone_else") as other:
            with session_scope(cross_tenant="tests") as session:
                event = outbound_event(session.get_one(Message, reply_id),
                                       session.query(Conversation).filter_by(tenant_id=tenant_id).one())
            await asyncio.to_thread(Dispatcher(container().senders, container().push).deliver, event)
            assert await waiter.wait(BOUND)
            assert not await other.wait(0)
            with session_scope(cross_tenant="tests") as session:  # woken only once the reply is visible
                delivered = session.get_one(Message, reply_id)
                assert delivered.status == "sent"
                assert "sending_until" not in (delivered.meta or {})  # one transaction: no send lease needed

    asyncio.run(scenario())


def test_notify_on_commit_publishes_after_commit_and_forgets_on_rollback(webchat) -> None:  # type: ignore[no-untyped-def]

    tenant_id, visitor = webchat
    push = container().push

    async def scenario() -> None:
        async with push.subscribe(tenant_id, visitor) as waiter:
            with pytest.raises(RuntimeError), session_scope(cross_tenant="tests") as session:
                notify_on_commit(session, push, tenant_id, visitor)
                raise RuntimeError("the transaction fails")
            assert not await waiter.wait(0)
            with session_scope(cross_tenant="tests") as session:
                notify_on_commit(session, push, tenant_id, visitor)
                assert not await waiter.wait(0)  # not before the commit
            assert await waiter.wait(0)

    asyncio.run(scenario())


def test_a_widget_read_stops_before_a_reply_still_being_delivered(webchat) -> None:  # type: ignore[no-untyped-def]
    """The visitor writes again while the first reply is stored but not yet delivered: the read must not
    move its cursor past that reply, or a cursor-based client would never see it."""
    from gateways.webchat.routes import _messages

    tenant_id, visitor = webchat
    reply_id = _reply(tenant_id, "reply:1", "Yes, in 5-8 days.")
    accept_inbound(MemoryBus(), tenant_id=tenant_id, channel="webchat", contact_external_id=visitor,
                   provider_message_id=f"{visitor}:2", text="and to Mexico?")
    first = _messages(tenant_id, visitor, None)
    assert [m.text for m in first.messages] == ["do you ship to Canada?"]
    assert first.cursor is not None
    with session_scope(cross_tenant="tests") as session:
        session.get_one(Message, reply_id).status = "sent"
    after = _messages(tenant_id, visitor, first.messages[-1].created_at)
    assert [m.text for m in after.messages] == ["Yes, in 5-8 days.", "and to Mexico?"]
    assert _messages(tenant_id, "v_nobody", None).messages == []


def test_a_lost_redis_subscription_comes_back_and_wakes_every_waiter(redis_namespace: str) -> None:
    """Whatever was published while the subscription was down is in the database: waking everyone makes
    them read it."""
    import redis

    push = RedisPush(REDIS_TEST_URL, namespace=redis_namespace, reconnect_s=0.05)
    admin = redis.Redis.from_url(REDIS_TEST_URL)

    async def scenario() -> None:
        async with push.subscribe("tenant-a", "v_1") as waiter:
            ours = [c["id"] for c in admin.client_list(_type="pubsub")
                    if c["name"] == f"{redis_namespace}-webchat-push"]
            assert len(ours) == 1
            admin.client_kill_filter(_id=ours[0])
            assert await waiter.wait(BOUND)  # woken by the re-subscription, nobody published
            push.publish("tenant-a", "v_1")  # and live again
            assert await waiter.wait(BOUND)

    try:
        asyncio.run(scenario())
    finally:
        push.close()
        admin.close()
