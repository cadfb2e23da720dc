"""The per-connection outbox, with no socket: exactly-once by offset, merging,
explicit resumes going back, and the bound on falling behind."""

from __future__ import annotations

import asyncio

import pytest

from sanic_chat.core.events import (
    GenerationCompleted,
    GenerationDelta,
    GenerationStarted,
    MessageAccepted,
    Pong,
    ServerEvent,
)
from sanic_chat.core.outbox import REMEMBERED_REPLIES, Outbox, SlowConsumer
from sanic_chat.core.records import Message, Usage, utcnow

GID = "7b1c8c62-8a3e-4f38-9d4c-1d0f6a1b2c3d"
STARTED = GenerationStarted(GID, "c", GID, None, "demo")


def drain(outbox: Outbox) -> list[ServerEvent]:
    events = []
    while (event := outbox.get_nowait()) is not None:
        events.append(event)
    return events


def test_waiting_deltas_merge_into_one_frame_and_overlaps_are_dropped() -> None:
    outbox = Outbox()
    outbox.push(STARTED)
    outbox.push(GenerationDelta(GID, 0, "ab"))
    outbox.push(GenerationDelta(GID, 2, "cd"))
    outbox.push(GenerationDelta(GID, 1, "bcdef"))  # the same text again, and more
    outbox.push(STARTED)
    assert drain(outbox) == [STARTED, GenerationDelta(GID, 0, "abcdef")]
    assert outbox.frames_merged == 2


def test_expect_never_sends_text_twice_but_rewind_sends_it_again_from_the_offset() -> None:
    outbox = Outbox()
    outbox.push(STARTED)
    outbox.push(GenerationDelta(GID, 0, "hello "))
    assert len(drain(outbox)) == 2
    outbox.expect(GID, 0)  # the server catching up on its own: nothing twice
    outbox.push(STARTED)
    outbox.push(GenerationDelta(GID, 0, "hello world"))
    assert drain(outbox) == [GenerationDelta(GID, 6, "world")]
    outbox.push(GenerationDelta(GID, 11, "!"))  # queued, not yet sent
    outbox.rewind(GID, 2)  # the client asked: it has exactly 2
    outbox.push(STARTED)
    outbox.push_replay(GenerationDelta(GID, 2, "llo world!"))
    assert drain(outbox) == [STARTED, GenerationDelta(GID, 2, "llo world!")]


def test_a_consumer_falling_too_far_behind_overflows_but_a_long_replay_does_not() -> None:
    outbox = Outbox(max_pending_chars=10)
    outbox.push_replay(GenerationDelta(GID, 0, "x" * 100))  # a resume of a long reply
    outbox.push(GenerationDelta(GID, 100, "y" * 10))  # live text merged behind it
    assert not outbox.overflowed
    assert drain(outbox) == [GenerationDelta(GID, 0, "x" * 100 + "y" * 10)]
    outbox.push(GenerationDelta(GID, 110, "z" * 11))  # the replay is gone: counted now
    assert outbox.overflowed
    with pytest.raises(SlowConsumer):
        outbox.get_nowait()
    outbox.push(Pong())  # an overflowed outbox takes nothing more
    with pytest.raises(SlowConsumer):
        outbox.get_nowait()


def test_the_frame_bound_counts_frames_that_cannot_merge() -> None:
    outbox = Outbox(max_pending_frames=3)
    for _ in range(3):
        outbox.push(Pong())
    assert not outbox.overflowed
    outbox.push(Pong())
    assert outbox.overflowed


async def test_a_busy_writer_lets_flowing_text_gather_but_never_holds_back_the_first() -> None:
    outbox = Outbox()
    outbox.push(GenerationStarted("g", "c", "g", None, "demo"))
    outbox.push(GenerationDelta("g", 0, "first"))
    loop = asyncio.get_running_loop()
    started = loop.time()
    batch = await outbox.get_batch(linger_s=5.0)
    assert loop.time() - started < 1.0  # start and first text went at once
    assert [type(e) for e in batch or []] == [GenerationStarted, GenerationDelta]

    async def more_text() -> None:
        for i, piece in enumerate(("a", "b", "c")):
            await asyncio.sleep(0.01)
            outbox.push(GenerationDelta("g", 5 + i, piece))

    feeder = asyncio.create_task(more_text())
    batch = await outbox.get_batch(linger_s=0.2)
    await feeder
    assert batch == [GenerationDelta("g", 5, "abc")]  # one frame for three pieces


