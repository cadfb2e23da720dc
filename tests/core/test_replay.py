"""Resume as a pure plan (core.replay) and the offset primitives (core.offsets):
no asyncio, no store, no bus -- a stored message or a tail in, events out."""

from __future__ import annotations

from dataclasses import replace

import pytest

from sanic_chat.core.errors import ValidationFailed
from sanic_chat.core.events import (
    GenerationCompleted,
    GenerationDelta,
    GenerationFailed,
    GenerationStarted,
)
from sanic_chat.core.offsets import started_event, text_beyond
from sanic_chat.core.outbox import Outbox
from sanic_chat.core.ports import Tail
from sanic_chat.core.records import Message, Usage, utcnow
from sanic_chat.core.replay import plan_final, plan_running

TEXT = "Hello, world"  # 12 code points


def reply(content: str = TEXT, status: str = "complete") -> Message:
    return Message(
        id="g1",
        conversation_id="c1",
        role="assistant",
        content=content,
        status=status,  # type: ignore[arg-type]
        model="m",
        created_at=utcnow(),
        reply_to="u1",
        usage=Usage(3, 4) if status == "complete" else None,
        finish_reason="stop" if status == "complete" else None,
    )


STARTED = GenerationStarted("g1", "c1", "g1", "u1", "m")


def test_a_finished_reply_from_offset_0_is_started_all_its_text_and_its_end() -> None:
    plan = plan_final(reply(), 0, restart=True)
    assert plan.events[0] == STARTED
    assert plan.events[1] == GenerationDelta("g1", 0, TEXT)
    assert isinstance(plan.events[2], GenerationCompleted)
    assert plan.events[2].message.content == TEXT
    assert len(plan.events) == 3
    assert plan.ended and (plan.offset, plan.restart) == (0, True)


def test_a_finished_reply_from_mid_text_sends_only_the_rest() -> None:
    plan = plan_final(reply(), 7, restart=True)
    assert [type(e) for e in plan.events] == [
        GenerationStarted,
        GenerationDelta,
        GenerationCompleted,
    ]
    assert plan.events[1] == GenerationDelta("g1", 7, "world")


def test_a_finished_reply_from_its_end_sends_no_text() -> None:
    plan = plan_final(reply(), len(TEXT), restart=False)
    assert [type(e) for e in plan.events] == [GenerationStarted, GenerationCompleted]
    assert plan.restart is False


def test_an_offset_beyond_a_finished_reply_is_refused() -> None:
    with pytest.raises(ValidationFailed) as refused:
        plan_final(reply(), len(TEXT) + 1, restart=True)
    assert refused.value.ref == "g1"
    assert "past the 12 code points" in refused.value.message


def test_an_interrupted_reply_takes_an_offset_beyond_what_was_kept() -> None:
    # it may have streamed more than its last checkpoint: the client gets the end
    plan = plan_final(reply("Hello", status="interrupted"), 9, restart=True)
    assert [type(e) for e in plan.events] == [GenerationStarted, GenerationFailed]
    assert plan.events[1].message.content == "Hello"


def test_a_running_reply_replays_its_tail_and_waits_for_the_rest() -> None:
    tail = Tail(STARTED, "Hello, wo", None, "c1")
    plan = plan_running(reply("Hello", status="streaming"), tail, 5, restart=True)
    assert plan.events == (STARTED, GenerationDelta("g1", 5, ", wo"))
    assert not plan.ended


def test_a_running_reply_is_refused_an_offset_past_its_tail() -> None:
    tail = Tail(STARTED, "Hello", None, "c1")
    with pytest.raises(ValidationFailed):
        plan_running(reply("Hel", status="streaming"), tail, 6, restart=True)


def test_a_tail_that_already_ended_carries_its_terminal_event() -> None:
    end = GenerationCompleted("g1", reply(), Usage(3, 4), "stop")
    plan = plan_running(
        reply("", status="streaming"), Tail(STARTED, TEXT, end, "c1"), 0, restart=True
    )
    assert plan.events == (STARTED, GenerationDelta("g1", 0, TEXT), end)
    assert plan.ended


def test_a_running_reply_without_a_tail_starts_from_its_checkpoint_leniently() -> None:
    # not yet published, or its process died: the client may hold more than the checkpoint
    streaming = reply("Hello", status="streaming")
    assert plan_running(streaming, None, 2, restart=True).events == (
        STARTED,
        GenerationDelta("g1", 2, "llo"),
    )
    assert plan_running(streaming, None, 9, restart=True).events == (STARTED,)


def test_a_plan_queued_for_a_resume_is_delivered_again_from_its_offset() -> None:
    outbox = Outbox(max_pending_chars=1000, max_pending_frames=100)
    plan_final(reply(), 0, restart=False).queue_into(outbox)
    first = [outbox.get_nowait() for _ in range(3)]
    assert [type(e) for e in first] == [GenerationStarted, GenerationDelta, GenerationCompleted]
    # the server catching up again (restart=False) sends nothing twice ...
    plan_final(reply(), 0, restart=False).queue_into(outbox)
    assert outbox.pending == 0
    # ... a client's resume (restart=True) gets the reply again from its offset
    plan_final(reply(), 7, restart=True).queue_into(outbox)
    again = [outbox.get_nowait() for _ in range(3)]
    assert again[1] == GenerationDelta("g1", 7, "world")


def test_started_event_is_the_start_of_the_stored_reply() -> None:
    assert started_event(reply()) == STARTED
    assert started_event(replace(reply(), reply_to=None)).reply_to is None


@pytest.mark.parametrize(
    ("held", "offset", "text", "new"),
    [
        (0, 0, "abc", "abc"),  # next in line
        (3, 3, "de", "de"),
        (3, 0, "abc", ""),  # a repeat
        (3, 1, "bc", ""),  # wholly overlapped
        (3, 2, "cde", "de"),  # overlapping: only what is new
        (3, 3, "", ""),  # empty
        (3, 4, "e", None),  # a gap
    ],
)
def test_text_beyond_joins_by_offset(held: int, offset: int, text: str, new: str | None) -> None:
    assert text_beyond(held, offset, text) == new
