"""Server-Sent Events transport, for proxies that block WebSocket.

Mirrors :mod:`.websocket`: requests become typed frames handed to a
:class:`ChatSession`; the session's outbox is written as SSE events whose
``data`` is the same JSON object the WebSocket sends, ``event`` its type and
``id`` ``{generation_id}:{end offset}``, so ``Last-Event-ID`` resumes exactly.

A stream ends when its client goes away (Sanic cancels the handler: the
session unsubscribes at once), when the client falls too far behind (it
reconnects with ``Last-Event-ID``), after the terminal event of
``/generations/{id}/events``, and at shutdown once running replies drained.
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections.abc import Callable
from typing import Any

import orjson
from sanic import Request, Sanic
from sanic.response import HTTPResponse, json
from sanic_ext import openapi
from sse_starlette import ServerSentEvent

from ..api import schemas
from ..api.schemas import errors, json_body, json_response
from ..core.errors import BadRequest, ValidationFailed
from ..core.events import (
    TERMINAL_TYPES,
    ConversationSubscribe,
    GenerationCancel,
    GenerationResume,
    ServerEvent,
    encode_event,
    frame_from_object,
    parse_whole_number,
)
from ..core.outbox import Outbox, SlowConsumer
from ..core.session import ChatSession
from .base import TransportContext

log = logging.getLogger(__name__)

__all__ = [
    "CONVERSATION_EVENTS",
    "GENERATION_EVENTS",
    "TICKET_PATHS",
    "encode_sse",
    "parse_last_event_id",
    "register",
]

SSE_HEADERS = {
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",
    "Connection": "keep-alive",
}

#: tells EventSource to reconnect after 1 s, and opens the stream at once
OPENING = ServerSentEvent(retry=1000, comment="connected").encode()
HEARTBEAT = ServerSentEvent(comment="heartbeat").encode()
#: events already queued are written together, up to this many bytes per write


# ids are typed ``uuid`` in the paths so that these routes share their
# paths with the REST API's (GET .../messages); a malformed id is a 404
CONVERSATION_EVENTS = "/api/v1/conversations/<conversation_id:uuid>/events"
GENERATION_EVENTS = "/api/v1/generations/<generation_id:uuid>/events"
#: an EventSource cannot send ``Authorization``: a one-time ``?ticket=`` on the streams
TICKET_PATHS = (CONVERSATION_EVENTS, GENERATION_EVENTS)


def register(app: Sanic[Any, Any], context: TransportContext) -> None:
    #: the outboxes of open streams, ended at shutdown
    streams: set[Outbox] = set()

    @openapi.tag("replies")
    @openapi.summary("Post a message; its reply starts")
    @openapi.description(
        "Stores the user message and starts the assistant's reply; answers once the "
        "message is committed. Follow the reply on the conversation's or the "
        "generation's event stream. Idempotent on `client_id`: a resend answers the "
        "same message with `created: false`. See docs/protocol.md, Server-Sent Events."
    )
    @json_body(schemas.MessageCreate, "the message")
    @errors(400, 404, 409, 413, 422, 429, 503)
    @json_response(202, schemas.MessageAccepted, "stored; the reply is running")
    async def post_message(request: Request, conversation_id: uuid.UUID) -> HTTPResponse:
        body = _json_body(request)
        if not isinstance(body, dict):
            raise BadRequest("the body must be a JSON object")
        # the session validates, gates and posts, as for a WebSocket frame: NotFound
        # for a missing or foreign conversation, Conflict while a reply runs
        session = context.open_session(request.ctx.user)
        try:
            posted, accepted = await session.post({**body, "conversation_id": str(conversation_id)})
        finally:
            await session.close()
        return json(
            {
                "message": accepted.message.to_wire(),
                "generation_id": accepted.generation_id,
                "conversation_id": accepted.conversation_id,
                "created": posted.created,
            },
            status=202,
        )

    @openapi.tag("replies")
    @openapi.summary("Follow a conversation (Server-Sent Events)")
    @openapi.description(
        "A `text/event-stream` of every event of the conversation from now on: each "
        "`data:` is the same JSON object the WebSocket sends, `event:` its type, `id:` "
        "`{generation_id}:{offset}`. Resume with the `Last-Event-ID` header (or "
        "`?last_event_id=`). See docs/protocol.md, The event stream."
    )
    @_event_stream("the conversation's events, until the client leaves")
    async def conversation_events(request: Request, conversation_id: uuid.UUID) -> None:
        last = parse_last_event_id(request)
        frame = frame_from_object(
            {
                "type": "conversation.subscribe",
                "conversation_id": str(conversation_id),
                "generation_id": last[0] if last else None,
                "offset": last[1] if last else None,
            }
        )
        assert isinstance(frame, ConversationSubscribe)
        await _serve(request, context, streams, frame, until_terminal_of=None)

    @openapi.tag("replies")
    @openapi.summary("Follow one reply (Server-Sent Events)")
    @openapi.description(
        "A `text/event-stream` of one reply from `offset`: `generation.started`, its "
        "text so far, its live deltas, its terminal event; then the response ends. "
        "See docs/protocol.md, Resuming."
    )
    @openapi.parameter("offset", int, description="code points already held (default 0)")
    @_event_stream("the reply's events, up to its terminal event")
    async def generation_events(request: Request, generation_id: uuid.UUID) -> None:
        last = parse_last_event_id(request)
        offset: int | None = _offset_arg(request)
        if last is not None and last[0] == str(generation_id):
            offset = last[1]  # a reconnect: it has exactly this much
        frame = frame_from_object(
            {"type": "generation.resume", "generation_id": str(generation_id), "offset": offset}
        )
        assert isinstance(frame, GenerationResume)
        await _serve(request, context, streams, frame, until_terminal_of=frame.generation_id)

    @openapi.tag("replies")
    @openapi.summary("Stop a running reply")
    @openapi.description(
        "Ends the reply for everyone following it; the terminal event "
        "(`generation.cancelled`, or how it ended first) follows on the streams."
    )
    @errors(404, 422, 429)
    @json_response(202, schemas.CancelAccepted, "Stop taken")
    async def cancel(request: Request, generation_id: uuid.UUID) -> HTTPResponse:
        frame = frame_from_object(
            {"type": "generation.cancel", "generation_id": str(generation_id)}
        )
        assert isinstance(frame, GenerationCancel)
        session = context.open_session(request.ctx.user)
        try:
            message = await session.cancel(frame)  # gated like a WebSocket frame
        finally:
            await session.close()
        return json({"generation_id": frame.generation_id, "status": message.status}, status=202)

    async def end_streams(app: Sanic[Any, Any]) -> None:
        # Shutdown listeners run in reverse order of registration: this runs
        # after the app's drain, so running replies reached their streams.
        # Each stream ends; its client reconnects (elsewhere) with Last-Event-ID.
        for outbox in list(streams):
            outbox.close()

    app.add_route(
        post_message,
        "/api/v1/conversations/<conversation_id:uuid>/messages",
        methods=["POST"],
        name="sse_post_message",
    )
    app.add_route(
        conversation_events,
        CONVERSATION_EVENTS,
        methods=["GET"],
        name="sse_conversation_events",
    )
    app.add_route(
        generation_events,
        GENERATION_EVENTS,
        methods=["GET"],
        name="sse_generation_events",
    )
    app.add_route(
        cancel,
        "/api/v1/generations/<generation_id:uuid>/cancel",
        methods=["POST"],
        name="sse_cancel",
    )
    app.register_listener(end_streams, "before_server_stop")


def _event_stream(description: str) -> Callable[[Any], Any]:
    """What every event stream's documentation says: its answer, its errors, and
    the two query parameters it shares (``?last_event_id=`` to resume, ``?ticket=``)."""
    documents = (
        openapi.response(200, {"text/event-stream": {"schema": {"type": "string"}}}, description),
        errors(401, 404, 422, 429),
        openapi.parameter("ticket", str, description="a one-time ticket (JWT auth, browsers)"),
        openapi.parameter("last_event_id", str, description="{generation_id}:{offset} to resume"),
    )

    def document(handler: Any) -> Any:
        for add in documents:
            handler = add(handler)
        return handler

    return document


def _json_body(request: Request) -> Any:
    try:
        return orjson.loads(request.body or b"")
    except orjson.JSONDecodeError:
        raise BadRequest("the body is not valid JSON") from None


def _offset_arg(request: Request) -> int | None:
    raw = request.args.get("offset")
    if raw is None or raw == "":
        return None
    return parse_whole_number(raw, "offset")


def parse_last_event_id(request: Request) -> tuple[str, int] | None:
    """``Last-Event-ID`` (the header a reconnecting EventSource sends, else
    ``?last_event_id=`` for a first connection) as (generation_id, offset);
    None when absent."""
    raw = request.headers.get("last-event-id") or request.args.get("last_event_id")
    if not raw:
        return None
    generation_id, sep, offset = raw.rpartition(":")
    if not sep or len(generation_id) > 64:
        raise ValidationFailed("Last-Event-ID must be {generation_id}:{offset}")
    return generation_id, parse_whole_number(offset, "the offset in Last-Event-ID")


def encode_sse(event: ServerEvent) -> bytes:
    """One event on the wire: ``event:`` its type, ``data:`` the JSON every
    transport sends, and for generation events ``id:`` where its text ends."""
    end_offset = getattr(event, "end_offset", None)
    generation_id = getattr(event, "generation_id", None)
    event_id = (
        f"{generation_id}:{end_offset}"
        if end_offset is not None and generation_id is not None
        else None
    )
    data = encode_event(event).decode()
    return ServerSentEvent(data=data, event=event.type, id=event_id).encode()


async def _serve(
    request: Request,
    context: TransportContext,
    streams: set[Outbox],
    frame: ConversationSubscribe | GenerationResume,
    *,
    until_terminal_of: str | None,
) -> None:
    """Open a session, run ``frame`` (refusals answer as HTTP errors, before
    the stream starts), then stream the session's outbox."""
    user: str = request.ctx.user
    if context.on_connect is not None:
        context.on_connect(user)  # may refuse (a ChatError answers over HTTP)
    session = context.open_session(user)
    try:
        await session.handle(frame)
        streams.add(session.outbox)
        await _stream(request, session, context, until_terminal_of=until_terminal_of)
    finally:
        streams.discard(session.outbox)
        await session.close()
        if context.on_disconnect is not None:
            context.on_disconnect(user)


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
    response = None
    try:
        response = await request.respond(content_type="text/event-stream", headers=SSE_HEADERS)
        assert response is not None
        await response.send(OPENING)
        ended = False
        while not ended:
            events = await outbox.get_batch(context.chat.linger_s(), timeout_s=context.heartbeat_s)
            if events is None:
                break
            if not events:
                await response.send(HEARTBEAT)
                continue
            # what is queued goes out in one write; a slow reader finds deltas
            # merged behind the write it is blocking
            batch: list[bytes] = []
            for event in events:
                batch.append(encode_sse(event))
                if (
                    until_terminal_of is not None
                    and isinstance(event, TERMINAL_TYPES)
                    and event.generation_id == until_terminal_of
                ):
                    ended = True
                    break
            await response.send(b"".join(batch))
        await response.eof()
    except SlowConsumer:
        # the stream ends; the client reconnects with Last-Event-ID
        metrics.slow_consumers_dropped.labels("sse").inc()
        if response is not None:
            with contextlib.suppress(Exception):
                await response.eof()
    except ConnectionError as exc:  # the client went away mid-write
        log.debug("sse stream stopped: %s", exc)
    finally:
        metrics.connections.labels("sse").dec()
