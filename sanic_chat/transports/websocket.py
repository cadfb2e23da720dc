"""WebSocket transport: ``GET /ws``. Text frames in, text frames out.

It only translates: frames from the socket go to :meth:`ChatSession.receive`;
events from the session's outbox go to the socket. A slow reader makes the
writer wait on the socket while the outbox merges deltas behind it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from sanic import Request, Sanic
from sanic.exceptions import WebsocketClosed
from sanic.server.websockets.impl import WebsocketImplProtocol
from websockets.exceptions import ConnectionClosed

from ..core.events import encode_event
from ..core.outbox import SLOW_CONSUMER_CLOSE_CODE, Outbox, SlowConsumer
from .base import TransportContext

log = logging.getLogger(__name__)

__all__ = ["SLOW_CONSUMER_CLOSE_CODE", "register"]

#: close code when the server goes away (graceful shutdown): reconnect and resume
GOING_AWAY = 1001


def register(app: Sanic[Any, Any], context: TransportContext) -> None:
    async def websocket(request: Request, ws: WebsocketImplProtocol) -> None:
        user: str = request.ctx.user
        session = context.open_session(user)
        metrics = context.metrics
        metrics.connections.labels("websocket").inc()
        activity = _Activity()
        writer = asyncio.create_task(_pump(session.outbox, ws, context, activity))
        try:
            while not writer.done():
                raw = await ws.recv(timeout=min(context.idle_timeout_s, 5.0))
                if raw is None:
                    # idle means nothing sent either way (a reply streaming to a
                    # quiet reader is not idle)
                    if time.monotonic() - activity.last > context.idle_timeout_s:
                        await ws.close(1000, "idle timeout")
                        break
                    continue
                activity.last = time.monotonic()
                await session.receive(raw)
        except (ConnectionClosed, WebsocketClosed):
            pass
        except asyncio.CancelledError:
            # the server is shutting down: tell the client to reconnect elsewhere
            with contextlib.suppress(Exception):
                await ws.close(GOING_AWAY, "server going away: reconnect and resume")
            raise
        finally:
            metrics.connections.labels("websocket").dec()
            await session.close()
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await writer
            if context.on_disconnect is not None:
                context.on_disconnect(user)

    app.add_websocket_route(websocket, "/ws", name="websocket")


class _Activity:
    __slots__ = ("last",)

    def __init__(self) -> None:
        self.last = time.monotonic()


async def _pump(
    outbox: Outbox, ws: WebsocketImplProtocol, context: TransportContext, activity: _Activity
) -> None:
    try:
        while (event := await outbox.get()) is not None:
            await ws.send(encode_event(event).decode())
            activity.last = time.monotonic()
    except SlowConsumer:
        context.metrics.slow_consumers_dropped.labels("websocket").inc()
        await ws.close(SLOW_CONSUMER_CLOSE_CODE, "too far behind: reconnect and resume by offset")
    except Exception as exc:  # the socket is gone; the reader sees it too
        log.debug("websocket writer stopped: %s", exc)
