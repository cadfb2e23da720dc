"""Server-Sent Events transport, for proxies that block WebSocket.

Mirrors :mod:`.websocket`: requests become typed frames handed to a
:class:`ChatSession`; the session's outbox is written as SSE events whose
``data`` is the same JSON object the WebSocket sends, ``event`` its type and
``id`` ``{generation_id}:{end offset}``, so ``Last-Event-ID`` resumes exactly.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import orjson
from sanic import Request, Sanic
from sanic.response import HTTPResponse, json
from sse_starlette import ServerSentEvent

from ..core.errors import BadRequest, NotFound, ValidationFailed
from ..core.events import (
    TERMINAL_TYPES,
    ConversationSubscribe,
    GenerationCancel,
    GenerationResume,
    MessageCreate,
    ServerEvent,
    encode_event,
    frame_from_object,
)
from ..core.outbox import Outbox, SlowConsumer
from ..core.session import ChatSession
from .base import TransportContext

log = logging.getLogger(__name__)

__all__ = ["encode_sse", "parse_last_event_id", "register"]

SSE_HEADERS = {
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",
    "Connection": "keep-alive",
}


def register(app: Sanic[Any, Any], context: TransportContext) -> None:
    async def post_message(request: Request, conversation_id: Any) -> HTTPResponse:
        conversation_id = str(conversation_id)  # the router matched a UUID
        body = _json_body(request)
        if not isinstance(body, dict):
            raise BadRequest("the body must be a JSON object")
        frame = frame_from_object(
            {**body, "type": "message.create", "conversation_id": conversation_id},
            max_content_chars=context.service.settings.max_content_chars,
        )
        assert isinstance(frame, MessageCreate)
        user: str = request.ctx.user
        if context.gate is not None:
            await context.gate(user, frame)
        if await context.service.store.get_conversation(user, conversation_id) is None:
            raise NotFound("no such conversation", ref=frame.client_id)
        posted, accepted = await context.service.post(user, frame)
        return json(
            {
                "message": accepted.message.to_wire(),
                "generation_id": accepted.generation_id,
                "conversation_id": accepted.conversation_id,
                "created": posted.created,
            },
            status=202,
        )

    async def conversation_events(request: Request, conversation_id: Any) -> None:
        conversation_id = str(conversation_id)  # the router matched a UUID
        last = parse_last_event_id(request)
        frame = frame_from_object(
            {
                "type": "conversation.subscribe",
                "conversation_id": conversation_id,
                "generation_id": last[0] if last else None,
                "offset": last[1] if last else None,
            }
        )
        assert isinstance(frame, ConversationSubscribe)
        session = context.open_session(request.ctx.user)
        try:
            await session.handle(frame)
        except BaseException:
            await session.close()
            raise
        await _stream(request, session, context, until_terminal_of=None)

    async def generation_events(request: Request, generation_id: Any) -> None:
        generation_id = str(generation_id)  # the router matched a UUID
        last = parse_last_event_id(request)
        offset: Any = request.args.get("offset")
        if last is not None and last[0] == generation_id:
            offset = last[1]
        elif offset is not None:
            try:
                offset = int(offset)
            except ValueError:
                raise ValidationFailed("offset must be a non-negative integer") from None
        frame = frame_from_object(
            {"type": "generation.resume", "generation_id": generation_id, "offset": offset}
        )
        assert isinstance(frame, GenerationResume)
        session = context.open_session(request.ctx.user)
        try:
            await session.handle(frame)
        except BaseException:
            await session.close()
            raise
        await _stream(request, session, context, until_terminal_of=frame.generation_id)

    async def cancel(request: Request, generation_id: Any) -> HTTPResponse:
        generation_id = str(generation_id)  # the router matched a UUID
        frame = frame_from_object({"type": "generation.cancel", "generation_id": generation_id})
        assert isinstance(frame, GenerationCancel)
        message = await context.service.cancel(request.ctx.user, frame.generation_id)
        return json({"generation_id": frame.generation_id, "status": message.status}, status=202)

    app.add_route(
        post_message,
        "/api/v1/conversations/<conversation_id:uuid>/messages",
        methods=["POST"],
        name="sse_post_message",
    )
    app.add_route(
        conversation_events,
        "/api/v1/conversations/<conversation_id:uuid>/events",
        methods=["GET"],
        name="sse_conversation_events",
    )
    app.add_route(
        generation_events,
        "/api/v1/generations/<generation_id:uuid>/events",
        methods=["GET"],
        name="sse_generation_events",
    )
    app.add_route(
        cancel,
        "/api/v1/generations/<generation_id:uuid>/cancel",
        methods=["POST"],
        name="sse_cancel",
    )


def _json_body(request: Request) -> Any:
    try:
        return orjson.loads(request.body or b"")
    except orjson.JSONDecodeError:
        raise BadRequest("the body is not valid JSON") from None


def parse_last_event_id(request: Request) -> tuple[str, int] | None:
    """``Last-Event-ID`` (header, or ``?last_event_id=`` for clients that cannot
    set headers) as (generation_id, offset); None when absent."""
    raw = request.headers.get("last-event-id") or request.args.get("last_event_id")
    if not raw:
        return None
    generation_id, sep, offset = raw.rpartition(":")
    if not sep or not offset.isdigit() or len(generation_id) > 64:
        raise ValidationFailed("Last-Event-ID must be {generation_id}:{offset}")
    return generation_id, int(offset)


def encode_sse(event: ServerEvent) -> bytes:
    end_offset = getattr(event, "end_offset", None)
    generation_id = getattr(event, "generation_id", None)
    event_id = (
        f"{generation_id}:{end_offset}"
        if end_offset is not None and generation_id is not None
        else None
    )
    return ServerSentEvent(
        data=encode_event(event).decode(), event=event.type, id=event_id
    ).encode()


HEARTBEAT = ServerSentEvent(comment="heartbeat").encode()


async def _stream(
    request: Request,
    session: ChatSession,
    context: TransportContext,
    *,
    until_terminal_of: str | None,
) -> None:
    metrics = context.metrics
    metrics.connections.labels("sse").inc()
    outbox: Outbox = session.outbox
    try:
        response = await request.respond(content_type="text/event-stream", headers=SSE_HEADERS)
        assert response is not None
        # tell EventSource how soon to reconnect, and open the stream at once
        await response.send(ServerSentEvent(retry=1000, comment="connected").encode())
        while True:
            try:
                event = await asyncio.wait_for(outbox.get(), context.heartbeat_s)
            except TimeoutError:
                await response.send(HEARTBEAT)
                continue
            if event is None:
                break
            await response.send(encode_sse(event))
            if (
                until_terminal_of is not None
                and isinstance(event, TERMINAL_TYPES)
                and event.generation_id == until_terminal_of
            ):
                break
        with contextlib.suppress(Exception):
            await response.eof()
    except SlowConsumer:
        metrics.slow_consumers_dropped.labels("sse").inc()
    except (ConnectionError, asyncio.CancelledError):
        pass
    except Exception as exc:  # the client went away mid-write
        log.debug("sse stream stopped: %s", exc)
    finally:
        metrics.connections.labels("sse").dec()
        await session.close()
        if context.on_disconnect is not None:
            context.on_disconnect(request.ctx.user)
