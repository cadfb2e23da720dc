"""Event builders and small async helpers shared by the bus tests."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from sanic_chat.bus.redis import RedisBus
from sanic_chat.core.events import (
    GenerationCancelled,
    GenerationCompleted,
    GenerationDelta,
    GenerationFailed,
    GenerationStarted,
    MessageAccepted,
    ServerEvent,
    TerminalEvent,
)
from sanic_chat.core.records import ErrorInfo, Message, Status, Usage, utcnow
from tests.bus.conftest import MakeBus


async def redis_bus(make: MakeBus, **options: object) -> RedisBus:
    """A started Redis bus from ``make_redis_bus`` (typed as such: its options are the
    Redis bus's own)."""
    bus = await make(**options)
    assert isinstance(bus, RedisBus)
    return bus


def new_id() -> str:
    return str(uuid.uuid4())


def user_message(conversation_id: str, content: str = "hello") -> Message:
    return Message(
        id=new_id(),
        conversation_id=conversation_id,
        role="user",
        content=content,
        status="complete",
        model=None,
        created_at=utcnow(),
        completed_at=utcnow(),
        client_id=new_id(),
    )


def accepted(conversation_id: str) -> MessageAccepted:
    message = user_message(conversation_id)
    assert message.client_id is not None
    return MessageAccepted(message.client_id, conversation_id, message, new_id())


def started(conversation_id: str, generation_id: str | None = None) -> GenerationStarted:
    generation_id = generation_id or new_id()
    return GenerationStarted(generation_id, conversation_id, generation_id, new_id(), "demo")


def deltas(generation_id: str, pieces: Sequence[str], start: int = 0) -> list[GenerationDelta]:
    out = []
    offset = start
    for piece in pieces:
        out.append(GenerationDelta(generation_id, offset, piece))
        offset += len(piece)
    return out


def reply(start: GenerationStarted, content: str, status: Status) -> Message:
    return Message(
        id=start.generation_id,
        conversation_id=start.conversation_id,
        role="assistant",
        content=content,
        status=status,
        model=start.model,
        created_at=utcnow(),
        completed_at=utcnow(),
        reply_to=start.reply_to,
        usage=Usage(3, 7) if status == "complete" else None,
        finish_reason="stop" if status == "complete" else None,
        error=ErrorInfo("provider_error", "upstream broke") if status == "failed" else None,
    )


def completed(start: GenerationStarted, content: str) -> GenerationCompleted:
    return GenerationCompleted(
        start.generation_id, reply(start, content, "complete"), Usage(3, 7), "stop"
    )


def cancelled(start: GenerationStarted, content: str) -> GenerationCancelled:
    return GenerationCancelled(start.generation_id, reply(start, content, "cancelled"))


def failed(start: GenerationStarted, content: str) -> GenerationFailed:
    return GenerationFailed(
        start.generation_id,
        reply(start, content, "failed"),
        ErrorInfo("provider_error", "upstream broke"),
    )


TERMINALS: dict[str, Callable[[GenerationStarted, str], TerminalEvent]] = {
    "completed": completed,
    "cancelled": cancelled,
    "failed": failed,
}

#: pieces with code points outside the BMP and combining marks: offsets count code points
PIECES = ["Hello", ", ", "wörld", " 🌍", "—", " 日本語", " e\u0301", "🧑‍💻", " ok"]


def text_pieces(count: int) -> list[str]:
    return [PIECES[i % len(PIECES)] + str(i) for i in range(count)]


async def eventually(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    """Wait until ``predicate()`` holds (the Redis bus delivers asynchronously)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(0.005)


T = TypeVar("T")


async def eventually_async(
    fetch: Callable[[], Awaitable[T]], check: Callable[[T], bool], timeout: float = 5.0
) -> None:
    """Wait until ``check(await fetch())`` holds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check(await fetch()):
        if loop.time() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(0.01)


def has_terminal(events: Sequence[ServerEvent], generation_id: str) -> bool:
    return any(
        isinstance(e, GenerationCompleted | GenerationCancelled | GenerationFailed)
        and e.generation_id == generation_id
        for e in events
    )


def merge_by_offset(text: str, live: Sequence[ServerEvent]) -> str:
    """What a follower does: continue ``text`` (from a tail) with live deltas, dropping
    what it already has; a delta that starts beyond what it has is a gap."""
    for event in live:
        if isinstance(event, GenerationDelta):
            if event.offset > len(text):
                raise AssertionError(f"gap: have {len(text)} code points, delta at {event.offset}")
            if event.end_offset > len(text):
                text += event.text[len(text) - event.offset :]
    return text
