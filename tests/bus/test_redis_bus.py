"""What only the Redis bus has: several nodes, connections that die, a server that is
not there, and what it leaves in Redis."""

from __future__ import annotations

import asyncio

import pytest
from redis.asyncio import Redis

from sanic_chat.bus.redis import RedisBus
from sanic_chat.core.errors import Unavailable
from sanic_chat.core.events import GenerationDelta, ServerEvent, encode_event
from tests.bus._support import (
    completed,
    deltas,
    eventually,
    eventually_async,
    new_id,
    redis_bus,
    started,
    text_pieces,
)
from tests.bus.conftest import MakeBus


async def _client_ids(admin: Redis, name: str) -> list[int]:
    clients = await admin.client_list()
    return [int(c["id"]) for c in clients if c.get("name") == name]


async def test_a_listener_on_one_node_hears_the_events_published_on_another(
    make_redis_bus: MakeBus,
) -> None:
    node_a = await redis_bus(make_redis_bus, node_id="a")
    node_b = await redis_bus(make_redis_bus, node_id="b")
    conversation = new_id()
    start = started(conversation)
    pieces = text_pieces(100)
    events: list[ServerEvent] = [
        start,
        *deltas(start.generation_id, pieces),
        completed(start, "".join(pieces)),
    ]
    heard: list[ServerEvent] = []
    await node_b.subscribe(conversation, heard.append)

    for event in events:
        await node_a.publish(conversation, event)

    await eventually(lambda: len(heard) == len(events))
    assert heard == events
    tail = await node_b.tail(start.generation_id)  # written by A, read by B
    assert tail is not None
    assert tail.text == "".join(pieces) and tail.terminal == events[-1]


async def test_a_cancel_requested_on_one_node_reaches_the_node_running_the_reply(
    make_redis_bus: MakeBus,
) -> None:
    node_a = await redis_bus(make_redis_bus, node_id="a")
    node_b = await redis_bus(make_redis_bus, node_id="b")
    asked_a: list[str] = []
    await node_a.on_cancel(asked_a.append)
    generation_id = new_id()

    await node_b.request_cancel(generation_id)

    await eventually(lambda: asked_a == [generation_id])


async def test_one_pubsub_connection_carries_every_conversation_and_is_released_when_unused(
    make_redis_bus: MakeBus, redis_admin: Redis
) -> None:
    bus = await redis_bus(make_redis_bus)
    one, two = new_id(), new_id()
    unsubscribes = [
        await bus.subscribe(one, lambda e: None),
        await bus.subscribe(one, lambda e: None),
        await bus.subscribe(two, lambda e: None),
    ]
    channel_one, channel_two = f"{bus.prefix}:conv:{one}", f"{bus.prefix}:conv:{two}"

    assert len(await _client_ids(redis_admin, bus.subscriber_client_name)) == 1
    assert dict(await redis_admin.pubsub_numsub(channel_one, channel_two)) == {
        channel_one.encode(): 1,  # one Redis subscription for two local listeners
        channel_two.encode(): 1,
    }

    await unsubscribes[0]()
    assert dict(await redis_admin.pubsub_numsub(channel_one))[channel_one.encode()] == 1
    await unsubscribes[1]()
    await unsubscribes[2]()
    await eventually_async(
        lambda: redis_admin.pubsub_numsub(channel_one, channel_two),
        lambda numsub: all(count == 0 for _, count in numsub),
    )


async def test_the_reader_reconnects_and_resubscribes_after_its_connection_is_killed(
    make_redis_bus: MakeBus, redis_admin: Redis
) -> None:
    bus = await redis_bus(make_redis_bus)
    publisher = await redis_bus(make_redis_bus)
    conversation = new_id()
    heard: list[ServerEvent] = []
    asked: list[str] = []
    await bus.subscribe(conversation, heard.append)
    await bus.on_cancel(asked.append)
    [old_id] = await _client_ids(redis_admin, bus.subscriber_client_name)

    await redis_admin.client_kill_filter(_id=str(old_id))

    # a new connection, subscribed again to the conversation and the cancel channel
    await eventually_async(
        lambda: _client_ids(redis_admin, bus.subscriber_client_name),
        lambda ids: len(ids) == 1 and ids[0] != old_id,
    )
    channel = f"{bus.prefix}:conv:{conversation}"
    await eventually_async(
        lambda: redis_admin.pubsub_numsub(channel), lambda numsub: numsub[0][1] == 1
    )
    await bus.ping()
    start = started(conversation)
    events: list[ServerEvent] = [start, *deltas(start.generation_id, ["after ", "the ", "drop"])]
    for event in events:
        await publisher.publish(conversation, event)
    await eventually(lambda: heard == events)
    generation_id = new_id()
    await publisher.request_cancel(generation_id)
    await eventually(lambda: asked == [generation_id])


async def test_publishing_survives_its_connection_being_killed(
    make_redis_bus: MakeBus, redis_admin: Redis
) -> None:
    bus = await redis_bus(make_redis_bus)
    conversation = new_id()
    heard: list[ServerEvent] = []
    await bus.subscribe(conversation, heard.append)
    start = started(conversation)
    await bus.publish(conversation, start)
    [publisher_id] = await _client_ids(redis_admin, bus.publisher_client_name)

    await redis_admin.client_kill_filter(_id=str(publisher_id))
    delta = deltas(start.generation_id, ["still delivered"])[0]
    await bus.publish(conversation, delta)  # a fresh connection, no Unavailable

    await eventually(lambda: heard == [start, delta])
    tail = await bus.tail(start.generation_id)
    assert tail is not None and tail.text == "still delivered"


