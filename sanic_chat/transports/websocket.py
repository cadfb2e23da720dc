"""WebSocket transport: ``GET /ws``. Text frames in, text frames out.

It only translates: frames from the socket go to :meth:`ChatSession.receive`;
events from the session's outbox go to the socket. A slow reader makes the
writer wait on the socket while the outbox merges deltas behind it; one too
far behind is closed with :data:`SLOW_CONSUMER_CLOSE_CODE` and resumes by
offset. A dropped socket frees the session at once and stops no reply.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from sanic import Request, Sanic, Websocket
from sanic.exceptions import WebsocketClosed
from websockets.exceptions import ConnectionClosed

from ..api.docs import describe_websocket
from ..core.errors import BadRequest, ChatError
from ..core.events import ErrorEvent, encode_event
from ..core.outbox import Outbox, SlowConsumer
from ..sanic_internals import bound_websocket_input, receive_message
from .base import TransportContext

log = logging.getLogger(__name__)

__all__ = ["GOING_AWAY", "PATH", "REFUSED", "SLOW_CONSUMER_CLOSE_CODE", "TICKET_PATHS", "register"]

PATH = "/ws"
#: a browser cannot set ``Authorization`` on a WebSocket: a one-time ``?ticket=`` there
TICKET_PATHS = (PATH,)

#: close code when the server goes away (graceful shutdown): reconnect and resume
GOING_AWAY = 1001
#: close code when the connection itself is refused (e.g. too many connections)
REFUSED = 1008
#: close code for a reader the core dropped as too far behind (SlowConsumer). 4000-4999
#: is the application range; clients reconnect and resume by offset.
SLOW_CONSUMER_CLOSE_CODE = 4008
#: how long a closing handshake may wait for a reader that does not read
_CLOSE_TIMEOUT_S = 10.0
#: at shutdown, how long writers may take to send what is still queued
_FLUSH_TIMEOUT_S = 2.0
#: the answer to a binary frame (docs/protocol.md: text frames only)
_BINARY = BadRequest("binary frames are not accepted: send each frame as JSON text")
#: what websockets logs at INFO, through Sanic's ``sanic.websockets`` logger, as each
#: connection opens and closes
_PER_CONNECTION_LINES = frozenset({"connection open", "connection closed"})


class _PerConnectionAtDebug(logging.Filter):
    """A line per connection is detail (thousands in a burst when many clients come or go
    together): it becomes DEBUG, shown when ``SANIC_CHAT_LOG_LEVEL=DEBUG``. The logger's
    warnings and errors pass as they are."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno != logging.INFO or not isinstance(record.msg, str):
            return True
        if record.msg not in _PER_CONNECTION_LINES:
            return True
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return log.isEnabledFor(logging.DEBUG)


_PER_CONNECTION_AT_DEBUG = _PerConnectionAtDebug()


def register(app: Sanic[Any, Any], context: TransportContext) -> None:
    logging.getLogger("sanic.websockets").addFilter(_PER_CONNECTION_AT_DEBUG)  # once: same filter
    bound_websocket_input()  # every connection's unhandled input, bounded (once)
    #: open sockets with their outbox and writer, told to go away at shutdown
    sockets: dict[Websocket, tuple[Outbox, asyncio.Task[None]]] = {}

    async def websocket(request: Request, ws: Websocket) -> None:
        user: str = request.ctx.user
        if context.on_connect is not None:
            try:
                context.on_connect(user)
            except ChatError as exc:
                with contextlib.suppress(Exception):
                    await ws.send(encode_event(ErrorEvent(exc.code, exc.message)).decode())
                await _close(ws, REFUSED, exc.message[:100])
                return
        session = context.open_session(user)
        metrics = context.metrics
        metrics.connections.labels("websocket").inc()
        activity = _Activity()
        writer = asyncio.create_task(_pump(session.outbox, ws, context, activity))
        sockets[ws] = (session.outbox, writer)
        try:
            while not writer.done():
                raw = await receive_message(ws, min(context.idle_timeout_s, 5.0))
                if raw is None:
                    # idle means nothing sent either way (a reply streaming to a
                    # quiet reader is not idle)
                    if time.monotonic() - activity.last > context.idle_timeout_s:
                        await _close(ws, 1000, "idle timeout")
                        break
                    continue
                activity.last = time.monotonic()
                if isinstance(raw, bytes):
                    # the contract is text frames only: refused like any bad frame
                    # (an ``error`` frame; the connection stays open)
                    session.outbox.push(ErrorEvent(_BINARY.code, _BINARY.message))
                    continue
                await session.receive(raw)
        except (ConnectionClosed, WebsocketClosed):
            pass
        except asyncio.CancelledError:
            # the server is shutting down: tell the client to reconnect elsewhere
            with contextlib.suppress(Exception):
                await _close(ws, GOING_AWAY, "server going away: reconnect and resume")
            raise
        finally:
            sockets.pop(ws, None)
            metrics.connections.labels("websocket").dec()
            await session.close()
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await writer
            if context.on_disconnect is not None:
                context.on_disconnect(user)

    async def going_away(app: Sanic[Any, Any]) -> None:
        # Shutdown listeners run in reverse order of registration: this runs
        # after the app's drain, so running replies reached their sockets.
        # First let every writer send what its outbox still holds (the drain
        # queued the replies' last events), then say goodbye.
        open_sockets = list(sockets.items())
        for _, (outbox, _) in open_sockets:
            outbox.close()
        writers = [writer for _, (_, writer) in open_sockets if not writer.done()]
        if writers:
            await asyncio.wait(writers, timeout=_FLUSH_TIMEOUT_S)
        closing = [
            _close(ws, GOING_AWAY, "server going away: reconnect and resume")
            for ws, _ in open_sockets
        ]
        if closing:
            await asyncio.gather(*closing, return_exceptions=True)

    app.add_websocket_route(websocket, PATH, name="websocket")
    describe_websocket(app, "websocket")  # its OpenAPI description (/docs)
    app.register_listener(going_away, "before_server_stop")


class _Activity:
    __slots__ = ("last",)

    def __init__(self) -> None:
        self.last = time.monotonic()


async def _pump(
    outbox: Outbox, ws: Websocket, context: TransportContext, activity: _Activity
) -> None:
    try:
        while (batch := await outbox.get_batch(context.chat.linger_s())) is not None:
            for event in batch:
                if isinstance(event, ErrorEvent):
                    context.metrics.frames_refused.labels(event.code).inc()
                await ws.send(encode_event(event).decode())
            activity.last = time.monotonic()
    except SlowConsumer:
        context.metrics.slow_consumers_dropped.labels("websocket").inc()
        # what was written before stays readable; the close frame follows it
        await _close(ws, SLOW_CONSUMER_CLOSE_CODE, "too far behind: reconnect and resume by offset")
    except Exception as exc:  # the socket is gone; the reader sees it too
        log.debug("websocket writer stopped: %s", exc)


async def _close(ws: Websocket, code: int, reason: str) -> None:
    """The closing handshake, bounded: a peer that reads nothing for
    :data:`_CLOSE_TIMEOUT_S` has its connection failed instead."""
    try:
        await asyncio.wait_for(ws.close(code, reason), _CLOSE_TIMEOUT_S)
    except TimeoutError:
        ws.fail_connection(code, reason)
    except Exception as exc:
        log.debug("websocket close failed: %s", exc)