async def test_the_end_of_a_reply_cuts_the_linger_short() -> None:
    outbox = Outbox()
    outbox.push(GenerationDelta("g", 0, "x"))
    await outbox.get_batch(linger_s=5.0)
    outbox.push(GenerationDelta("g", 1, "y"))
    message = Message("g", "c", "assistant", "xy", "complete", "demo", utcnow(), utcnow())
    loop = asyncio.get_running_loop()
    loop.call_later(0.05, outbox.push, GenerationCompleted("g", message, Usage(1, 2), "stop"))
    started = loop.time()
    batch = await outbox.get_batch(linger_s=5.0)
    assert loop.time() - started < 1.0
    assert [type(e) for e in batch or []] == [GenerationDelta, GenerationCompleted]


async def test_an_idle_batch_times_out_empty_for_a_heartbeat_and_ends_on_close() -> None:
    outbox = Outbox()
    assert await outbox.get_batch(timeout_s=0.05) == []
    outbox.close()
    assert await outbox.get_batch(timeout_s=0.05) is None


def _one_reply(outbox: Outbox, n: int) -> tuple[GenerationStarted, GenerationCompleted]:
    gid = f"g-{n}"
    user = Message(f"u-{n}", "c", "user", "hi", "complete", "demo", utcnow(), utcnow())
    reply = Message(gid, "c", "assistant", "hello", "complete", "demo", utcnow(), utcnow())
    started = GenerationStarted(gid, "c", gid, user.id, "demo")
    ended = GenerationCompleted(gid, reply, Usage(1, 2), "stop")
    outbox.push_answer(MessageAccepted(f"client-{n}", "c", user, gid))
    outbox.push(MessageAccepted(f"client-{n}", "c", user, gid))  # the bus's echo
    outbox.push(started)
    outbox.push(GenerationDelta(gid, 0, "hel"))
    outbox.push(GenerationDelta(gid, 3, "lo"))
    outbox.push(ended)
    return started, ended


def test_a_long_lived_connection_remembers_a_bounded_number_of_replies() -> None:
    """A tab open for days: what deduplication keeps stays bounded (each reply
    used to add five entries forever)."""
    outbox = Outbox()
    for n in range(5 * REMEMBERED_REPLIES):
        _one_reply(outbox, n)
        events = drain(outbox)
        assert [type(e).__name__ for e in events] == [
            "MessageAccepted",
            "GenerationStarted",
            "GenerationDelta",
            "GenerationCompleted",
        ]
    remembered = [
        outbox._started,
        outbox._finished,
        outbox._accepted,
        outbox._delivered_upto,
        outbox._flowing,
    ]
    assert all(len(entries) <= REMEMBERED_REPLIES for entries in remembered), [
        len(entries) for entries in remembered
    ]


def test_recent_replies_are_still_deduplicated_after_old_ones_are_forgotten() -> None:
    outbox = Outbox()
    for n in range(2 * REMEMBERED_REPLIES):
        started, ended = _one_reply(outbox, n)
        drain(outbox)
    # the latest reply, delivered again by a bus or a racing resume: nothing new
    outbox.push(started)
    outbox.push(GenerationDelta(started.generation_id, 0, "hello"))
    outbox.push(ended)
    assert drain(outbox) == []
    # one ended long ago was forgotten: an explicit resume of it is served whole
    old = "g-0"
    outbox.push(GenerationDelta(old, 0, "hello"))
    assert drain(outbox) == [GenerationDelta(old, 0, "hello")]


def test_a_reply_that_never_ends_here_is_forgotten_eventually() -> None:
    outbox = Outbox()
    outbox.push(GenerationStarted("left-behind", "c", "left-behind", None, "demo"))
    outbox.push(GenerationDelta("left-behind", 0, "partial"))
    drain(outbox)
    for n in range(5 * REMEMBERED_REPLIES):
        outbox.push(GenerationStarted(f"s-{n}", "c", f"s-{n}", None, "demo"))
    drain(outbox)
    assert "left-behind" not in outbox._started
    assert outbox.delivered_upto("left-behind") is None
