"""The Bus contract, proved the same way against every implementation (memory, Redis):
the core cannot tell them apart."""

from __future__ import annotations

import asyncio

import pytest

from sanic_chat.core.events import GenerationDelta, ServerEvent
from sanic_chat.core.ports import Bus
from tests.bus._support import (
    TERMINALS,
    accepted,
    completed,
    deltas,
    eventually,
    failed,
    has_terminal,
    merge_by_offset,
    new_id,
    started,
    text_pieces,
)
from tests.bus.conftest import MakeBus


async def test_every_listener_gets_every_event_of_its_conversation_in_publish_order(
    bus: Bus,
) -> None:
    conversation = new_id()
    start = started(conversation)
    pieces = text_pieces(200)
    events: list[ServerEvent] = [
        accepted(conversation),
        start,
        *deltas(start.generation_id, pieces),
        completed(start, "".join(pieces)),
    ]
    heard: list[list[ServerEvent]] = [[], [], []]
    for sink in heard:
        await bus.subscribe(conversation, sink.append)

    for event in events:
        await bus.publish(conversation, event)

    await eventually(lambda: all(len(sink) >= len(events) for sink in heard))
    for sink in heard:
        assert sink == events  # same events, same order, same values after the wire


async def test_listeners_hear_only_their_own_conversation(bus: Bus) -> None:
    one, two = new_id(), new_id()
    heard_one: list[ServerEvent] = []
    heard_two: list[ServerEvent] = []
    await bus.subscribe(one, heard_one.append)
    await bus.subscribe(two, heard_two.append)
    start_one, start_two = started(one), started(two)
    await bus.publish(one, start_one)
    await bus.publish(two, start_two)
    for d_one, d_two in zip(
        deltas(start_one.generation_id, ["a", "b", "c"]),
        deltas(start_two.generation_id, ["x", "y", "z"]),
        strict=True,
    ):
        await bus.publish(one, d_one)
        await bus.publish(two, d_two)
    await bus.publish(one, completed(start_one, "abc"))
    await bus.publish(two, completed(start_two, "xyz"))
    await bus.publish(new_id(), started(new_id()))  # nobody listens there

    await eventually(
        lambda: (
            has_terminal(heard_one, start_one.generation_id)
            and has_terminal(heard_two, start_two.generation_id)
        )
    )
    assert len(heard_one) == len(heard_two) == 5
    assert {e.generation_id for e in heard_one} == {start_one.generation_id}  # type: ignore[union-attr]
    assert {e.generation_id for e in heard_two} == {start_two.generation_id}  # type: ignore[union-attr]


async def test_a_subscriber_joining_mid_reply_misses_nothing_between_tail_and_live(
    bus: Bus,
) -> None:
    """Subscribe, then read the tail, while the reply is being published: the tail plus the
    live deltas, overlaps dropped by offset, are exactly the published text, with no gap."""
    conversation = new_id()
    start = started(conversation)
    pieces = text_pieces(3000)
    full = "".join(pieces)
    published = 0

    async def publish_reply() -> None:
        nonlocal published
        await bus.publish(conversation, start)
        for number, delta in enumerate(deltas(start.generation_id, pieces)):
            await bus.publish(conversation, delta)
            published += 1
            await asyncio.sleep(0.001 if number % 50 == 0 else 0)
        await bus.publish(conversation, completed(start, full))

    async def join_at(count: int) -> tuple[int, str]:
        await eventually(lambda: published >= count, timeout=30)
        live: list[ServerEvent] = []
        await bus.subscribe(conversation, live.append)
        tail = await bus.tail(start.generation_id)
        assert tail is not None and tail.started == start
        await eventually(lambda: has_terminal(live, start.generation_id), timeout=30)
        return len(tail.text), merge_by_offset(tail.text, live)

    joins = [asyncio.create_task(join_at(count)) for count in range(1, 3000, 300)]
    await publish_reply()
    results = await asyncio.gather(*joins)

    assert [text for _, text in results] == [full] * len(joins)
    # the joins really happened mid-reply: each tail had some text, but not all of it
    assert all(0 < had < len(full) for had, _ in results)


@pytest.mark.parametrize("ending", sorted(TERMINALS))
async def test_a_finished_tail_has_the_whole_text_and_the_terminal_event(
    bus: Bus, ending: str
) -> None:
    conversation = new_id()
    start = started(conversation)
    pieces = text_pieces(50)
    terminal = TERMINALS[ending](start, "".join(pieces))
    await bus.publish(conversation, start)
    for delta in deltas(start.generation_id, pieces):
        await bus.publish(conversation, delta)
    await bus.publish(conversation, terminal)

    tail = await bus.tail(start.generation_id)

    assert tail is not None
    assert tail.started == start
    assert tail.text == "".join(pieces)
    assert tail.terminal == terminal
    assert tail.conversation_id == conversation


async def test_a_running_tail_has_the_text_so_far_and_no_terminal(bus: Bus) -> None:
    conversation = new_id()
    start = started(conversation)
    await bus.publish(conversation, start)
    assert (await bus.tail(start.generation_id)) is not None
    for delta in deltas(start.generation_id, ["So ", "far"]):
        await bus.publish(conversation, delta)

    tail = await bus.tail(start.generation_id)

    assert tail is not None and tail.text == "So far" and tail.terminal is None


async def test_an_unknown_generation_has_no_tail(bus: Bus) -> None:
    assert await bus.tail(new_id()) is None


