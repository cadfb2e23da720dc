"""A running reply's live tail survives the loss of its stream (a Redis restart without
persistence, an evicted or deleted key): the process that runs the reply writes it anew,
on its next delta or as soon as its pub/sub connection is back. (The full restart, two
nodes and many resumers: tests/cluster/test_redis_restart.py.)"""

from __future__ import annotations

from redis.asyncio import Redis

from sanic_chat.core.events import GenerationDelta, ServerEvent
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


async def test_a_delta_that_finds_its_tail_gone_restores_the_whole_text(
    make_redis_bus: MakeBus, redis_admin: Redis
) -> None:
    publisher = await redis_bus(make_redis_bus, node_id="a")
    other = await redis_bus(make_redis_bus, node_id="b")
    conversation = new_id()
    start = started(conversation)
    pieces = text_pieces(30)
    before, after = (
        deltas(start.generation_id, pieces)[:20],
        deltas(start.generation_id, pieces)[20:],
    )
    await publisher.publish(conversation, start)
    for delta in before:
        await publisher.publish(conversation, delta)
    heard: list[ServerEvent] = []
    await other.subscribe(conversation, heard.append)

    await redis_admin.delete(f"{publisher.prefix}:gen:{start.generation_id}")
    assert await other.tail(start.generation_id) is None

    await publisher.publish(conversation, after[0])
    tail = await other.tail(start.generation_id)
    assert tail is not None and tail.started == start
    assert tail.text == "".join(pieces[:21]), "one resume finds every code point so far"
    # a follower that joined from an older checkpoint gets the whole text live too
    await eventually(lambda: bool(heard))
    assert heard[0] == GenerationDelta(start.generation_id, 0, "".join(pieces[:21]))

    for delta in after[1:]:
        await publisher.publish(conversation, delta)
    await publisher.publish(conversation, completed(start, "".join(pieces)))
    tail = await other.tail(start.generation_id)
    assert tail is not None and tail.text == "".join(pieces) and tail.terminal is not None


async def test_a_follower_in_the_publishing_process_gets_the_restored_whole_text_too(
    make_redis_bus: MakeBus, redis_admin: Redis
) -> None:
    """The restore's whole-text delta is this process's own event: its pub/sub echo is
    dropped, so its listeners hear it from the restore itself -- a follower here that
    joined from an older checkpoint while the stream was gone gets the text it misses."""
    publisher = await redis_bus(make_redis_bus, node_id="a")
    conversation = new_id()
    start = started(conversation)
    pieces = text_pieces(30)
    for event in (start, *deltas(start.generation_id, pieces[:20])):
        await publisher.publish(conversation, event)
    heard: list[ServerEvent] = []
    await publisher.subscribe(conversation, heard.append)

    await redis_admin.delete(f"{publisher.prefix}:gen:{start.generation_id}")
    await publisher.publish(conversation, deltas(start.generation_id, pieces)[20])

    whole = "".join(pieces[:21])
    assert heard == [GenerationDelta(start.generation_id, 0, whole)]
    tail = await publisher.tail(start.generation_id)
    assert tail is not None and tail.text == whole
    # its echo (the only one: the channel was subscribed after the first 21 events) is
    # dropped, so the whole text is heard once
    await eventually(lambda: publisher.echoes_skipped == 1)
    assert len(heard) == 1


async def test_after_the_pubsub_connection_returns_open_tails_are_restored_without_a_delta(
    make_redis_bus: MakeBus, redis_admin: Redis
) -> None:
    publisher = await redis_bus(make_redis_bus, node_id="a")
    conversation = new_id()
    running, ended = started(conversation), started(conversation)
    await publisher.publish(conversation, running)
    await publisher.publish(conversation, ended)
    for delta in deltas(running.generation_id, ["so ", "far"]):
        await publisher.publish(conversation, delta)
    await publisher.publish(conversation, deltas(ended.generation_id, ["done"])[0])
    await publisher.publish(conversation, completed(ended, "done"))
    await redis_admin.delete(
        f"{publisher.prefix}:gen:{running.generation_id}",
        f"{publisher.prefix}:gen:{ended.generation_id}",
    )

    # as after a Redis restart: the pub/sub connection drops and comes back
    [old] = [
        int(c["id"])
        for c in await redis_admin.client_list()
        if c.get("name") == publisher.subscriber_client_name
    ]
    await redis_admin.client_kill_filter(_id=str(old))

    await eventually_async(
        lambda: publisher.tail(running.generation_id),
        lambda tail: tail is not None and tail.text == "so far" and tail.started == running,
    )
    # an ended reply is not this process's to restore: its row in the database is final
    assert await publisher.tail(ended.generation_id) is None
