"""Every touch of Sanic's (and its websockets') internals.

Checked against Sanic 25.12.x and websockets 17.x (:data:`SANIC_CHECKED`,
:data:`WEBSOCKETS_CHECKED`); ``pyproject.toml`` pins Sanic to that range and
``tests/transports/test_sanic_internals.py`` fails, naming this module, on any
other release: re-read each part below against the new one, delete what upstream
now does itself, then move the range. No upstream issue was found for the
three WebSocket behaviours below; the design they come from is sanic-org/sanic#2000
(https://github.com/sanic-org/sanic/issues/2000, "RFC: Internal websocket handling").

1. **Unbounded WebSocket input** (:func:`bound_websocket_input`). Sanic's
   ``WebsocketImplProtocol.data_received`` (sanic/server/websockets/impl.py) parses
   each network read and hands its frames to a new task, and it pauses the socket
   only while a complete message waits for a reader that is not waiting. A client
   writing frames as fast as it can (our ``ping``, an unknown type, WebSocket
   pings) therefore makes a task per read faster than the handler takes one
   message: one connection took a process from 85 to 379 MiB in 10 s, never given
   back, and twenty stalled the loop so that a bystander could not even connect
   (benchmarks/RESULTS.md, "WebSocket input flood"). Here a connection's reads go
   to one queue drained by one task, in order, a batch of frames at a time, each
   batch paid from the connection's frame budget (:data:`FRAMES_PER_S`, burst
   :data:`FRAME_BURST`, every frame type counted -- a ping costs a counter, not a
   Redis round trip) before it is handled; past :data:`INPUT_BACKLOG_BYTES`
   queued, the socket is not read (``transport.pause_reading``) until the backlog
   drains: real TCP backpressure, the sender waits, and a flooding connection gets
   no more of the loop than its budget. The queue and its task go when the
   connection does. Delete when Sanic
   bounds a connection's unprocessed input and pauses reading for every frame type.
2. **Frame to handler in one turn** (:func:`receive_message`). ``recv(timeout)``
   wraps the assembler's ``get`` in a task and races it with ``asyncio.wait``;
   ``get`` wraps its wait in ``asyncio.wait_for``: a frame reached the handler 6
   loop turns after it was assembled, 2 here (RESULTS.md, "Third pass", frame to
   handler; ``tests/transports/test_ws_receive.py`` counts them). Delete when
   ``recv`` takes a complete message without helper tasks.
3. **Invalid UTF-8** (:func:`fail_on_bad_utf8`). The frame assembler decodes text
   strictly but does not handle the error: a traceback per frame in the log, the
   frame dropped, no close. Here such a frame fails the connection with the close
   code given (1007). Delete when Sanic closes with 1007 itself
   (``tests/security/test_hostile_frames.py`` shows it).
4. **Stopping ``--workers N`` from the main process**
   (:func:`stop_workers_from_the_monitor_loop`): Sanic's own SIGTERM handler can
   leave the main process spinning for ever or exit 1 (its docstring says how);
   ``tests/cli`` drive it. Delete when a SIGTERM just after start-up stops a
   multi-worker Sanic with status 0.
5. **Request heads** (:func:`watch_request_heads`, :func:`head_unfinished`,
   :func:`time_out_request`): ``REQUEST_TIMEOUT`` restarts with every chunk
   received (``HttpProtocol.data_received`` resets ``_time``), so a client that
   trickles one header line every few seconds holds its connection for ever, and
   nothing caps such connections. These hooks let ``security/handshakes.py`` (the
   policy: a deadline from connection start to the end of the head, and a cap)
   see a connection open, receive and close, ask whether it is still sending its
   head, and time it out as Sanic's own ``check_timeouts`` does (408 for a
   half-read head). ``tests/security/test_slowloris.py`` shows the trickle. Delete
   when Sanic bounds the whole request head in time and caps the connections
   still sending one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections import deque
from collections.abc import Awaitable, Callable
from types import FrameType
from typing import Any

from sanic.exceptions import RequestTimeout, WebsocketClosed
from sanic.http import Stage
from sanic.server.protocols.http_protocol import HttpProtocol
from sanic.server.websockets.frame import WebsocketFrameAssembler
from sanic.server.websockets.impl import WebsocketImplProtocol
from websockets.protocol import State

__all__ = [
    "FRAMES_PER_S",
    "FRAME_BURST",
    "INPUT_BACKLOG_BYTES",
    "SANIC_CHECKED",
    "WEBSOCKETS_CHECKED",
    "between_requests",
    "bound_websocket_input",
    "fail_on_bad_utf8",
    "head_unfinished",
    "receive_message",
    "stop_workers_from_the_monitor_loop",
    "time_out_request",
    "watch_request_heads",
]

log = logging.getLogger(__name__)

#: the releases this module was read against: [lowest, highest) as (major, minor)
SANIC_CHECKED = ((25, 12), (25, 13))
WEBSOCKETS_CHECKED = ((17, 0), (18, 0))

#: a connection's parsed but unhandled input (and the output it asks for, e.g.
#: pongs), in bytes, past which its socket is no longer read; what one more read
#: brings (at most 256 KiB) may still arrive before the pause takes effect
INPUT_BACKLOG_BYTES = 256 * 1024
#: what a parsed frame holds beyond its payload (object, list slot), for the count above
_FRAME_OVERHEAD = 200
#: every frame a connection sends, of any type, spends one of these before it is
#: handled; an empty budget waits until it refills. Far above what a person's client sends
#: (a few a second), and the burst takes a batch of subscribes after a reconnect.
#: Each frame taken still costs a parse and a handler turn, so the budget is what
#: bounds the CPU a flooding connection takes from everyone else (benchmarks/RESULTS.md,
#: "WebSocket input flood", measures both budgets).
FRAMES_PER_S = 100.0
FRAME_BURST = 400.0
#: the attribute holding a connection's :class:`_Input`
_INPUT = "_sanic_chat_input"


# ------------------------------------------------------------------ 1. bounded input


class _Input:
    """One connection's queue of parsed reads, its drain task and its frame budget."""

    __slots__ = ("budget", "budget_at", "pending", "queued", "worker")

    def __init__(self, now: float) -> None:
        self.pending: deque[tuple[Callable[..., Awaitable[None]], list[Any], list[Any], int]]
        self.pending = deque()
        self.queued = 0  # bytes, as counted by _cost
        self.worker: asyncio.Task[None] | None = None
        self.budget = FRAME_BURST
        self.budget_at = now


