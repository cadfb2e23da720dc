"""ChatSession + ChatService driven with in-memory fakes: no server, no socket."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from sanic_chat.bus.memory import MemoryBus
from sanic_chat.core.errors import ProviderFailure
from sanic_chat.core.events import (
    ErrorEvent,
    GenerationCancelled,
    GenerationCompleted,
    GenerationDelta,
    GenerationFailed,
    GenerationStarted,
    MessageAccepted,
    Pong,
    ServerEvent,
)
from sanic_chat.core.service import ChatService
from sanic_chat.core.session import ChatSession
from sanic_chat.store.memory import MemoryMessageStore

from .fakes import ScriptedProvider
from .support import connect_and_post, create, frame, next_event, running_service, subscribe


@pytest.fixture
async def world():
    provider, store = ScriptedProvider(), MemoryMessageStore()
    async with running_service(store, MemoryBus(tail_ttl_s=0.5), provider) as service:
        yield service, provider, store


async def events_until_terminal(session: ChatSession) -> list[ServerEvent]:
    seen: list[ServerEvent] = []
    while True:
        event = await next_event(session)
        seen.append(event)
        if isinstance(event, GenerationCompleted | GenerationCancelled | GenerationFailed):
            return seen


def text_of(events: list[ServerEvent]) -> str:
    """Reassemble text, asserting offsets are contiguous (no gap, no overlap)."""
    text = ""
    for event in events:
        if isinstance(event, GenerationDelta):
            assert event.offset == len(text), (event.offset, len(text))
            text += event.text
    return text


async def test_message_is_committed_before_it_is_accepted(world) -> None:
    service, provider, store = world
    client_id = str(uuid.uuid4())
    session, accepted = await connect_and_post(service, "alice", "hi there", client_id)
    assert accepted.client_id == client_id
    stored = await store.get_message("alice", accepted.message.id)
    assert stored is not None and stored.content == "hi there" and stored.role == "user"
    started = await next_event(session)
    assert isinstance(started, GenerationStarted)
    assert started.reply_to == accepted.message.id
    assert started.generation_id == accepted.generation_id
    provider.feed("Hel", "lo ", "wörld 🎉")
    provider.end()
    events = await events_until_terminal(session)
    assert text_of(events) == "Hello wörld 🎉"
    completed = events[-1]
    assert isinstance(completed, GenerationCompleted)
    assert completed.message.status == "complete"
    assert completed.usage.output_tokens == 4
    row = await store.get_message("alice", started.generation_id)
    assert row is not None and row.content == "Hello wörld 🎉" and row.status == "complete"


async def test_resending_the_same_client_id_returns_the_same_message_and_starts_nothing(
    world,
) -> None:
    service, provider, store = world
    client_id = str(uuid.uuid4())
    session, first = await connect_and_post(service, "alice", "once", client_id)
    assert isinstance(await next_event(session), GenerationStarted)
    other = ChatSession(service, "alice")  # e.g. the client reconnected and resent
    await other.receive(create("once", client_id))
    again = await next_event(other)
    assert isinstance(again, MessageAccepted)
    assert again.message.id == first.message.id
    assert again.conversation_id == first.conversation_id
    assert again.generation_id == first.generation_id
    assert len(provider.requests) == 1
    messages = await store.list_messages("alice", first.conversation_id)
    assert messages is not None and [m.role for m in messages] == ["user", "assistant"]
    provider.end()


async def test_a_closed_connection_does_not_stop_the_reply(world) -> None:
    service, provider, store = world
    session, accepted = await connect_and_post(service, "alice")
    provider.feed("part one, ")
    await session.close()  # the connection drops mid-reply
    provider.feed("part two")
    provider.end()
    generation = service.running[accepted.generation_id]
    await asyncio.wait_for(generation.done.wait(), 2)
    row = await store.get_message("alice", accepted.generation_id)
    assert row is not None and row.status == "complete" and row.content == "part one, part two"


async def test_cancel_keeps_exactly_the_streamed_text(world) -> None:
    service, provider, store = world
    session, accepted = await connect_and_post(service, "alice")
    assert isinstance(await next_event(session), GenerationStarted)
    provider.feed("abc")
    seen = [await next_event(session)]
    provider.feed("def")
    seen.append(await next_event(session))
    await session.receive(frame(type="generation.cancel", generation_id=accepted.generation_id))
    rest = await events_until_terminal(session)
    events = seen + rest
    cancelled = events[-1]
    assert isinstance(cancelled, GenerationCancelled)
    assert text_of(events) == "abcdef" == cancelled.message.content
    row = await store.get_message("alice", accepted.generation_id)
    assert row is not None and row.status == "cancelled" and row.content == "abcdef"
    assert provider.closed == 1


async def test_second_message_while_a_reply_runs_is_a_conflict(world) -> None:
    service, provider, _ = world
    session, accepted = await connect_and_post(service, "alice")
    second_id = str(uuid.uuid4())
    await session.receive(create("again", second_id, conversation_id=accepted.conversation_id))
    events = [await next_event(session) for _ in range(2)]
    errors = [e for e in events if isinstance(e, ErrorEvent)]
    assert errors and errors[0].code == "conflict" and errors[0].ref == second_id
    provider.end()
    await events_until_terminal(session)
    # once the reply ended, the conversation takes messages again
    await session.receive(create("now", conversation_id=accepted.conversation_id))
    assert isinstance(await next_event(session), MessageAccepted)
    provider.end()


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        (b"not json", "bad_request"),
        (b"[1, 2]", "bad_request"),
        (b'{"type": "message.fly"}', "unknown_type"),
        (b'{"type": "message.create", "content": "x"}', "validation_error"),
        (b'{"type": "message.create", "client_id": "nope", "content": "x"}', "validation_error"),
        (
            b'{"type": "message.create", "client_id": "7b1c8c62-8a3e-4f38-9d4c-1d0f6a1b2c3d",'
            b' "content": "   "}',
            "validation_error",
        ),
        (  # no gate on this session: the decoder itself refuses NUL
            b'{"type": "message.create", "client_id": "7b1c8c62-8a3e-4f38-9d4c-1d0f6a1b2c3d",'
            b' "content": "a\\u0000b"}',
            "validation_error",
        ),
        (b'{"type": "generation.resume", "generation_id": 5}', "validation_error"),
        (
            b'{"type": "generation.cancel", "generation_id": "7b1c8c62-8a3e-4f38-9d4c-1d0f6a1b2c3d"}',
            "not_found",
        ),
        (
            b'{"type": "conversation.subscribe",'
            b' "conversation_id": "7b1c8c62-8a3e-4f38-9d4c-1d0f6a1b2c3d"}',
            "not_found",
        ),
    ],
)
async def test_bad_frames_answer_an_error_and_the_session_keeps_working(world, raw, code) -> None:
    service, _, _ = world
    session = ChatSession(service, "alice")
    await session.receive(raw)
    error = await next_event(session)
    assert isinstance(error, ErrorEvent) and error.code == code
    await session.receive(frame(type="ping"))
    assert isinstance(await next_event(session), Pong)


async def test_error_ref_names_the_offending_client_id(world) -> None:
    service, _, _ = world
    session = ChatSession(service, "alice")
    client_id = str(uuid.uuid4())
    await session.receive(create("hi", client_id, model="no-such-model"))
    error = await next_event(session)
    assert isinstance(error, ErrorEvent)
    assert error.code == "validation_error" and error.ref == client_id


async def test_provider_failure_stores_partial_text_as_failed(world) -> None:
    service, provider, store = world
    session, accepted = await connect_and_post(service, "alice")
    provider.feed("half a ")
    provider.fail(ProviderFailure("upstream closed the stream"))
    events = await events_until_terminal(session)
    failed = events[-1]
    assert isinstance(failed, GenerationFailed)
    assert failed.error.code == "provider_error"
    assert failed.message.content == "half a " and failed.message.status == "failed"
    row = await store.get_message("alice", accepted.generation_id)
    assert row is not None and row.status == "failed" and row.content == "half a "


async def test_history_is_sent_to_the_provider_in_order(world) -> None:
    service, provider, _ = world
    session, accepted = await connect_and_post(service, "alice", "first question")
    provider.feed("first answer")
    provider.end()
    await events_until_terminal(session)
    await session.receive(create("second question", conversation_id=accepted.conversation_id))
    await next_event(session)
    turns = [(t.role, t.content) for t in provider.requests[-1].messages]
    assert turns == [
        ("user", "first question"),
        ("assistant", "first answer"),
        ("user", "second question"),
    ]
    provider.end()


async def test_resume_from_an_offset_replays_exactly_the_rest_then_continues_live(world) -> None:
    service, provider, _ = world
    _writer, accepted = await connect_and_post(service, "alice")
    provider.feed("0123456789")
    await asyncio.sleep(0.01)
    reader = ChatSession(service, "alice")
    await reader.receive(
        frame(type="generation.resume", generation_id=accepted.generation_id, offset=4)
    )
    provider.feed("abc")
    provider.end()
    events = await events_until_terminal(reader)
    deltas = [e for e in events if isinstance(e, GenerationDelta)]
    assert deltas[0].offset == 4
    joined = "".join(d.text for d in deltas)
    assert joined == "456789abc"
    for before, after in zip(deltas, deltas[1:], strict=False):
        assert after.offset == before.end_offset


async def test_resume_of_a_finished_reply_comes_from_the_database(world) -> None:
    service, provider, _ = world
    session, accepted = await connect_and_post(service, "alice")
    provider.feed("all of it")
    provider.end()
    await events_until_terminal(session)
    await asyncio.sleep(0.6)  # the live tail expired (tail_ttl_s=0.5)
    assert await service.bus.tail(accepted.generation_id) is None
    late = ChatSession(service, "alice")
    await late.receive(
        frame(type="generation.resume", generation_id=accepted.generation_id, offset=4)
    )
    events = await events_until_terminal(late)
    assert [e.text for e in events if isinstance(e, GenerationDelta)] == ["of it"]
    assert isinstance(events[-1], GenerationCompleted)


async def test_another_users_generation_is_not_found(world) -> None:
    service, provider, _ = world
    _alice, accepted = await connect_and_post(service, "alice")
    mallory = ChatSession(service, "mallory")
    for raw in (
        frame(type="generation.resume", generation_id=accepted.generation_id, offset=0),
        frame(type="generation.cancel", generation_id=accepted.generation_id),
        subscribe(accepted.conversation_id),
        create("sneak", conversation_id=accepted.conversation_id),
    ):
        await mallory.receive(raw)
        error = await next_event(mallory)
        assert isinstance(error, ErrorEvent) and error.code == "not_found"
    provider.end()


async def a_reply_and_another_tab(
    service: ChatService,
) -> tuple[ChatSession, MessageAccepted, ChatSession]:
    """alice posts on one connection (its reply starts) and subscribes a second
    connection of hers to the conversation."""
    writer, accepted = await connect_and_post(service, "alice")
    tab = ChatSession(service, "alice")
    await tab.receive(subscribe(accepted.conversation_id))
    return writer, accepted, tab


async def test_subscribers_of_a_conversation_see_the_reply_and_stop_from_either_ends_it(
    world,
) -> None:
    service, provider, _ = world
    sender, accepted, other_tab = await a_reply_and_another_tab(service)
    provider.feed("shared ")
    await asyncio.sleep(0.01)
    await other_tab.receive(frame(type="generation.cancel", generation_id=accepted.generation_id))
    sender_events = await events_until_terminal(sender)
    assert isinstance(sender_events[-1], GenerationCancelled)
    tab_events = await events_until_terminal(other_tab)
    assert isinstance(tab_events[-1], GenerationCancelled)
    assert text_of(sender_events) == "shared "


async def test_a_resend_on_the_same_connection_is_answered_again(world) -> None:
    service, provider, _ = world
    client_id = str(uuid.uuid4())
    session, first = await connect_and_post(service, "alice", "twice", client_id)
    provider.end()
    await events_until_terminal(session)
    await session.receive(create("twice", client_id))
    again = await next_event(session)
    assert isinstance(again, MessageAccepted) and again.message.id == first.message.id
    assert len(provider.requests) == 1


async def test_unsubscribe_stops_a_conversations_events_but_not_its_reply(world) -> None:
    service, provider, store = world
    writer, accepted, tab = await a_reply_and_another_tab(service)
    provider.feed("seen ")
    first = await next_event(tab)
    assert isinstance(first, GenerationDelta)
    await tab.receive(
        frame(type="conversation.unsubscribe", conversation_id=accepted.conversation_id)
    )
    provider.feed("unseen")
    provider.end()
    await events_until_terminal(writer)
    await tab.receive(frame(type="ping"))
    assert isinstance(await next_event(tab), Pong)  # nothing of the reply came after
    row = await store.get_message("alice", accepted.generation_id)
    assert row is not None and row.status == "complete" and row.content == "seen unseen"
