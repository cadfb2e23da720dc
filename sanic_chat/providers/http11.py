"""One HTTP/1.1 client connection: an :class:`asyncio.Protocol` whose responses
are parsed by httptools (llhttp, the parser of Node.js; Sanic's own dependency).

Contained infrastructure (architecture rule 7), used only through
:class:`~.pool.ConnectionPool` and switchable off in one place
(``SANIC_CHAT_UPSTREAM_HTTP=httpx``, see :mod:`.upstream`):

* Works around: httpcore's per-chunk cost on streamed reads. A streamed reply
  is a hundred small chunks, and each went through h11's pure-Python state
  machine, httpcore's connection (its anyio lock and ``is_readable`` checks:
  https://github.com/encode/httpx/issues/3215), a network-stream read with its
  own timeout, and three async iterator layers. Here a chunk is parsed in C as
  it arrives and a waiting reader is woken once; what arrived meanwhile is
  handed over joined.
* Justified by: ``python -m benchmarks.upstream_cost --streams 200 --tokens 100
  --tps 50 --repeat 3 --shared --transports lean,anyio`` (client CPU per chunk,
  ``lean`` = this stack, ``anyio`` = httpx's own), the "upstream reads" row of
  the second pass in ``benchmarks/RESULTS.md``.
* Delete when: httpx's own transport (``anyio`` on that benchmark) costs within
  20 % of ``lean`` per chunk (whole pass and marginal chunk), or when this file
  needs HTTP/2 or proxy support (httpx's own has both): then delete it with
  pool.py and make ``httpx`` the only stack.

Invariants:

* One request at a time. A connection is *reusable* only when its last response
  was read to the end, both sides allow keep-alive, and the peer has not closed
  it: anything else (a response closed early, cancelled, cut, malformed) closes
  the connection.
* Body bytes are kept in arrival order; while more than ``_HIGH_WATER`` bytes
  wait unread, the socket is not read, so a slow consumer holds the upstream
  back at TCP instead of growing memory.
* A read waits at most ``read_timeout`` s for bytes (``httpx.ReadTimeout``),
  timed by one timer per connection that is re-armed lazily: bytes arriving do
  not touch it.
* Errors are httpx's own transport errors: ``ConnectError``/``ConnectTimeout``
  on opening, ``WriteError``/``WriteTimeout`` on sending, ``ReadTimeout``,
  ``ReadError`` (reset) and ``RemoteProtocolError`` (closed early, malformed).
* ``answered`` tells whether a byte of the current response arrived: a request
  that failed on a reused connection with none is safe to send again.
"""

from __future__ import annotations

import asyncio
import collections
import socket
import ssl
from collections.abc import AsyncIterable
from typing import cast

import httptools
import httpx

__all__ = ["Http11Connection", "ResponseHead"]

#: unread body bytes above which the socket stops being read, and below which it resumes
_HIGH_WATER = 256 * 1024
_LOW_WATER = 64 * 1024

ResponseHead = tuple[int, bytes, list[tuple[bytes, bytes]]]  # status, reason, headers


