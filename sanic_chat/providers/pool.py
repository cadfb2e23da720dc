"""An httpx transport that pools HTTP/1.1 connections per origin at O(1) per
request, each a :class:`~sanic_chat.providers.http11.Http11Connection`.

Contained infrastructure (architecture rule 7): the ``pool`` stack of
:mod:`.upstream`, built only there; ``SANIC_CHAT_UPSTREAM_HTTP=httpx`` (or a
proxy in the environment: this pool speaks to origins only) uses httpx's own.

* Works around: httpcore 1.0's pool re-examines every connection against every
  queued request at each request's start and end (``_assign_requests_to_connections``,
  O(connections x requests): https://github.com/encode/httpcore/pull/1035, open;
  an earlier fix, https://github.com/encode/httpcore/pull/929, closed as
  wontfix; reported in https://github.com/encode/httpx/issues/3215): with
  hundreds of streaming replies on one upstream that cost more CPU than the
  replies did.
* Justified by: ``python -m benchmarks.upstream_cost --streams 200 --tokens 100
  --tps 50 --repeat 3 --shared --transports lean,anyio`` (``--shared``: every
  stream on one pool, as a server under load has), the "upstream reads" row of
  the second pass in ``benchmarks/RESULTS.md``.
* Delete when: httpcore's pool is O(1) per request (a fix like #1035
  released) and httpx's own transport is within 20 % of this one per request on
  that benchmark; delete it with http11.py (see there).

Invariants:

* Per origin, ``opened`` counts the connections that are open, being opened, or
  promised to a waiter; it never exceeds ``max_connections``. Every acquired
  slot is given back exactly once: by returning the connection to the idle
  list, by handing it (or the slot) to the first waiter, or by closing it.
* Idle connections are a LIFO deque (the warmest on the right); at most
  ``max_keepalive`` of them, the coldest closed first. A connection is idle
  only after its response was read to the end with keep-alive on both sides,
  so a half-read, cut or cancelled response never goes back: it closes.
* An idle connection is reused only if it has not expired and the server has
  not closed it.
* A request that fails on a reused connection before any response byte (the
  server closed it as we sent) is sent once more on a new connection, if its
  body can be sent again.
* Waiters for a slot are served first come, first served; one that gives up
  (pool timeout, cancellation) passes on whatever it was handed meanwhile.
* Closing a connection never waits (it aborts the socket), so cancellation
  cannot interrupt it halfway.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator

import httpx

from .http11 import Http11Connection

__all__ = ["ConnectionPool"]

_DEFAULT_PORTS = {b"http": 80, b"https": 443}

#: how a reused connection the server had closed fails
_STALE_ERRORS = (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError)

Slot = Http11Connection | None  # what a waiter is handed: None is a fresh slot


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
        self.idle: deque[tuple[Http11Connection, float]] = deque()
        self.waiters: deque[asyncio.Future[Slot]] = deque()
        self.connections: set[Http11Connection] = set()

    async def acquire(self, timeout: float | None, *, reuse: bool = True) -> Slot:
        """A reusable idle connection (only if ``reuse``), or None: a slot to
        open a new one in."""
        idle = self.idle
        now = time.monotonic()
        while reuse and idle:
            connection, until = idle.pop()
            if until > now and connection.is_reusable():
                return connection
            self.discard(connection)
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
                self.release(waiter.result())
            else:
                waiter.cancel()
            if isinstance(exc, TimeoutError):
                raise httpx.PoolTimeout(f"no free connection within {timeout} s") from None
            raise
        if slot is not None and not (reuse and slot.is_reusable()):
            # keep the slot, open a new connection in it
            self.connections.discard(slot)
            slot.close()
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

    def release(self, connection: Slot) -> None:
        """Give back what :meth:`acquire` gave: idle if reusable, else closed."""
        if connection is None:
            if not self._hand_over(None):
                self.opened -= 1
            return
        if not connection.is_reusable():
            self.discard(connection)
            return
        if self._hand_over(connection):
            return
        idle = self.idle
        idle.append((connection, time.monotonic() + self.expiry))
        if len(idle) > self.max_keepalive:
            self.discard(idle.popleft()[0])
        if idle and idle[0][1] <= time.monotonic():
            self.discard(idle.popleft()[0])  # one at a time: O(1) per release

    def discard(self, connection: Http11Connection) -> None:
        """Close ``connection`` and free its slot (for the first waiter, if any)."""
        self.connections.discard(connection)
        if not self._hand_over(None):
            self.opened -= 1
        connection.close()

    def aclose(self) -> None:
        for waiter in self.waiters:
            waiter.cancel()
        self.waiters.clear()
        self.idle.clear()
        connections, self.connections = list(self.connections), set()
        for connection in connections:
            connection.close()


class _Body(httpx.AsyncByteStream):
    """A response body; closing it gives its connection back to the pool."""

    __slots__ = ("_connection", "_done", "_origin", "_pool", "_timeout")

    def __init__(
        self,
        pool: ConnectionPool,
        origin: _Origin,
        connection: Http11Connection,
        timeout: float | None,
    ) -> None:
        self._pool = pool
        self._origin = origin
        self._connection = connection
        self._timeout = timeout
        self._done = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        read, timeout = self._connection.read, self._timeout
        while data := await read(timeout):
            yield data

    async def aclose(self) -> None:
        if self._done:
            return
        self._done = True
        connection = self._connection
        connection.finish()
        if self._pool.closed:
            self._origin.discard(connection)
        else:
            self._origin.release(connection)


class ConnectionPool(httpx.AsyncBaseTransport):
    """HTTP/1.1 connections per origin, one request at a time each, reused LIFO."""

    def __init__(
        self,
        *,
        ssl_context: ssl.SSLContext | None = None,
        max_connections: int = 1000,
        max_keepalive: int = 200,
        keepalive_expiry: float = 30.0,
    ) -> None:
        self.max_connections = max_connections
        self.max_keepalive = max_keepalive
        self.keepalive_expiry = keepalive_expiry
        self.closed = False
        self._ssl_context = ssl_context
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
        timeouts = request.extensions.get("timeout", {})
        read_timeout = timeouts.get("read")
        # a body that is bytes can be sent again; a streamed one cannot
        body: bytes | AsyncIterable[bytes]
        if isinstance(request.stream, httpx.ByteStream):
            body, replayable = request.content, True
        else:
            assert isinstance(request.stream, httpx.AsyncByteStream)
            body, replayable = request.stream, False
        retried = False
        while True:
            connection = await origin.acquire(timeouts.get("pool"), reuse=not retried)
            reused = connection is not None
            if connection is None:
                try:
                    connection = await self._connect(request, scheme, port, timeouts.get("connect"))
                except BaseException:
                    origin.release(None)
                    raise
                origin.connections.add(connection)
            try:
                status, reason, headers = await connection.request(
                    request.method.encode("ascii"),
                    url.raw_path,
                    request.headers.raw,
                    body,
                    read_timeout=read_timeout,
                    write_timeout=timeouts.get("write"),
                )
            except BaseException as exc:
                stale = reused and isinstance(exc, _STALE_ERRORS) and not connection.answered
                origin.discard(connection)
                if stale and replayable and not retried:
                    retried = True  # once, on a new connection
                    continue
                raise
            return httpx.Response(
                status_code=status,
                headers=headers,
                stream=_Body(self, origin, connection, read_timeout),
                extensions={
                    "http_version": b"HTTP/1.1",
                    "reason_phrase": reason,
                    "network_stream": connection,  # as httpx's own: get_extra_info()
                },
            )

    async def _connect(
        self, request: httpx.Request, scheme: bytes, port: int, timeout: float | None
    ) -> Http11Connection:
        host = request.url.host
        tls = None
        sni = None
        if scheme == b"https":
            tls = self._tls()
            sni = request.extensions.get("sni_hostname") or host
        return await Http11Connection.open(
            host, port, ssl_context=tls, server_hostname=sni, timeout=timeout
        )

    def _tls(self) -> ssl.SSLContext:
        if self._ssl_context is None:
            self._ssl_context = httpx.create_ssl_context()  # slow: only once needed
        self._ssl_context.set_alpn_protocols(["http/1.1"])
        return self._ssl_context

    async def aclose(self) -> None:
        self.closed = True
        origins, self._origins = list(self._origins.values()), {}
        for origin in origins:
            origin.aclose()
