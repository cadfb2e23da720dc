"""The Redis bus hands a process's own events to its own listeners from ``publish``, once
Redis ran them, and drops them when Redis pushes them back on the pub/sub connection: a
local listener hears each event once, in publish order, without that second leg; the
other processes hear everything as before. (The rule: the "Local delivery" invariant in
``sanic_chat/bus/redis.py``.)"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from urllib.parse import urlsplit, urlunsplit

import pytest

from sanic_chat.bus.redis import RedisBus
from sanic_chat.core.errors import Unavailable
from sanic_chat.core.events import GenerationStarted, ServerEvent
from tests.bus._support import (
    accepted,
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
from tests.conftest import require_redis


class RedisProxy:
    """A TCP proxy to Redis on loopback, in the test's own event loop. It can hold back
    what Redis sends to the pub/sub connections (``freeze_subscribers``: the bytes wait
    in the proxy until ``thaw``), and cut every connection and refuse new ones (``cut``
    until ``restore``)."""

    def __init__(self, upstream: str) -> None:
        parts = urlsplit(upstream)
        self._upstream = upstream
        self._host, self._port = parts.hostname or "127.0.0.1", parts.port or 6379
        self._server: asyncio.Server | None = None
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._refusing = False
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)

    @property
    def url(self) -> str:
        assert self._server is not None
        port = self._server.sockets[0].getsockname()[1]
        parts = urlsplit(self._upstream)
        netloc = parts.netloc.rsplit("@", 1)
        host = f"127.0.0.1:{port}"
        return urlunsplit(
            parts._replace(netloc=f"{netloc[0]}@{host}" if len(netloc) == 2 else host)
        )

    def freeze_subscribers(self) -> None:
        self._flowing.clear()

    def thaw(self) -> None:
        self._flowing.set()

    def cut(self) -> None:
        self._refusing = True
        for writer in list(self._writers):
            writer.close()

    def restore(self) -> None:
        self._refusing = False

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        self.cut()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(BaseException):
                await task

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._refusing:
            writer.close()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(self._host, self._port)
        except OSError:
            writer.close()
            return
        self._writers |= {writer, up_writer}
        # what the client sent so far: its CLIENT SETNAME tells a pub/sub connection
        sent = bytearray()
        up = asyncio.create_task(self._pipe(reader, up_writer, sent=sent))
        down = asyncio.create_task(self._pipe(up_reader, writer, seen=sent))
        self._tasks |= {up, down}
        try:
            await asyncio.wait({up, down}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (up, down):
                task.cancel()
                self._tasks.discard(task)
            for each in (writer, up_writer):
                self._writers.discard(each)
                each.close()

    async def _pipe(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        sent: bytearray | None = None,
        seen: bytearray | None = None,
    ) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while data := await reader.read(65536):
                if sent is not None and len(sent) < 4096:
                    sent += data
                if seen is not None and b":sub\r\n" in seen:
                    await self._flowing.wait()
                writer.write(data)
                await writer.drain()


@pytest.fixture
async def proxy() -> AsyncIterator[RedisProxy]:
    proxy = RedisProxy(require_redis())
    await proxy.start()
    yield proxy
    await proxy.close()


@pytest.fixture
async def behind_proxy(proxy: RedisProxy, prefix: str) -> AsyncIterator[RedisBus]:
    """A node (``a``) that reaches Redis through ``proxy``; its pub/sub connection is not
    health-checked within a test's time, so a frozen one is not replaced."""
    bus = RedisBus(proxy.url, prefix=prefix, node_id="a", health_check_s=60, connect_timeout_s=1)
    await bus.start()
    yield bus
    await bus.close()


def _reply(conversation: str, count: int) -> tuple[GenerationStarted, list[ServerEvent]]:
    start = started(conversation)
    pieces = text_pieces(count)
    return start, [
        accepted(conversation),
        start,
        *deltas(start.generation_id, pieces),
        completed(start, "".join(pieces)),
    ]