async def test_the_tail_is_joined_by_offset_so_repeated_deltas_do_not_double_text(
    bus: Bus,
) -> None:
    """A publish retried after a dropped connection may repeat a delta: the tail must
    still be the text from offset 0, not the deltas appended blindly."""
    conversation = new_id()
    start = started(conversation)
    gid = start.generation_id
    await bus.publish(conversation, start)
    for delta in [
        GenerationDelta(gid, 0, "Hello "),
        GenerationDelta(gid, 0, "Hello "),  # repeated
        GenerationDelta(gid, 3, "lo wor"),  # overlaps: only "wor" is new
        GenerationDelta(gid, 9, "ld"),
        GenerationDelta(gid, 9, "l"),  # inside what is there
    ]:
        await bus.publish(conversation, delta)

    tail = await bus.tail(gid)

    assert tail is not None and tail.text == "Hello world"


async def test_a_terminal_without_a_started_event_still_makes_a_tail(bus: Bus) -> None:
    """An orphan marked interrupted by another process: followers must still hear the end."""
    conversation = new_id()
    start = started(conversation)
    ending = failed(start, "partial reply")
    heard: list[ServerEvent] = []
    await bus.subscribe(conversation, heard.append)

    await bus.publish(conversation, ending)

    tail = await bus.tail(start.generation_id)
    assert tail is not None
    assert tail.started.generation_id == start.generation_id
    assert tail.started.conversation_id == conversation
    assert tail.text == "partial reply"
    assert tail.terminal == ending
    await eventually(lambda: heard == [ending])


async def test_a_finished_tail_expires_tail_ttl_after_its_terminal_event(
    make_bus: MakeBus,
) -> None:
    bus = await make_bus(tail_ttl_s=0.3)
    conversation = new_id()
    start = started(conversation)
    await bus.publish(conversation, start)
    await bus.publish(conversation, deltas(start.generation_id, ["still here"])[0])
    await asyncio.sleep(0.5)
    assert await bus.tail(start.generation_id) is not None, "an open tail must not expire"

    await bus.publish(conversation, completed(start, "still here"))
    assert await bus.tail(start.generation_id) is not None, "expired too early"

    async def gone() -> bool:
        return await bus.tail(start.generation_id) is None

    loop = asyncio.get_running_loop()
    ended = loop.time()
    while not await gone():
        assert loop.time() - ended < 3, "the tail did not expire"
        await asyncio.sleep(0.02)
    assert loop.time() - ended >= 0.25


async def test_unsubscribe_stops_delivery_to_that_listener_only(bus: Bus) -> None:
    conversation = new_id()
    first: list[ServerEvent] = []
    second: list[ServerEvent] = []
    unsubscribe_first = await bus.subscribe(conversation, first.append)
    unsubscribe_second = await bus.subscribe(conversation, second.append)
    one, two = started(conversation), started(conversation)

    await unsubscribe_first()
    await unsubscribe_first()  # twice is harmless
    await bus.publish(conversation, one)
    await eventually(lambda: second == [one])
    assert first == []

    await unsubscribe_second()  # the last one: nobody listens any more
    await bus.publish(conversation, two)
    third: list[ServerEvent] = []
    await bus.subscribe(conversation, third.append)  # and listening again works
    await bus.publish(conversation, one)
    await eventually(lambda: third == [one])
    assert second == [one] and first == []


async def test_a_cancel_request_reaches_every_cancel_listener(bus: Bus) -> None:
    asked_a: list[str] = []
    asked_b: list[str] = []
    await bus.on_cancel(asked_a.append)
    await bus.on_cancel(asked_b.append)
    generation_id = new_id()

    await bus.request_cancel(generation_id)

    await eventually(lambda: asked_a == [generation_id] and asked_b == [generation_id])


async def test_a_listener_that_raises_does_not_break_the_others(bus: Bus) -> None:
    conversation = new_id()
    start = started(conversation)
    heard: list[ServerEvent] = []

    def broken(event: ServerEvent) -> None:
        raise RuntimeError("listener bug")

    await bus.subscribe(conversation, broken)
    await bus.subscribe(conversation, heard.append)
    events: list[ServerEvent] = [
        start,
        *deltas(start.generation_id, ["a", "b"]),
        completed(start, "ab"),
    ]
    for event in events:
        await bus.publish(conversation, event)
    await eventually(lambda: heard == events)

    # and the bus keeps delivering afterwards
    later = started(conversation)
    await bus.publish(conversation, later)
    await eventually(lambda: heard == [*events, later])


async def test_a_cancel_listener_that_raises_does_not_break_the_others(bus: Bus) -> None:
    asked: list[str] = []

    def broken(generation_id: str) -> None:
        raise RuntimeError("handler bug")

    await bus.on_cancel(broken)
    await bus.on_cancel(asked.append)
    first, second = new_id(), new_id()

    await bus.request_cancel(first)  # the requester is not hurt by a broken handler
    await bus.request_cancel(second)

    await eventually(lambda: asked == [first, second])


async def test_events_of_other_kinds_are_fanned_out_but_make_no_tail(bus: Bus) -> None:
    conversation = new_id()
    heard: list[ServerEvent] = []
    await bus.subscribe(conversation, heard.append)
    event = accepted(conversation)
    assert event.generation_id is not None

    await bus.publish(conversation, event)

    await eventually(lambda: heard == [event])
    assert await bus.tail(event.generation_id) is None
