"""httpcore's network backend on bare asyncio: one ``asyncio.Protocol`` per
connection, so that a read is a buffer check or one future, not anyio's cancel
scope, sniffio lookup, exception map and checkpoint per call.

Invariants:

* ``read`` returns buffered bytes without yielding to the loop; with none
  buffered it awaits one future, woken by data, EOF, the connection's loss or
  its timer. Buffered bytes always come out before the EOF or error after them.
* One reader and one writer at a time (httpcore's connection holds a lock per
  request). A cancelled ``read`` or ``write`` leaves the stream consistent: its
  waiter and timer go, buffered bytes stay.
* Reading pauses while more than ``HIGH_WATER`` bytes wait unread and resumes
  once a read drains them to ``LOW_WATER``: a slow consumer holds the peer back
  through TCP instead of growing the buffer.
* ``aclose`` aborts the transport: the peer sees the disconnect at once, even
  over TLS (no close_notify exchange) or with unsent bytes queued.
* Errors are httpcore's: ``ConnectTimeout``/``ConnectError`` for connect and
  TLS set-up, ``ReadTimeout``/``ReadError``, ``WriteTimeout``/``WriteError``.
"""

from __future__ import annotations

import asyncio
import select
import ssl
from collections import deque
from collections.abc import Iterable
from typing import Any, cast

import httpcore

__all__ = ["HIGH_WATER", "LOW_WATER", "AsyncioNetworkBackend", "AsyncioStream"]

HIGH_WATER = 256 * 1024
LOW_WATER = 64 * 1024

#: what httpcore passes as ``socket_options``: arguments of ``socket.setsockopt``
SocketOption = (
    tuple[int, int, int] | tuple[int, int, bytes | bytearray] | tuple[int, int, None, int]
)


def _wake(waiter: asyncio.Future[bool], value: bool) -> None:
    if not waiter.done():
        waiter.set_result(value)


def _socket_readable(sock: Any) -> bool:
    """Whether a recv() would return at once (bytes or EOF); a socket that is
    gone counts as readable, as in httpcore's own backends."""
    fd = -1 if sock is None else sock.fileno()
    if fd < 0:
        return True
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(0))