#: a read's frames are handled this many at a time, each batch paid from the budget
#: first: one network read can carry thousands of small frames, and handling them in
#: one go would hold the event loop for everyone else
_BATCH = 32


def _cost(data_to_send: list[bytes], events: list[Any]) -> int:
    return sum(len(b) for b in data_to_send) + sum(
        len(getattr(e, "data", b"")) + _FRAME_OVERHEAD for e in events
    )


def _state(ws: Any) -> _Input:
    state: _Input | None = ws.__dict__.get(_INPUT)
    if state is None:
        state = _Input(asyncio.get_running_loop().time())
        setattr(ws, _INPUT, state)
    return state


def _transport(ws: Any) -> asyncio.Transport | None:
    io_proto = ws.io_proto
    transport: asyncio.Transport | None = getattr(io_proto, "transport", None)
    if transport is None or transport.is_closing():
        return None
    return transport


def _enqueue(
    ws: Any, step: Callable[..., Awaitable[None]], out: list[Any], events: list[Any]
) -> None:
    state = _state(ws)
    # the first batch carries what the read asks to send (a pong, a close); the
    # rest only frames, in order
    if len(events) <= _BATCH:  # the usual read: one frame, no slicing
        batches = [events]
    else:
        batches = [events[i : i + _BATCH] for i in range(0, len(events), _BATCH)]
    for i, batch in enumerate(batches):
        sends = out if i == 0 else []
        cost = _cost(sends, batch)
        state.pending.append((step, sends, batch, cost))
        state.queued += cost
    if state.queued > INPUT_BACKLOG_BYTES and (t := _transport(ws)):
        t.pause_reading()
    if state.worker is None:
        state.worker = asyncio.get_running_loop().create_task(_drain(ws, state))


