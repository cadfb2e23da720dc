"""receive_message: Sanic's recv contract, in fewer event-loop turns.

These drive Sanic's real WebSocket implementation and frame assembler (the
objects a connection uses); frames are put into the assembler the way Sanic's
``data_received`` does, from a task of their own.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
from sanic.exceptions import WebsocketClosed
from sanic.server.websockets.impl import WebsocketImplProtocol
from websockets.frames import Frame, Opcode
from websockets.server import ServerProtocol

from sanic_chat.sanic_internals import receive_message


def _socket() -> WebsocketImplProtocol:
    return WebsocketImplProtocol(ServerProtocol())


def _deliver(ws: WebsocketImplProtocol, text: str) -> asyncio.Task[None]:
    # as Sanic's data_received does: the frame is put from a new task
    return asyncio.create_task(ws.assembler.put(Frame(Opcode.TEXT, text.encode())))


async def _turns_to_receive(
    ws: WebsocketImplProtocol, read: Callable[[], Coroutine[Any, Any, Any]]
) -> tuple[Any, int]:
    """The message ``read`` returns and how many loop turns passed between the
    frame's arrival and the reader having it."""
    loop = asyncio.get_running_loop()
    reader = asyncio.create_task(read())
    for _ in range(5):  # let the reader reach its wait
        await asyncio.sleep(0)
    assert not reader.done()
    turns = 0

    def tick() -> None:
        nonlocal turns
        if not reader.done():
            turns += 1
            loop.call_soon(tick)

    loop.call_soon(tick)
    _deliver(ws, "hello")
    message = await reader
    return message, turns


async def test_a_frame_reaches_the_reader_in_fewer_turns_than_sanics_recv() -> None:
    ours, our_turns = await _turns_to_receive(ws := _socket(), lambda: receive_message(ws, 5.0))
    theirs, their_turns = await _turns_to_receive(ws2 := _socket(), lambda: ws2.recv(timeout=5.0))
    assert ours == theirs == "hello"
    # one turn for the delivering task, one for the reader to wake
    assert our_turns <= 2, our_turns
    # Sanic's recv hands the message through two extra tasks and asyncio.wait
    assert their_turns >= our_turns + 3, (our_turns, their_turns)


async def test_messages_in_order_including_one_already_waiting() -> None:
    ws = _socket()
    first = _deliver(ws, "one")
    await asyncio.sleep(0)  # "one" is complete before anyone reads
    assert await receive_message(ws, 1.0) == "one"
    await first
    reader = asyncio.create_task(receive_message(ws, 1.0))
    await asyncio.sleep(0)
    second = _deliver(ws, "two")
    assert await reader == "two"
    await second


async def test_none_when_the_timeout_passes_and_the_socket_stays_usable() -> None:
    ws = _socket()
    assert await receive_message(ws, 0.02) is None
    assert not ws.assembler.get_in_progress
    assert ws.recv_cancel is None
    delivery = _deliver(ws, "later")
    assert await receive_message(ws, 1.0) == "later"
    await delivery


async def test_a_frame_waiting_for_a_reader_does_not_pause_it_while_one_waits() -> None:
    ws = _socket()
    paused: list[bool] = []

    def pause_frames() -> bool:
        paused.append(True)
        return False

    ws.pause_frames = pause_frames  # type: ignore[method-assign]
    reader = asyncio.create_task(receive_message(ws, 1.0))
    await asyncio.sleep(0)
    delivery = _deliver(ws, "x")
    assert await reader == "x"
    await delivery
    assert paused == []


async def test_the_peer_closing_ends_the_wait_with_websocket_closed() -> None:
    ws = _socket()
    reader = asyncio.create_task(receive_message(ws, 30.0))
    for _ in range(3):
        await asyncio.sleep(0)
    assert ws.recv_cancel is not None
    ws.recv_cancel.cancel()  # what Sanic does on a close frame or end of stream
    with pytest.raises(WebsocketClosed):
        await asyncio.wait_for(reader, 2.0)


async def test_a_closed_socket_raises_at_once() -> None:
    ws = _socket()
    ws.ws_proto.state = ws.ws_proto.state.__class__.CLOSED
    with pytest.raises(WebsocketClosed):
        await receive_message(ws, 1.0)


async def test_cancelling_the_reader_propagates_and_leaves_the_socket_usable() -> None:
    ws = _socket()
    reader = asyncio.create_task(receive_message(ws, 30.0))
    await asyncio.sleep(0)
    reader.cancel()
    with pytest.raises(asyncio.CancelledError):
        await reader
    assert not ws.recv_lock.locked() and not ws.assembler.get_in_progress
    delivery = _deliver(ws, "after")
    assert await receive_message(ws, 1.0) == "after"
    await delivery


async def test_falls_back_to_recv_without_sanics_assembler() -> None:
    class Plain:
        async def recv(self, timeout: float | None = None) -> str:
            return f"recv({timeout})"

    assert await receive_message(Plain(), 3.0) == "recv(3.0)"


async def test_the_peer_closing_as_the_deadline_fires_is_websocket_closed_and_no_error() -> None:
    # Under load the end of a connection and the reader's deadline land in the same
    # loop turn: the wake-up from the close then runs while the timeout is expiring
    # (already cancelling the reader). It must let the reader finish, not raise.
    loop = asyncio.get_running_loop()
    errors: list[dict[str, Any]] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _, context: errors.append(context))
    try:
        ws = _socket()
        reader = asyncio.create_task(receive_message(ws, 0.05))
        for _ in range(3):
            await asyncio.sleep(0)
        closing = ws.recv_cancel
        assert closing is not None

        def busy_past_the_deadline() -> None:
            time.sleep(0.1)  # the loop lags: the deadline passes meanwhile
            # next turn: the close runs first, then the due deadline, in one turn
            loop.call_soon(closing.cancel)

        loop.call_soon(busy_past_the_deadline)
        with pytest.raises(WebsocketClosed):
            await asyncio.wait_for(reader, 2.0)
        for _ in range(3):
            await asyncio.sleep(0)
    finally:
        loop.set_exception_handler(previous)
    assert errors == []
