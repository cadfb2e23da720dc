"""``conversation.subscribe`` with ``generation_id`` + ``offset`` on a fresh
connection, raced against live deltas: the connection's writer drains the
outbox concurrently (as the WebSocket transport does) while the resume's
reads are held open and the reply goes on publishing.

The contract (docs/protocol.md, Order and delivery 3 and 5): the reply's
``generation.started`` first, then deltas contiguous from the requested
offset, then one terminal event; never the same text twice; and the
conversation's later events after the reply they follow.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest

from sanic_chat.core.events import (
    GENERATION_TYPES,
    TERMINAL_TYPES,
    GenerationDelta,
    GenerationStarted,
    MessageAccepted,
    ServerEvent,
)
from sanic_chat.core.service import ChatService
from sanic_chat.core.session import ChatSession

from .fakes import PausingBus, PausingStore, ScriptedProvider
from .support import connect_and_post, running_service, subscribe


@pytest.fixture
async def world() -> AsyncIterator[tuple[ChatService, ScriptedProvider, PausingStore, PausingBus]]:
    provider, store, bus = ScriptedProvider(), PausingStore(), PausingBus(tail_ttl_s=60.0)
    async with running_service(store, bus, provider) as service:
        yield service, provider, store, bus


class Wire:
    """What one connection's writer sent, in order: drains the session's
    outbox concurrently with the frames the session handles."""

    def __init__(self, session: ChatSession) -> None:
        self.frames: list[ServerEvent] = []
        self._ended: dict[str, asyncio.Event] = {}
        self._task = asyncio.create_task(self._pump(session))

    async def _pump(self, session: ChatSession) -> None:
        while (batch := await session.outbox.get_batch()) is not None:
            self.frames.extend(batch)
            for event in batch:
                if isinstance(event, TERMINAL_TYPES):
                    self._ended_event(event.generation_id).set()

    def _ended_event(self, generation_id: str) -> asyncio.Event:
        return self._ended.setdefault(generation_id, asyncio.Event())

    async def until_terminal(self, generation_id: str, timeout: float = 2.0) -> None:
        await asyncio.wait_for(self._ended_event(generation_id).wait(), timeout)

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


class Reader:
    """The text of one reply as another connection sees it, checked event by event."""

    def __init__(self, session: ChatSession, generation_id: str) -> None:
        self.session = session
        self.generation_id = generation_id
        self.text = ""

    async def until_length(self, length: int) -> None:
        while len(self.text) < length:
            event = await asyncio.wait_for(self.session.outbox.get(), 2.0)
            if isinstance(event, GenerationDelta) and event.generation_id == self.generation_id:
                assert event.offset == len(self.text)
                self.text += event.text


def reply_on_wire(frames: list[ServerEvent], generation_id: str, offset: int) -> str:
    """Assert the contract for one reply on one connection and return the
    text it received from ``offset``: started first and once, deltas
    contiguous from ``offset`` with no code point twice, one terminal event
    and nothing of the reply after it."""
    events = [
        f for f in frames if isinstance(f, GENERATION_TYPES) and f.generation_id == generation_id
    ]
    kinds = [f.type for f in events]
    assert events and isinstance(events[0], GenerationStarted), kinds
    assert sum(isinstance(f, GenerationStarted) for f in events) == 1, kinds
    assert isinstance(events[-1], TERMINAL_TYPES), kinds
    assert sum(isinstance(f, TERMINAL_TYPES) for f in events) == 1, kinds
    end = offset
    text = ""
    for event in events:
        if isinstance(event, GenerationDelta):
            assert event.offset == end, f"delta at {event.offset}, expected {end}: {kinds}"
            end = event.end_offset
            text += event.text
    return text


async def started_reply(
    service: ChatService, provider: ScriptedProvider, text: str
) -> tuple[ChatSession, Reader, MessageAccepted]:
    """A reply running in a new conversation, ``text`` of it already published."""
    writer, accepted = await connect_and_post(service, "alice", "question")
    assert isinstance(accepted, MessageAccepted) and accepted.generation_id is not None
    seen = Reader(writer, accepted.generation_id)
    provider.feed(text)
    await seen.until_length(len(text))
    return writer, seen, accepted


async def let_the_writer_run() -> None:
    """Loop turns enough for a connection's writer to take what is queued."""
    for _ in range(5):
        await asyncio.sleep(0)