async def _spend(state: _Input, frames: int) -> None:
    """Take ``frames`` from the budget, waiting for it to refill when it is short."""
    loop = asyncio.get_running_loop()
    while True:
        now = loop.time()
        state.budget = min(FRAME_BURST, state.budget + (now - state.budget_at) * FRAMES_PER_S)
        state.budget_at = now
        if state.budget >= frames:
            state.budget -= frames
            return
        await asyncio.sleep((frames - state.budget) / FRAMES_PER_S)


def _maybe_resume(ws: Any, state: _Input) -> None:
    """Read again once the backlog is down to half, unless Sanic itself has paused
    reading (a message waiting for its reader)."""
    if state.queued > INPUT_BACKLOG_BYTES // 2 or ws.pause_frame_fut is not None:
        return
    if (t := _transport(ws)) is not None:
        t.resume_reading()  # idempotent


async def _drain(ws: Any, state: _Input) -> None:
    """The connection's reads, in the order they came, one batch at a time (as
    Sanic's task per read did under its ``process_event_mutex``), each batch's
    frames paid from the budget before they are handled."""
    try:
        while state.pending:
            step, out, events, cost = state.pending[0]
            if events:
                await _spend(state, len(events))
            try:
                await step(out, events)
            except Exception as exc:  # as a task per read would have: that read only
                log.debug("websocket input: %r", exc)
            finally:
                if state.pending:
                    state.pending.popleft()
                state.queued -= cost
            _maybe_resume(ws, state)
    finally:
        state.worker = None


def bound_websocket_input() -> None:
    """Bound every WebSocket connection's unhandled input, in this process (once)."""
    if getattr(WebsocketImplProtocol, "_sanic_chat_bounded", False):
        return
    connection_lost = WebsocketImplProtocol.connection_lost

    def data_received(self: Any, data: bytes) -> None:
        self.ws_proto.receive_data(data)
        out = self.ws_proto.data_to_send()
        events = self.ws_proto.events_received()
        if out or events:
            _enqueue(self, self.async_data_received, out, events)

    def eof_received(self: Any) -> bool | None:
        self.ws_proto.receive_eof()
        # after what came before it, in the same queue
        _enqueue(
            self,
            self.async_eof_received,
            self.ws_proto.data_to_send(),
            self.ws_proto.events_received(),
        )
        return False

    def on_connection_lost(self: Any, exc: Exception | None) -> None:
        connection_lost(self, exc)
        state: _Input | None = self.__dict__.get(_INPUT)
        if state is not None:
            # nothing will read what is queued: let it go now, not at the next GC
            state.pending.clear()
            state.queued = 0
            if state.worker is not None:
                state.worker.cancel()

    WebsocketImplProtocol.data_received = data_received  # type: ignore[method-assign]
    WebsocketImplProtocol.eof_received = eof_received  # type: ignore[method-assign]
    WebsocketImplProtocol.connection_lost = on_connection_lost  # type: ignore[method-assign]
    WebsocketImplProtocol._sanic_chat_bounded = True  # type: ignore[attr-defined]


# ------------------------------------------------------------------ 2. frame to handler


async def receive_message(ws: Any, timeout: float) -> str | bytes | None:
    """The next complete message of ``ws``; None after ``timeout`` seconds
    without one. Raises WebsocketClosed once the connection is closed or
    closing. One reader at a time (as with ``recv``).

    It waits for the assembler's ``message_complete`` event in the caller's own
    task, then takes the message with the assembler's non-blocking ``get(0)``:
    ``recv``'s contract (None on timeout, WebsocketClosed once Sanic cancels
    ``recv_cancel`` on a close frame or end of stream), without its helper tasks.
    If the assembler's attributes are missing it falls back to ``recv``."""
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


# ------------------------------------------------------------------ 3. invalid UTF-8


def fail_on_bad_utf8(code: int, reason: str) -> None:
    """A text frame that is not UTF-8 fails its connection with ``code`` (once per process)."""
    original = WebsocketFrameAssembler.put
    if getattr(original, "_fails_on_bad_utf8", False):
        return

    async def put(self: Any, frame: Any) -> None:
        try:
            await original(self, frame)
        except UnicodeDecodeError:
            self.decoder = None
            self.chunks = []
            self.protocol.fail_connection(code, reason)

    put._fails_on_bad_utf8 = True  # type: ignore[attr-defined]
    WebsocketFrameAssembler.put = put  # type: ignore[method-assign]