def _reason(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


class AsyncioStream(asyncio.Protocol, httpcore.AsyncNetworkStream):
    """One connection: the protocol the transport feeds and the stream httpcore reads."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._transport: asyncio.Transport | None = None
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._eof = False
        self._lost = False
        self._error: BaseException | None = None  # why the connection was lost
        self._closed = False  # by aclose
        self._reading_paused = False
        self._writing_paused = False
        # a waiter's result: True when woken by the connection, False by its timer
        self._read_waiter: asyncio.Future[bool] | None = None
        self._drain_waiter: asyncio.Future[bool] | None = None

    # -- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self._chunks.append(data)
        self._buffered += len(data)
        waiter = self._read_waiter
        if waiter is not None:
            self._read_waiter = None
            _wake(waiter, True)
        if self._buffered > HIGH_WATER and not self._reading_paused:
            self._reading_paused = True
            assert self._transport is not None
            self._transport.pause_reading()

    def eof_received(self) -> None:
        # returning None lets the transport close: HTTP never half-closes
        self._eof = True
        self._wake_all()

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        self._error = exc
        self._writing_paused = False
        self._wake_all()

    def pause_writing(self) -> None:
        self._writing_paused = True

    def resume_writing(self) -> None:
        self._writing_paused = False
        waiter = self._drain_waiter
        if waiter is not None:
            self._drain_waiter = None
            _wake(waiter, True)

    def _wake_all(self) -> None:
        for waiter in (self._read_waiter, self._drain_waiter):
            if waiter is not None:
                _wake(waiter, True)
        self._read_waiter = self._drain_waiter = None

    # -- httpcore.AsyncNetworkStream

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        chunks = self._chunks
        while not chunks:
            if self._closed:
                raise httpcore.ReadError("the stream is closed")
            if self._eof:
                return b""
            if self._lost:
                if self._error is None:
                    return b""
                raise httpcore.ReadError(_reason(self._error)) from self._error
            waiter = self._read_waiter = self._loop.create_future()
            try:
                woken = await self._woken_within(waiter, timeout)
            finally:
                self._read_waiter = None
            if not woken and not (chunks or self._eof or self._lost or self._closed):
                raise httpcore.ReadTimeout(f"nothing to read for {timeout} s")
        data = chunks.popleft()
        if chunks and len(data) < max_bytes:
            parts = [data]
            size = len(data)
            while chunks and size < max_bytes:
                part = chunks.popleft()
                parts.append(part)
                size += len(part)
            data = b"".join(parts)
        if len(data) > max_bytes:
            chunks.appendleft(data[max_bytes:])
            data = data[:max_bytes]
        self._buffered -= len(data)
        if self._reading_paused and self._buffered <= LOW_WATER:
            self._reading_paused = False
            if self._transport is not None and not self._lost:
                self._transport.resume_reading()
        return data

    async def _woken_within(self, waiter: asyncio.Future[bool], timeout: float | None) -> bool:
        """Await ``waiter``; False if ``timeout`` passed first (one timer, no task)."""
        timer = None if timeout is None else self._loop.call_later(timeout, _wake, waiter, False)
        try:
            return await waiter
        finally:
            if timer is not None:
                timer.cancel()

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        if not buffer:
            return
        transport = self._transport
        if self._closed or self._lost or transport is None or transport.is_closing():
            raise httpcore.WriteError(self._why_unwritable())
        transport.write(buffer)
        while self._writing_paused:
            waiter = self._drain_waiter = self._loop.create_future()
            try:
                woken = await self._woken_within(waiter, timeout)
            finally:
                self._drain_waiter = None
            if self._closed or self._lost:
                raise httpcore.WriteError(self._why_unwritable())
            if not woken:
                raise httpcore.WriteTimeout(f"could not write for {timeout} s")

    def _why_unwritable(self) -> str:
        if self._error is not None:
            return _reason(self._error)
        return "the stream is closed" if self._closed else "the peer closed the connection"

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._transport is not None:
            self._transport.abort()
        self._wake_all()

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.AsyncNetworkStream:
        transport = self._transport
        assert transport is not None
        try:
            async with asyncio.timeout(timeout):
                tls = await self._loop.start_tls(
                    transport, self, ssl_context, server_hostname=server_hostname
                )
        except TimeoutError as exc:
            await self.aclose()
            raise httpcore.ConnectTimeout(f"TLS handshake took over {timeout} s") from exc
        except OSError as exc:  # ssl.SSLError included
            await self.aclose()
            raise httpcore.ConnectError(_reason(exc)) from exc
        if tls is None:  # the connection went while shaking hands
            await self.aclose()
            raise httpcore.ConnectError("the connection closed during the TLS handshake")
        self._transport = cast(asyncio.Transport, tls)
        return self

    def get_extra_info(self, info: str) -> Any:
        if info == "is_readable":
            # readable while idle means the server closed or misbehaved: httpcore
            # then drops the pooled connection instead of sending on it
            if self._chunks or self._eof or self._lost or self._closed:
                return True
            return _socket_readable(self._extra("socket"))
        if info == "ssl_object":
            return self._extra("ssl_object")
        if info == "client_addr":
            return self._extra("sockname")
        if info == "server_addr":
            return self._extra("peername")
        if info == "socket":
            return self._extra("socket")
        return None

    def _extra(self, name: str) -> Any:
        return None if self._transport is None else self._transport.get_extra_info(name)


def _apply(stream: AsyncioStream, socket_options: Iterable[SocketOption] | None) -> None:
    if not socket_options:
        return
    sock = stream.get_extra_info("socket")
    for option in socket_options:
        sock.setsockopt(*option)


class AsyncioNetworkBackend(httpcore.AsyncNetworkBackend):
    """Connections as :class:`AsyncioStream` on the running loop (asyncio or uvloop)."""

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[SocketOption] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        loop = asyncio.get_running_loop()
        stream = AsyncioStream(loop)
        try:
            async with asyncio.timeout(timeout):
                await loop.create_connection(
                    lambda: stream,
                    host,
                    port,
                    local_addr=None if local_address is None else (local_address, 0),
                )
            _apply(stream, socket_options)
        except TimeoutError as exc:  # before OSError: TimeoutError is one
            await stream.aclose()
            raise httpcore.ConnectTimeout(f"connecting took over {timeout} s") from exc
        except OSError as exc:
            await stream.aclose()
            raise httpcore.ConnectError(_reason(exc)) from exc
        return stream

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[SocketOption] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        loop = asyncio.get_running_loop()
        stream = AsyncioStream(loop)
        try:
            async with asyncio.timeout(timeout):
                await loop.create_unix_connection(lambda: stream, path)
            _apply(stream, socket_options)
        except TimeoutError as exc:
            await stream.aclose()
            raise httpcore.ConnectTimeout(f"connecting took over {timeout} s") from exc
        except OSError as exc:
            await stream.aclose()
            raise httpcore.ConnectError(_reason(exc)) from exc
        return stream

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)
