"""Reading the next client frame of a Sanic WebSocket in one loop turn.

Sanic's ``WebsocketImplProtocol.recv(timeout)`` wraps its frame assembler's
``get`` in a task, races it against a cancel future with ``asyncio.wait``, and
``get`` wraps the wait for a complete message in ``asyncio.wait_for`` -- a
second task. Each task hand-off costs one turn of the event loop: a frame that
has arrived reaches the handler five turns after the assembler has it. On an
idle server a turn is microseconds; on a busy one it is tens of milliseconds
(``sanic_chat_event_loop_lag_seconds``), and those turns sat on the path of
every message -- before it was stored and before its reply was asked for.

:func:`receive_message` waits for the assembler's ``message_complete`` event
in the handler's own task (one turn after the frame is assembled), then takes
the message with the assembler's own non-blocking ``get(0)``. It keeps
``recv``'s contract: None when ``timeout`` passes with no message, and
:class:`~sanic.exceptions.WebsocketClosed` once the connection closes (Sanic
cancels ``recv_cancel`` when a close frame or end of stream arrives). It
relies on attributes of Sanic's WebSocket implementation that have been stable
since Sanic 21 (``assembler.message_complete``, ``assembler.get_in_progress``,
``recv_lock``, ``recv_cancel``); if they are missing it falls back to ``recv``.
"""

from __future__ import annotations

import asyncio
from typing import Any

from sanic.exceptions import WebsocketClosed
from websockets.protocol import State

__all__ = ["receive_message"]


async def receive_message(ws: Any, timeout: float) -> str | bytes | None:
    """The next complete message of ``ws``; None after ``timeout`` seconds
    without one. Raises WebsocketClosed once the connection is closed or
    closing. One reader at a time (as with ``recv``)."""
    assembler = getattr(ws, "assembler", None)
    if assembler is None or not hasattr(assembler, "message_complete"):
        message: str | bytes | None = await ws.recv(timeout=timeout)
        return message
    if ws.ws_proto.state is State.CLOSED:
        raise WebsocketClosed("the connection is closed")
    if ws.recv_lock.locked():
        raise RuntimeError("another task is already reading this WebSocket")
    async with ws.recv_lock:  # free: taken without yielding
        if not assembler.message_complete.is_set():
            if not await _wait_for_message(ws, assembler, timeout):
                return None
        # Non-blocking: the message is complete, so get(0) returns it without
        # a turn (its lock is free: only the holder of recv_lock reads).
        received: str | bytes | None = await assembler.get(0)
        return received


async def _wait_for_message(ws: Any, assembler: Any, timeout: float) -> bool:
    """Wait in this task until a message is complete (True), ``timeout``
    passes (False), or the connection closes (WebsocketClosed)."""
    loop = asyncio.get_running_loop()
    # Sanic cancels ``recv_cancel`` when the peer's close frame or end of
    # stream arrives: that ends the wait at once.
    closing: asyncio.Future[None] = loop.create_future()
    ws.recv_cancel = closing
    # While set, a frame completing a message does not pause the transport
    # (the assembler pauses reading only when nobody is waiting, as in recv).
    assembler.get_in_progress = True
    waiting = True
    try:
        async with asyncio.timeout(timeout) as deadline:

            def wake(_: asyncio.Future[None]) -> None:
                # An expired (or expiring) deadline has already cancelled this
                # task, which then finds ``closing`` done: nothing to wake, and
                # rescheduling it would raise. (Under load the close and the
                # deadline land in the same loop turn, this callback after both.)
                if waiting and not deadline.expired():
                    deadline.reschedule(loop.time())

            closing.add_done_callback(wake)
            await assembler.message_complete.wait()
        return True
    except TimeoutError:
        if closing.done():
            raise WebsocketClosed("the connection closed") from None
        return False
    finally:
        waiting = False
        assembler.get_in_progress = False
        if ws.recv_cancel is closing:
            ws.recv_cancel = None
