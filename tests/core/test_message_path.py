"""The message path (docs/architecture.md, the flow of one message): a
``message.create`` to an existing conversation reads its ownership once (in the
post itself) and pings nothing; a post to someone else's conversation hears
nothing of it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from sanic_chat.bus.memory import MemoryBus
from sanic_chat.core.events import (
    ErrorEvent,
    GenerationCompleted,
    GenerationStarted,
    MessageAccepted,
)
from sanic_chat.core.ports import Posted
from sanic_chat.core.service import ChatService
from sanic_chat.core.session import ChatSession
from sanic_chat.store.memory import MemoryMessageStore

from .fakes import Pause, ScriptedProvider
from .support import connect_and_post, create, next_event, running_service


class CountingStore(MemoryMessageStore):
    """The in-memory store, counting ownership reads; a post of the armed user waits."""

    def __init__(self) -> None:
        super().__init__()
        self.ownership_reads = 0
        self.pause = Pause()

    async def get_conversation(self, owner: str, conversation_id: str):  # type: ignore[no-untyped-def]
        self.ownership_reads += 1
        return await super().get_conversation(owner, conversation_id)

    async def post_user_message(self, owner: str, **kwargs) -> Posted:  # type: ignore[no-untyped-def]
        await self.pause.at(owner)
        return await super().post_user_message(owner, **kwargs)


class CountingBus(MemoryBus):
    def __init__(self) -> None:
        super().__init__()
        self.pings = 0

    async def ping(self) -> None:
        self.pings += 1


@pytest.fixture
async def world() -> AsyncIterator[
    tuple[ChatService, ScriptedProvider, CountingStore, CountingBus]
]:
    provider, store, bus = ScriptedProvider(), CountingStore(), CountingBus()
    async with running_service(store, bus, provider) as service:
        yield service, provider, store, bus


async def until_completed(session: ChatSession) -> None:
    while not isinstance(await next_event(session), GenerationCompleted):
        pass


async def test_a_message_to_an_existing_conversation_reads_ownership_once_and_pings_nothing(
    world: tuple[ChatService, ScriptedProvider, CountingStore, CountingBus],
) -> None:
    service, provider, store, bus = world
    first, accepted = await connect_and_post(service, "alice", "one")
    provider.end()
    await until_completed(first)

    # a new connection (not yet subscribed) and the same one (subscribed) post again
    for session in (ChatSession(service, "alice"), first):
        store.ownership_reads = bus.pings = 0
        await session.receive(create("again", conversation_id=accepted.conversation_id))
        again = await next_event(session)
        assert isinstance(again, MessageAccepted), again
        assert isinstance(await next_event(session), GenerationStarted)
        # ownership was checked by the post statement alone; the bus was not pinged
        assert (store.ownership_reads, bus.pings) == (0, 0)
        provider.end()
        await until_completed(session)


async def test_a_post_to_another_users_conversation_hears_nothing_of_it(
    world: tuple[ChatService, ScriptedProvider, CountingStore, CountingBus],
) -> None:
    service, provider, store, bus = world
    alice, accepted = await connect_and_post(service, "alice", "mine")
    conversation_id = accepted.conversation_id

    mallory = ChatSession(service, "mallory")
    store.pause.arm("mallory")
    sneaking = asyncio.ensure_future(
        mallory.receive(create("sneak", conversation_id=conversation_id))
    )
    await store.pause.entered.wait()
    # subscribed before the post answers: alice's reply streams meanwhile
    assert bus.subscriber_count(conversation_id) == 2
    provider.feed("secret ", "text")
    await asyncio.sleep(0.05)
    store.pause.release()
    await sneaking

    error = await next_event(mallory)
    assert isinstance(error, ErrorEvent) and error.code == "not_found"
    await asyncio.sleep(0.05)
    assert mallory.outbox.pending == 0, "events of a foreign conversation were delivered"
    assert bus.subscriber_count(conversation_id) == 1  # alice's only
    provider.end()
    await until_completed(alice)