async def test_everything_raises_unavailable_when_redis_is_not_there() -> None:
    bus = RedisBus(
        "redis://127.0.0.1:1/0", prefix=f"sanic-chat-test:{new_id()}", connect_timeout_s=0.3
    )
    try:
        with pytest.raises(Unavailable):
            await bus.start()
        with pytest.raises(Unavailable):
            await bus.ping()
        with pytest.raises(Unavailable):
            await bus.publish(new_id(), started(new_id()))
        with pytest.raises(Unavailable):
            await bus.tail(new_id())
        with pytest.raises(Unavailable):
            await bus.request_cancel(new_id())
        with pytest.raises(Unavailable):
            await bus.subscribe(new_id(), lambda e: None)
        with pytest.raises(Unavailable):
            await bus.on_cancel(lambda g: None)
        assert bus.subscriber_count(new_id()) == 0
    finally:
        await bus.close()
    with pytest.raises(Unavailable):
        await bus.publish(new_id(), started(new_id()))  # closed stays closed


async def test_tails_always_carry_an_expiry_and_a_running_one_is_refreshed(
    make_redis_bus: MakeBus, redis_admin: Redis
) -> None:
    """No stream lives forever: started sets a safety expiry, deltas refresh it while the
    reply runs, the terminal event shortens it to tail_ttl_s, and a late delta does not
    lengthen a closed tail again."""
    bus = await redis_bus(make_redis_bus, tail_ttl_s=0.1, safety_ttl_s=1.0)
    conversation = new_id()
    start = started(conversation)
    key = f"{bus.prefix}:gen:{start.generation_id}"
    first, second = deltas(start.generation_id, ["a", "b"])

    await bus.publish(conversation, start)
    assert 800 < await redis_admin.pttl(key) <= 1000
    await asyncio.sleep(0.6)  # less than half of the safety expiry is left
    await bus.publish(conversation, first)
    assert 800 < await redis_admin.pttl(key) <= 1000, "a running tail is refreshed"

    await bus.publish(conversation, completed(start, "a"))
    assert 0 < await redis_admin.pttl(key) <= 100
    await bus.publish(conversation, second)
    assert 0 < await redis_admin.pttl(key) <= 100, "a closed tail is not refreshed"

    stray = new_id()  # a delta whose generation never started (or whose tail is gone)
    await bus.publish(conversation, GenerationDelta(stray, 0, "x"))
    # refused: a tail never starts with a gap, and nothing is left behind to expire
    assert await redis_admin.pttl(f"{bus.prefix}:gen:{stray}") == -2


async def test_a_long_reply_tail_is_read_whole(make_redis_bus: MakeBus) -> None:
    bus = await redis_bus(make_redis_bus)
    conversation = new_id()
    start = started(conversation)
    pieces = text_pieces(8000)
    ending = completed(start, "".join(pieces))
    await bus.publish(conversation, start)
    for delta in deltas(start.generation_id, pieces):
        await bus.publish(conversation, delta)
    await bus.publish(conversation, ending)

    tail = await bus.tail(start.generation_id)

    assert tail is not None and tail.text == "".join(pieces) and tail.terminal == ending


async def test_subscribe_returns_only_once_redis_confirmed_it(
    make_redis_bus: MakeBus, redis_admin: Redis
) -> None:
    """Published right after subscribe returns, from a plain client: must arrive."""
    bus = await redis_bus(make_redis_bus)
    for _ in range(20):
        conversation = new_id()
        heard: list[ServerEvent] = []
        unsubscribe = await bus.subscribe(conversation, heard.append)
        channel = f"{bus.prefix}:conv:{conversation}"
        start = started(conversation)
        assert await redis_admin.publish(channel, encode_event(start)) == 1
        await eventually(lambda: heard == [start])  # noqa: B023 -- awaited in the loop
        await unsubscribe()


async def test_subscribing_while_the_connection_is_down_waits_for_the_new_subscription(
    make_redis_bus: MakeBus, redis_admin: Redis
) -> None:
    """subscribe() returns only once Redis confirmed it, even across a reconnect: what is
    published the moment it returns is heard."""
    bus = await redis_bus(make_redis_bus)
    [old_id] = await _client_ids(redis_admin, bus.subscriber_client_name)
    await redis_admin.client_kill_filter(_id=str(old_id))
    conversation = new_id()
    heard: list[ServerEvent] = []

    await bus.subscribe(conversation, heard.append)

    start = started(conversation)
    channel = f"{bus.prefix}:conv:{conversation}"
    assert await redis_admin.publish(channel, encode_event(start)) == 1
    await eventually(lambda: heard == [start])
    assert await _client_ids(redis_admin, bus.subscriber_client_name) != [old_id]


async def test_health_checks_keep_a_healthy_connection(
    make_redis_bus: MakeBus, redis_admin: Redis
) -> None:
    """The PINGs that detect a dead peer do not replace a live connection."""
    bus = await redis_bus(make_redis_bus, health_check_s=0.05)
    conversation = new_id()
    heard: list[ServerEvent] = []
    await bus.subscribe(conversation, heard.append)
    [first_id] = await _client_ids(redis_admin, bus.subscriber_client_name)

    await asyncio.sleep(0.5)  # ten health checks

    assert await _client_ids(redis_admin, bus.subscriber_client_name) == [first_id]
    await bus.ping()
    start = started(conversation)
    await bus.publish(conversation, start)
    await eventually(lambda: heard == [start])