class Http11Connection(asyncio.Protocol):
    """A client connection; see the module's invariants."""

    # states of the current exchange
    _IDLE, _SENDING, _HEAD, _BODY, _DONE = range(5)

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._state = self._IDLE
        self._closed = False  # the socket is gone (or going): never reusable
        self._error: Exception | None = None  # what ends the current exchange
        self._keep_alive = True
        self._paused_reading = False
        self._write_ready: asyncio.Future[None] | None = None
        # the response being received
        self.answered = False
        self._status = 0
        self._reason = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._head_done = False
        self._message_done = False
        self._body: collections.deque[bytes] = collections.deque()
        self._buffered = 0
        self._framed = False  # the body has a length or is chunked (else it ends at EOF)
        self._head_only = False  # a HEAD request: no body follows the head
        # the one pending read, and its timer
        self._waiter: asyncio.Future[None] | None = None
        self._deadline = 0.0
        self._timer: asyncio.TimerHandle | None = None

    # ------------------------------------------------------------------ opening

    @classmethod
    async def open(
        cls,
        host: str,
        port: int,
        *,
        ssl_context: ssl.SSLContext | None = None,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> Http11Connection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                _, protocol = await loop.create_connection(
                    lambda: cls(loop),
                    host,
                    port,
                    ssl=ssl_context,
                    server_hostname=(server_hostname or host) if ssl_context else None,
                )
        except TimeoutError:
            raise httpx.ConnectTimeout(
                f"no connection to {host}:{port} within {timeout} s"
            ) from None
        except (OSError, ssl.SSLError) as exc:
            raise httpx.ConnectError(f"cannot connect to {host}:{port}: {exc}") from None
        return protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            # a request is one write; never hold it back for an ACK
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    # ------------------------------------------------------------------ what the pool asks

    def is_reusable(self) -> bool:
        """Idle after a response read to its end, and still open."""
        return self._state == self._IDLE and not self._closed and self._keep_alive

    def get_extra_info(self, name: str, default: object = None) -> object:
        """The socket's details, as httpx's ``network_stream`` extension offers
        (``"socket"``, ``"peername"``, ``"ssl_object"``, ...)."""
        if self._transport is None:
            return default
        return self._transport.get_extra_info(name, default)

    def close(self) -> None:
        """Drop the connection now (never waits, so cancellation cannot interrupt it)."""
        self._closed = True
        self._state = self._DONE
        transport = self._transport
        if transport is not None:
            transport.abort()
        self._fail(httpx.ReadError("the connection was closed"))

    # ------------------------------------------------------------------ one exchange

    async def request(
        self,
        method: bytes,
        target: bytes,
        headers: list[tuple[bytes, bytes]],
        body: bytes | AsyncIterable[bytes],
        *,
        read_timeout: float | None,
        write_timeout: float | None,
    ) -> ResponseHead:
        """Send a request and wait for the head of its response."""
        if not self.is_reusable():
            raise httpx.RemoteProtocolError("the connection is not available")
        self._state = self._SENDING
        self._reset_response()
        self._head_only = method == b"HEAD"
        for name, value in headers:
            if name.lower() == b"connection" and value.lower() == b"close":
                self._keep_alive = False
        head = [method, b" ", target, b" HTTP/1.1\r\n"]
        for name, value in headers:
            head += (name, b": ", value, b"\r\n")
        head.append(b"\r\n")
        if isinstance(body, bytes):
            await self._write(b"".join(head) + body, write_timeout)
        else:
            await self._write(b"".join(head), write_timeout)
            chunked = any(
                n.lower() == b"transfer-encoding" and b"chunked" in v.lower() for n, v in headers
            )
            async for part in body:
                if part:
                    await self._write(
                        b"%x\r\n%b\r\n" % (len(part), part) if chunked else part, write_timeout
                    )
            if chunked:
                await self._write(b"0\r\n\r\n", write_timeout)
        if self._state == self._SENDING:
            self._state = self._HEAD
        while not self._head_done:
            await self._wait(read_timeout)
        return self._status, self._reason, self._headers

    async def read(self, read_timeout: float | None) -> bytes:
        """The body bytes that arrived since the last read (joined), waiting for
        some if none did; ``b""`` once the body ended."""
        body = self._body
        while not body:
            if self._message_done:
                return b""
            await self._wait(read_timeout)
        data = body.popleft() if len(body) == 1 else b"".join(body)
        body.clear()
        self._buffered = 0
        if self._paused_reading and self._transport is not None and not self._closed:
            self._paused_reading = False
            self._transport.resume_reading()
        return data

    def finish(self) -> None:
        """The response is done with: idle for the next request if it was read to
        its end and may be kept alive, else closed."""
        if self._message_done and self._keep_alive and not self._closed and not self._body:
            self._state = self._IDLE
            self._error = None
        else:
            self.close()

    # ------------------------------------------------------------------ waiting

    async def _wait(self, timeout: float | None) -> None:
        """Until the protocol has news for the reader (or the read timed out)."""
        if self._error is not None:
            raise self._error
        waiter = self._waiter = self._loop.create_future()
        if timeout is not None:
            deadline = self._deadline = self._loop.time() + timeout
            timer = self._timer
            if timer is not None and timer.when() > deadline:
                timer.cancel()
                timer = None
            if timer is None:
                self._timer = self._loop.call_at(deadline, self._on_timer)
        elif self._timer is not None:
            # armed for an earlier wait's deadline: this one has none
            self._timer.cancel()
            self._timer = None
        try:
            await waiter
        finally:
            self._waiter = None
        if self._error is not None:
            raise self._error

    def _on_timer(self) -> None:
        # One timer per connection: a later deadline re-arms it rather than
        # every wait cancelling and making one.
        self._timer = None
        waiter = self._waiter
        if waiter is None or waiter.done():
            return
        now = self._loop.time()
        if now < self._deadline:
            self._timer = self._loop.call_at(self._deadline, self._on_timer)
            return
        self._keep_alive = False  # a half-read response cannot be resumed
        waiter.set_exception(httpx.ReadTimeout("no bytes from the server within the timeout"))

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _fail(self, error: Exception) -> None:
        """End the current exchange with ``error`` (the first one stays)."""
        if self._error is None:
            self._error = error
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(self._error)

    # ------------------------------------------------------------------ writing

    async def _write(self, data: bytes, timeout: float | None) -> None:
        transport = self._transport
        if self._closed or transport is None or transport.is_closing():
            raise httpx.WriteError("the connection is closed")
        transport.write(data)
        if self._write_ready is not None:
            try:
                async with asyncio.timeout(timeout):
                    await asyncio.shield(self._write_ready)
            except TimeoutError:
                self.close()
                raise httpx.WriteTimeout("the server did not take the request in time") from None

    def pause_writing(self) -> None:
        self._write_ready = self._loop.create_future()

    def resume_writing(self) -> None:
        ready, self._write_ready = self._write_ready, None
        if ready is not None and not ready.done():
            ready.set_result(None)

    # ------------------------------------------------------------------ receiving

    def _reset_response(self) -> None:
        self.answered = False
        self._status = 0
        self._reason = b""
        self._headers = []
        self._head_done = False
        self._message_done = False
        self._framed = False
        self._error = None

    def data_received(self, data: bytes) -> None:
        if self._state in (self._IDLE, self._DONE):
            # bytes nobody asked for: the connection cannot be trusted any more
            self.close()
            return
        self.answered = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._keep_alive = False
            if not self._message_done:  # else only bytes after the response: it stands
                self._fail(httpx.RemoteProtocolError(f"malformed response: {exc}"))
            self._closed = True
            if self._transport is not None:
                self._transport.abort()
            return
        if self._buffered > _HIGH_WATER and not self._paused_reading and self._transport:
            self._paused_reading = True
            self._transport.pause_reading()

    def eof_received(self) -> bool | None:
        self._closed = True
        if self._head_done and not self._framed and not self._message_done:
            # a body without length or chunking ends where the connection does
            self._keep_alive = False
            self._message_done = True
            self._wake()
        return None  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        resume, self._write_ready = self._write_ready, None
        if resume is not None and not resume.done():
            resume.set_exception(httpx.WriteError("the connection was closed"))
            resume.exception()  # retrieved: the writer may be gone
        if self._state in (self._IDLE, self._DONE) or self._message_done:
            return
        if exc is not None:
            self._fail(httpx.ReadError(f"the connection broke: {exc}"))
        elif not self.answered:
            self._fail(
                httpx.RemoteProtocolError("the server closed the connection without answering")
            )
        else:
            self._fail(
                httpx.RemoteProtocolError(
                    "the server closed the connection before the response ended"
                )
            )

    # httptools callbacks (called from feed_data)

    def on_message_begin(self) -> None:
        if self._message_done:
            # a second response to one request: stop the parser before it
            # mixes that into this one (data_received closes the connection)
            raise httptools.HttpParserError("bytes after the end of the response")

    def on_status(self, reason: bytes) -> None:
        self._reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if 100 <= status < 200 and status != 101:
            # an interim response: the real one follows
            self._headers = []
            self._reason = b""
            return
        self._status = status
        self._keep_alive = self._keep_alive and self._parser.should_keep_alive()
        self._framed = any(
            name.lower() in (b"content-length", b"transfer-encoding") for name, _ in self._headers
        ) or status in (204, 304)
        self._head_done = True
        if self._head_only:
            # llhttp cannot know the request was HEAD: it would wait for a body
            self._keep_alive = False
            self._message_done = True
        self._state = self._BODY
        self._wake()

    def on_body(self, body: bytes) -> None:
        if self._head_only:
            return
        self._body.append(body)
        self._buffered += len(body)
        self._wake()

    def on_message_complete(self) -> None:
        if not self._head_done:
            return  # the end of an interim response
        self._message_done = True
        self._wake()