# ------------------------------------------------------------------ 4. --workers N and SIGTERM

#: Sanic's monitor message that stops every worker (what ``app.m.terminate()`` sends)
_TERMINATE = "__TERMINATE__"


def stop_workers_from_the_monitor_loop(app: Any) -> None:
    """``--workers N``, in the main process: SIGTERM and SIGINT become a message to
    Sanic's monitor loop, which stops the workers; a second signal kills the whole
    process group at once, as Sanic's own handler does.

    Sanic's own handler stops the workers from inside the signal handler, which fails
    in two ways:

    * It marks every worker TERMINATED in the shared worker state and queues a None.
      The main process notes that its workers started only when it next looks (every
      0.1 s, later under load), and until then it waits for their acks: that wait
      passes every message but one back round, and never reads TERMINATED as acked.
      A SIGTERM just after start-up leaves the main process spinning for ever, its
      workers drained and gone.
    * Its calls to the state's manager process cut into the call the main thread may
      be making: the replies cross, an exception escapes, a worker is never told to
      stop, and the node exits 1.

    The message makes no such call, and the wait for acks passes it round until they
    are in (a busy wait, no longer than a worker still starting takes); the monitor
    loop then stops the workers as Sanic's handler would have.
    """
    from sanic.exceptions import ServerKilled

    manager = app.manager
    received = False

    def on_signal(signum: int, frame: FrameType | None) -> None:
        nonlocal received
        name = signal.Signals(signum).name
        if received:
            log.warning("%s again: killing the workers", name)
            with contextlib.suppress(ServerKilled):
                manager.kill()
            return
        received = True
        log.info("%s: stopping the workers", name)
        # one small write to a pipe, whatever the main thread was doing
        manager.monitor_publisher.send(_TERMINATE)

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, on_signal)


# ------------------------------------------------------------------ 5. request heads


def watch_request_heads(
    *,
    opened: Callable[[Any], None],
    received: Callable[[Any], None],
    lost: Callable[[Any], None],
) -> None:
    """Call ``opened(protocol)`` when an HTTP connection is made, ``received(protocol)``
    before each chunk of HTTP bytes is handled (a WebSocket's frames bypass it once
    upgraded), and ``lost(protocol)`` when it closes. Installed once per process."""
    if getattr(HttpProtocol, "_sanic_chat_heads", False):
        return
    connection_made = HttpProtocol.connection_made
    data_received = HttpProtocol.data_received
    connection_lost = HttpProtocol.connection_lost

    def on_connection_made(self: Any, transport: Any) -> None:
        connection_made(self, transport)
        opened(self)

    def on_data_received(self: Any, data: bytes) -> None:
        received(self)
        data_received(self, data)

    def on_connection_lost(self: Any, exc: Exception | None) -> None:
        lost(self)
        connection_lost(self, exc)

    HttpProtocol.connection_made = on_connection_made  # type: ignore[method-assign]
    HttpProtocol.data_received = on_data_received  # type: ignore[method-assign]
    HttpProtocol.connection_lost = on_connection_lost  # type: ignore[method-assign]
    HttpProtocol._sanic_chat_heads = True  # type: ignore[attr-defined]


def between_requests(protocol: Any) -> bool:
    """The connection is idle, before its first request or between two."""
    http = protocol.http
    return http is not None and http.stage is Stage.IDLE


def head_unfinished(protocol: Any, *, saw_bytes: bool) -> bool:
    """Still waiting for (the rest of) a request head: reading it (REQUEST), or
    idle before its first byte. Idle after bytes means a kept-alive connection
    between requests (its own timeout is Sanic's KEEP_ALIVE_TIMEOUT)."""
    http = protocol.http
    transport = protocol.transport
    if http is None or transport is None or transport.is_closing():
        return False
    stage = http.stage
    return stage is Stage.REQUEST or (stage is Stage.IDLE and not saw_bytes)


def time_out_request(protocol: Any, why: str) -> None:
    """What Sanic's own ``check_timeouts`` does: a half-read request is answered
    (408) by the connection task, then closed; an idle one is closed."""
    task = protocol._task
    if task is None:
        return
    if protocol.http.stage is Stage.REQUEST:
        protocol.http.exception = RequestTimeout(why)
    task.cancel()
