"""What the core's session tests share: a service running over the fakes,
client frames as a connection sends them, and the next event a session queued."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from typing import Any

import orjson

from sanic_chat.core.events import MessageAccepted, ServerEvent
from sanic_chat.core.ports import Bus, MessageStore
from sanic_chat.core.service import ChatService
from sanic_chat.core.session import ChatSession
from sanic_chat.core.settings import CoreSettings

from .fakes import ScriptedProvider, StaticModels


@contextlib.asynccontextmanager
async def running_service(
    store: MessageStore, bus: Bus, provider: ScriptedProvider, **options: Any
) -> AsyncIterator[ChatService]:
    """A started service on node ``node-a`` checkpointing every 50 ms, closed after."""
    options.setdefault("node_id", "node-a")
    options.setdefault("settings", CoreSettings(checkpoint_interval_s=0.05))
    service = ChatService(store=store, bus=bus, models=StaticModels(provider), **options)
    await service.start()
    try:
        yield service
    finally:
        await service.close()


def frame(**fields: object) -> bytes:
    return orjson.dumps(fields)


def create(content: str = "hello", client_id: str | None = None, **extra: object) -> bytes:
    """A ``message.create`` frame (``conversation_id=`` posts to an existing one)."""
    return frame(
        type="message.create", client_id=client_id or str(uuid.uuid4()), content=content, **extra
    )


def subscribe(conversation_id: str, **extra: object) -> bytes:
    """A ``conversation.subscribe`` frame (``generation_id=``, ``offset=`` resume a reply)."""
    return frame(type="conversation.subscribe", conversation_id=conversation_id, **extra)


async def next_event(session: ChatSession, timeout: float = 2.0) -> ServerEvent:
    event = await asyncio.wait_for(session.outbox.get(), timeout)
    assert event is not None
    return event


async def connect_and_post(
    service: ChatService, user: str, *args: Any, **fields: Any
) -> tuple[ChatSession, MessageAccepted]:
    """A new connection of ``user`` sends ``create(*args, **fields)``: the
    session, and the ``message.accepted`` it answered first."""
    session = ChatSession(service, user)
    await session.receive(create(*args, **fields))
    accepted = await next_event(session)
    assert isinstance(accepted, MessageAccepted), accepted
    return session, accepted
