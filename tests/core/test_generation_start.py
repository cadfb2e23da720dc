"""A reply's upstream request goes out in the turn after its post, and its
events keep their order however the start and the first text race."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from sanic_chat.bus.memory import MemoryBus
from sanic_chat.core.events import (
    GenerationCompleted,
    GenerationDelta,
    GenerationStarted,
    MessageCreate,
    ServerEvent,
)
from sanic_chat.store.memory import MemoryMessageStore

from .fakes import ScriptedProvider
from .support import running_service


class SlowStartBus(MemoryBus):
    """Publishing a reply's start takes a while (a remote bus's round trip)."""

    async def publish(self, conversation_id: str, event: ServerEvent) -> None:
        if isinstance(event, GenerationStarted):
            await asyncio.sleep(0.05)
        await super().publish(conversation_id, event)


async def test_the_provider_is_asked_in_the_turn_after_the_post() -> None:
    provider = ScriptedProvider()
    async with running_service(MemoryMessageStore(), MemoryBus(), provider) as service:
        await service.post("alice", MessageCreate(str(uuid.uuid4()), "hi"))
        turns = 0
        while not provider.requests:
            await asyncio.sleep(0)
            turns += 1
        # one turn: the reader task was created by the post itself (before,
        # the reply's task started first and created it a turn later)
        assert turns == 1
        provider.end()


@pytest.mark.parametrize("first_text_ready", [True, False])
async def test_the_start_goes_out_once_and_before_any_text(first_text_ready: bool) -> None:
    provider = ScriptedProvider()
    bus = SlowStartBus()
    seen: list[ServerEvent] = []
    async with running_service(MemoryMessageStore(), bus, provider) as service:
        if first_text_ready:  # the upstream answers before the start is published
            provider.feed("Hel", "lo")
        posted, _ = await service.post("alice", MessageCreate(str(uuid.uuid4()), "hi"))
        await bus.subscribe(posted.conversation.id, seen.append)
        if not first_text_ready:
            provider.feed("Hel", "lo")
        provider.end()
        assert posted.reply is not None
        generation = service.running[posted.reply.id]
        await asyncio.wait_for(generation.done.wait(), 5.0)
    kinds = [type(e).__name__ for e in seen]
    assert kinds.count("GenerationStarted") == 1, kinds
    assert isinstance(seen[0], GenerationStarted), kinds
    assert isinstance(seen[-1], GenerationCompleted), kinds
    text = ""
    for event in seen:
        if isinstance(event, GenerationDelta):
            assert event.offset == len(text)
            text += event.text
    assert text == "Hello"