@pytest.mark.parametrize("slow_read", ["database", "live tail"])
async def test_subscribe_with_an_offset_sends_started_then_the_rest_once_however_live_text_races(
    world: tuple[ChatService, ScriptedProvider, PausingStore, PausingBus], slow_read: str
) -> None:
    service, provider, store, bus = world
    writer, seen, accepted = await started_reply(service, provider, "0123456789")
    generation_id = accepted.generation_id
    assert generation_id is not None

    fresh = ChatSession(service, "alice")
    wire = Wire(fresh)
    pause = store.pause if slow_read == "database" else bus.pause
    pause.arm(generation_id)
    subscribing = asyncio.create_task(
        fresh.receive(subscribe(accepted.conversation_id, generation_id=generation_id, offset=4))
    )
    await asyncio.wait_for(pause.entered.wait(), 2.0)
    # while the resume reads, the reply goes on: live text is published (and
    # a writer that found it queued would send it at once)
    provider.feed("KLMNOPQ")
    await seen.until_length(17)
    provider.feed("rst")
    await seen.until_length(20)
    await let_the_writer_run()
    pause.release()
    await asyncio.wait_for(subscribing, 2.0)
    provider.feed("uvw")
    provider.end()
    await wire.until_terminal(generation_id)
    await wire.close()

    row = await store.get_message("alice", generation_id)
    assert row is not None and row.status == "complete"
    assert row.content == "0123456789KLMNOPQrstuvw"
    assert reply_on_wire(wire.frames, generation_id, 4) == row.content[4:]
    await writer.close()
    await fresh.close()


async def test_subscribe_with_an_offset_catches_up_in_publish_order_while_others_post(
    world: tuple[ChatService, ScriptedProvider, PausingStore, PausingBus],
) -> None:
    service, provider, store, _ = world
    writer, _, accepted = await started_reply(service, provider, "first reply")
    first = accepted.generation_id
    assert first is not None
    provider.end()
    await asyncio.wait_for(service.running[first].done.wait(), 2.0)
    row = await store.get_message("alice", first)
    assert row is not None and row.is_final

    fresh = ChatSession(service, "alice")
    wire = Wire(fresh)
    store.pause.arm(first)
    subscribing = asyncio.create_task(
        fresh.receive(subscribe(accepted.conversation_id, generation_id=first, offset=6))
    )
    await asyncio.wait_for(store.pause.entered.wait(), 2.0)
    # another tab posts the next message while this connection resumes the first reply
    other_tab, next_accepted = await connect_and_post(
        service, "alice", "and then?", conversation_id=accepted.conversation_id
    )
    assert isinstance(next_accepted, MessageAccepted) and next_accepted.generation_id is not None
    second = next_accepted.generation_id
    provider.feed("second ")
    await Reader(other_tab, second).until_length(7)
    await let_the_writer_run()
    store.pause.release()
    await asyncio.wait_for(subscribing, 2.0)
    provider.feed("reply")
    provider.end()
    await wire.until_terminal(second)
    await wire.close()

    assert reply_on_wire(wire.frames, first, 6) == "reply"
    assert reply_on_wire(wire.frames, second, 0) == "second reply"
    order = [
        (type(f).__name__, getattr(f, "generation_id", None))
        for f in wire.frames
        if not isinstance(f, GenerationDelta)
    ]
    assert order == [
        ("GenerationStarted", first),
        ("GenerationCompleted", first),
        ("MessageAccepted", second),
        ("GenerationStarted", second),
        ("GenerationCompleted", second),
    ]
    for session in (writer, fresh, other_tab):
        await session.close()
