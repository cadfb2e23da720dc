"""A TCP proxy that tests can cut: the way to take PostgreSQL or Redis away from one
server without touching the shared services.

``TcpProxy(5432)`` listens on a free loopback port and forwards every connection to
``127.0.0.1:5432``. :meth:`TcpProxy.cut` drops every forwarded connection at once and
refuses new ones (the listening socket is closed: connect fails with ECONNREFUSED, as
when the service is down); :meth:`TcpProxy.restore` listens on the same port again.

The proxy runs its own event loop in a thread, so it keeps forwarding while a test
blocks (``time.sleep``, a synchronous HTTP call) or runs its own loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

from tests.server import free_port

T = TypeVar("T")

#: how much one read forwards at most
CHUNK = 64 * 1024


class TcpProxy:
    def __init__(self, upstream_port: int, upstream_host: str = "127.0.0.1") -> None:
        self.upstream = (upstream_host, upstream_port)
        self.port = free_port()
        self.connections_made = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        #: the transports of both sides of every live forwarded connection
        self._live: set[asyncio.Transport] = set()
        self._cut = False

    # ------------------------------------------------------------------ control

    def start(self) -> TcpProxy:
        self._thread.start()
        self._call(self._listen())
        return self

    def cut(self) -> None:
        """Drop every connection, refuse new ones."""
        self._call(self._do_cut())

    def restore(self) -> None:
        """Accept and forward connections again."""
        self._call(self._listen())

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._call(self._do_cut())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()

    @property
    def live_connections(self) -> int:
        return len(self._live) // 2

    def url_for(self, url: str) -> str:
        """``url`` with its ``host:port`` pointed at this proxy."""
        host, port = self.upstream
        return url.replace(f"{host}:{port}", f"127.0.0.1:{self.port}", 1)

    def __enter__(self) -> TcpProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)

    # ------------------------------------------------------------------ the loop's side

    async def _listen(self) -> None:
        self._cut = False
        if self._server is None:
            self._server = await asyncio.start_server(
                self._forward, "127.0.0.1", self.port, reuse_address=True
            )

    async def _do_cut(self) -> None:
        self._cut = True
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for transport in list(self._live):
            transport.abort()
        self._live.clear()

    async def _forward(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        client = writer.transport
        if self._cut:
            client.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            client.abort()
            return
        if self._cut:  # cut while connecting
            client.abort()
            up_writer.transport.abort()
            return
        self.connections_made += 1
        pair = (client, up_writer.transport)
        self._live.update(pair)
        try:
            await asyncio.gather(
                self._to_upstream(reader, up_writer), self._to_client(up_reader, writer)
            )
        finally:
            for transport in pair:
                self._live.discard(transport)
                transport.abort()

    async def _to_upstream(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        """Client to server (a subclass may hold or alter what passes)."""
        await _pipe(reader, writer)

    async def _to_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Server to client."""
        await _pipe(reader, writer)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(CHUNK):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except (OSError, RuntimeError):
        writer.transport.abort()
