"""An httpx transport that pools HTTP/1.1 connections per origin at O(1) per
request, on :class:`~sanic_chat.providers.network.AsyncioNetworkBackend`.

httpcore 1.0's pool re-examines every connection against every queued request
at each request's start and end (encode/httpcore#1000): with hundreds of
streaming replies on one upstream that cost more CPU than the replies did.

Invariants:

* Per origin, ``opened`` counts the connections that are open, being opened, or
  promised to a waiter; it never exceeds ``max_connections``. Every acquired
  slot is given back exactly once: by returning the connection to the idle
  list, by handing it (or the slot) to the first waiter, or by closing it.
* Idle connections are a LIFO deque (the warmest on the right); at most
  ``max_keepalive`` of them, the coldest closed first. A connection is idle
  only after httpcore marked its response complete (both h11 sides DONE), so a
  half-read, cut or cancelled response never goes back: its connection closes.
* An idle connection is reused only if it has not expired and its socket is
  not readable (readable while idle means the server closed it).
* A request that fails on a reused connection before any response byte (the
  server closed it as we sent) is sent once more on a new connection, if its
  body can be sent again.
* Waiters for a slot are served first come, first served; one that gives up
  (pool timeout, cancellation) passes on whatever it was handed meanwhile.
* Closing a connection never waits: the backend's ``aclose`` aborts the socket,
  so cancellation cannot interrupt it halfway.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections import deque
from collections.abc import AsyncIterator
from typing import Any

import h11
import httpcore
import httpx

from .network import AsyncioNetworkBackend

__all__ = ["ConnectionPool"]

_DEFAULT_PORTS = {b"http": 80, b"https": 443}

#: httpcore's errors as httpx's (what httpx's own transport raises)
_ERRORS: dict[type[Exception], type[httpx.TransportError]] = {
    httpcore.ConnectTimeout: httpx.ConnectTimeout,
    httpcore.ReadTimeout: httpx.ReadTimeout,
    httpcore.WriteTimeout: httpx.WriteTimeout,
    httpcore.PoolTimeout: httpx.PoolTimeout,
    httpcore.TimeoutException: httpx.TimeoutException,
    httpcore.ConnectError: httpx.ConnectError,
    httpcore.ReadError: httpx.ReadError,
    httpcore.WriteError: httpx.WriteError,
    httpcore.NetworkError: httpx.NetworkError,
    httpcore.ProxyError: httpx.ProxyError,
    httpcore.UnsupportedProtocol: httpx.UnsupportedProtocol,
    httpcore.LocalProtocolError: httpx.LocalProtocolError,
    httpcore.RemoteProtocolError: httpx.RemoteProtocolError,
    httpcore.ProtocolError: httpx.ProtocolError,
}
_HTTPCORE_ERRORS = tuple(_ERRORS)
#: how a reused connection the server had closed fails
_STALE_ERRORS = (
    httpcore.RemoteProtocolError,
    httpcore.ReadError,
    httpcore.WriteError,
    httpcore.ConnectionNotAvailable,
)


def _translate(exc: Exception) -> httpx.TransportError:
    for kind in type(exc).__mro__:
        mapped = _ERRORS.get(kind)
        if mapped is not None:
            return mapped(str(exc))
    return httpx.TransportError(str(exc))


def _usable(connection: httpcore.AsyncHTTP11Connection) -> bool:
    """Idle, and the server has not closed it (its socket is not readable)."""
    return connection.is_available() and not connection.has_expired()


def _unanswered(connection: httpcore.AsyncHTTP11Connection) -> bool:
    """Whether not one byte of a response arrived on ``connection``."""
    state: h11.Connection = connection._h11_state  # no public view of this
    return state.their_state is h11.SEND_RESPONSE and not state.trailing_data[0]


Slot = httpcore.AsyncHTTP11Connection | None  # what a waiter is handed: None is a fresh slot


class _Origin:
    """The connections to one (scheme, host, port)."""

    __slots__ = (
        "connections",
        "expiry",
        "idle",
        "max_connections",
        "max_keepalive",
        "opened",
        "waiters",
    )

    def __init__(self, max_connections: int, max_keepalive: int, expiry: float) -> None:
        self.max_connections = max_connections
        self.max_keepalive = max_keepalive
        self.expiry = expiry
        self.opened = 0
        #: (connection, idle until), the warmest on the right
        self.idle: deque[tuple[httpcore.AsyncHTTP11Connection, float]] = deque()
        self.waiters: deque[asyncio.Future[Slot]] = deque()
        self.connections: set[httpcore.AsyncHTTP11Connection] = set()

    async def acquire(self, timeout: float | None, *, reuse: bool = True) -> Slot:
        """A reusable idle connection (only if ``reuse``), or None: a slot to
        open a new one in."""
        idle = self.idle
        now = time.monotonic()
        while reuse and idle:
            connection, until = idle.pop()
            if until > now and _usable(connection):
                return connection
            await self.discard(connection)
        if self.opened < self.max_connections:
            self.opened += 1
            return None
        waiter: asyncio.Future[Slot] = asyncio.get_running_loop().create_future()
        self.waiters.append(waiter)
        try:
            async with asyncio.timeout(timeout):
                slot = await waiter
        except BaseException as exc:
            if waiter.done() and not waiter.cancelled():
                # handed a slot as we gave up: pass it on
                await self.release(waiter.result())
            else:
                waiter.cancel()
            if isinstance(exc, TimeoutError):
                raise httpx.PoolTimeout(f"no free connection within {timeout} s") from None
            raise
        if slot is not None and not (reuse and _usable(slot)):
            # keep the slot, open a new connection in it
            self.connections.discard(slot)
            await slot.aclose()
            return None
        return slot

    def _hand_over(self, slot: Slot) -> bool:
        """Give ``slot`` to the first live waiter; False if none waits."""
        waiters = self.waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(slot)
                return True
        return False

    async def release(self, connection: Slot) -> None:
        """Give back what :meth:`acquire` gave: idle if reusable, else closed."""
        if connection is None:
            if not self._hand_over(None):
                self.opened -= 1
            return
        if not connection.is_idle():
            await self.discard(connection)
            return
        if self._hand_over(connection):
            return
        idle = self.idle
        idle.append((connection, time.monotonic() + self.expiry))
        if len(idle) > self.max_keepalive:
            await self.discard(idle.popleft()[0])
        if idle and idle[0][1] <= time.monotonic():
            await self.discard(idle.popleft()[0])  # one at a time: O(1) per release

    async def discard(self, connection: httpcore.AsyncHTTP11Connection) -> None:
        """Close ``connection`` and free its slot (for the first waiter, if any)."""
        self.connections.discard(connection)
        if not self._hand_over(None):
            self.opened -= 1
        await connection.aclose()

    async def aclose(self) -> None:
        for waiter in self.waiters:
            waiter.cancel()
        self.waiters.clear()
        self.idle.clear()
        connections, self.connections = list(self.connections), set()
        for connection in connections:
            await connection.aclose()


class _Body(httpx.AsyncByteStream):
    """A response body; closing it gives its connection back to the pool."""

    __slots__ = ("_body", "_connection", "_done", "_origin", "_pool")

    def __init__(
        self,
        pool: ConnectionPool,
        origin: _Origin,
        connection: httpcore.AsyncHTTP11Connection,
        body: Any,
    ) -> None:
        self._pool = pool
        self._origin = origin
        self._connection = connection
        self._body = body
        self._done = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for part in self._body:
                yield part
        except _HTTPCORE_ERRORS as exc:
            raise _translate(exc) from exc

    async def aclose(self) -> None:
        if self._done:
            return
        self._done = True
        connection = self._connection
        try:
            # httpcore marks the connection idle if the response ended, else closes it
            await self._body.aclose()
        except BaseException:
            await self._origin.discard(connection)
            raise
        if self._pool.closed:
            await self._origin.discard(connection)
        else:
            await self._origin.release(connection)


class ConnectionPool(httpx.AsyncBaseTransport):
    """HTTP/1.1 connections per origin, one request at a time each, reused LIFO."""

    def __init__(
        self,
        *,
        ssl_context: ssl.SSLContext | None = None,
        max_connections: int = 1000,
        max_keepalive: int = 200,
        keepalive_expiry: float = 30.0,
        network_backend: httpcore.AsyncNetworkBackend | None = None,
    ) -> None:
        self.max_connections = max_connections
        self.max_keepalive = max_keepalive
        self.keepalive_expiry = keepalive_expiry
        self.closed = False
        self._ssl_context = ssl_context
        self._backend = network_backend or AsyncioNetworkBackend()
        self._origins: dict[tuple[bytes, bytes, int], _Origin] = {}

    @classmethod
    def from_limits(
        cls, limits: httpx.Limits, ssl_context: ssl.SSLContext | None = None
    ) -> ConnectionPool:
        return cls(
            ssl_context=ssl_context,
            max_connections=limits.max_connections or 1_000_000,
            max_keepalive=(
                limits.max_keepalive_connections
                if limits.max_keepalive_connections is not None
                else 1_000_000
            ),
            keepalive_expiry=(
                limits.keepalive_expiry if limits.keepalive_expiry is not None else float("inf")
            ),
        )

    def connections(self) -> int:
        """Open connections (idle or busy) to every origin."""
        return sum(len(origin.connections) for origin in self._origins.values())

    def idle_connections(self) -> int:
        return sum(len(origin.idle) for origin in self._origins.values())

    def _origin(self, key: tuple[bytes, bytes, int]) -> _Origin:
        origin = self._origins.get(key)
        if origin is None:
            origin = self._origins[key] = _Origin(
                self.max_connections, self.max_keepalive, self.keepalive_expiry
            )
        return origin

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self.closed:
            raise RuntimeError("the connection pool is closed")
        url = request.url
        scheme = url.raw_scheme
        default_port = _DEFAULT_PORTS.get(scheme)
        if default_port is None:
            raise httpx.UnsupportedProtocol(f"unsupported URL scheme {scheme!r}")
        port = url.port or default_port
        origin = self._origin((scheme, url.raw_host, port))
        assert isinstance(request.stream, httpx.AsyncByteStream)
        core_request = httpcore.Request(
            method=request.method,
            url=httpcore.URL(scheme=scheme, host=url.raw_host, port=port, target=url.raw_path),
            headers=request.headers.raw,
            content=request.stream,
            extensions=request.extensions,
        )
        timeouts = request.extensions.get("timeout", {})
        # a body that is bytes can be sent again; a streamed one cannot
        replayable = isinstance(request.stream, httpx.ByteStream)
        retried = False
        while True:
            connection = await origin.acquire(timeouts.get("pool"), reuse=not retried)
            reused = connection is not None
            if connection is None:
                try:
                    connection = await self._connect(core_request, timeouts.get("connect"))
                except BaseException as exc:
                    await origin.release(None)
                    if isinstance(exc, _HTTPCORE_ERRORS):
                        raise _translate(exc) from exc
                    raise
                origin.connections.add(connection)
            try:
                response = await connection.handle_async_request(core_request)
            except BaseException as exc:
                stale = reused and isinstance(exc, _STALE_ERRORS) and _unanswered(connection)
                await origin.discard(connection)
                if stale and replayable and not retried:
                    retried = True  # once, on a new connection
                    continue
                if isinstance(exc, _HTTPCORE_ERRORS):
                    raise _translate(exc) from exc
                raise
            return httpx.Response(
                status_code=response.status,
                headers=response.headers,
                stream=_Body(self, origin, connection, response.stream),
                extensions=response.extensions,
            )

    async def _connect(
        self, request: httpcore.Request, timeout: float | None
    ) -> httpcore.AsyncHTTP11Connection:
        url = request.url
        host = url.host.decode("ascii")
        stream = await self._backend.connect_tcp(host, url.port or 80, timeout=timeout)
        try:
            if url.scheme == b"https":
                sni = request.extensions.get("sni_hostname") or host
                stream = await stream.start_tls(self._tls(), server_hostname=sni, timeout=timeout)
        except BaseException:
            await stream.aclose()
            raise
        # no keepalive_expiry here: the pool times idleness itself
        return httpcore.AsyncHTTP11Connection(origin=url.origin, stream=stream)

    def _tls(self) -> ssl.SSLContext:
        if self._ssl_context is None:
            self._ssl_context = httpx.create_ssl_context()  # slow: only once needed
        self._ssl_context.set_alpn_protocols(["http/1.1"])
        return self._ssl_context

    async def aclose(self) -> None:
        self.closed = True
        origins, self._origins = list(self._origins.values()), {}
        for origin in origins:
            await origin.aclose()