async def test_own_listeners_hear_an_event_when_its_publish_returns_not_through_pubsub(
    behind_proxy: RedisBus, proxy: RedisProxy, make_redis_bus: MakeBus
) -> None:
    """With its pub/sub connection frozen, node a's own listeners still hear every event
    it publishes, in order, before ``publish`` returns; node b hears them through Redis.
    When the echoes arrive they are dropped: each listener hears each event once."""
    node_a = behind_proxy
    node_b = await redis_bus(make_redis_bus, node_id="b")
    conversation = new_id()
    _, events = _reply(conversation, 50)
    heard_a: list[ServerEvent] = []
    heard_a2: list[ServerEvent] = []
    heard_b: list[ServerEvent] = []
    await node_a.subscribe(conversation, heard_a.append)
    await node_a.subscribe(conversation, heard_a2.append)
    await node_b.subscribe(conversation, heard_b.append)

    proxy.freeze_subscribers()
    for number, event in enumerate(events):
        await node_a.publish(conversation, event)
        assert heard_a == events[: number + 1]  # heard when its publish returned
    assert heard_a2 == events
    await eventually(lambda: len(heard_b) >= len(events))
    assert heard_b == events  # the other process: everything, once, in order
    assert node_a.echoes_skipped == 0  # nothing came back yet: the reader is frozen

    proxy.thaw()
    # a's pub/sub connection delivers in order: once it has b's marker, it has had every
    # echo before it
    marker = accepted(conversation)
    await node_b.publish(conversation, marker)
    await eventually(lambda: marker in heard_a)
    assert heard_a == heard_a2 == [*events, marker]  # no echo heard twice
    assert node_a.echoes_skipped == len(events)
    assert heard_b == [*events, marker]  # b heard its own marker once too
    await eventually(lambda: node_b.echoes_skipped == 1)
    assert heard_b == [*events, marker]


async def test_two_processes_publishing_to_one_conversation_are_each_heard_once_in_order(
    make_redis_bus: MakeBus,
) -> None:
    """Two nodes stream into one conversation at once: every listener, on either node,
    hears every event exactly once, each publisher's events in its publish order."""
    node_a = await redis_bus(make_redis_bus, node_id="a")
    node_b = await redis_bus(make_redis_bus, node_id="b")
    conversation = new_id()
    (start_a, from_a), (start_b, from_b) = _reply(conversation, 200), _reply(conversation, 200)
    heard: dict[str, list[ServerEvent]] = {"a": [], "b": []}
    await node_a.subscribe(conversation, heard["a"].append)
    await node_b.subscribe(conversation, heard["b"].append)

    async def stream(node: RedisBus, events: list[ServerEvent]) -> None:
        for number, event in enumerate(events):
            await node.publish(conversation, event)
            if number % 7 == 0:
                await asyncio.sleep(0)

    await asyncio.gather(stream(node_a, from_a), stream(node_b, from_b))

    total = len(from_a) + len(from_b)
    await eventually(lambda: len(heard["a"]) >= total and len(heard["b"]) >= total)
    await asyncio.sleep(0.1)  # a duplicate would arrive about now
    for sink in heard.values():
        assert len(sink) == total
        assert [e for e in sink if e in from_a] == from_a
        assert [e for e in sink if e in from_b] == from_b
    assert node_a.echoes_skipped == len(from_a) and node_b.echoes_skipped == len(from_b)
    for start, events in ((start_a, from_a), (start_b, from_b)):
        tail = await node_b.tail(start.generation_id)
        assert tail is not None and tail.terminal == events[-1]


async def test_an_event_whose_publish_failed_is_heard_by_nobody_here_included(
    behind_proxy: RedisBus, proxy: RedisProxy, make_redis_bus: MakeBus
) -> None:
    """A local listener never holds what no tail has: a delta whose publish failed is not
    heard here either; the generation's catch-up (the same offset, published once Redis
    answers) is heard by everyone and is in the tail."""
    node_a = behind_proxy
    node_b = await redis_bus(make_redis_bus, node_id="b")
    conversation = new_id()
    start = started(conversation)
    first, second = deltas(start.generation_id, ["lost ", "then found"])
    heard_a: list[ServerEvent] = []
    heard_b: list[ServerEvent] = []
    await node_a.subscribe(conversation, heard_a.append)
    await node_b.subscribe(conversation, heard_b.append)
    await node_a.publish(conversation, start)

    proxy.cut()
    with pytest.raises(Unavailable):
        await node_a.publish(conversation, first)
    assert heard_a == [start]
    tail = await node_b.tail(start.generation_id)
    assert tail is not None and tail.text == ""  # ... as no tail has it

    proxy.restore()
    await eventually_async(lambda: _answers(node_a), lambda up: up, timeout=15)
    catch_up = deltas(start.generation_id, ["lost then found"])[0]
    await node_a.publish(conversation, catch_up)
    assert heard_a == [start, catch_up]
    await eventually(lambda: len(heard_b) == 2)
    assert heard_b == [start, catch_up]
    tail = await node_b.tail(start.generation_id)
    assert tail is not None and tail.text == first.text + second.text


async def _answers(bus: RedisBus) -> bool:
    """Redis answers the bus, and its pub/sub connection is subscribed again."""
    try:
        await bus.ping()
    except Unavailable:
        return False
    return True
