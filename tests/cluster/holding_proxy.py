"""A TCP proxy that can hold what clients send, as a network that delays packets does.

:meth:`HoldingProxy.hold` keeps every byte a client sends (on open connections and
new ones) instead of forwarding it; :meth:`HoldingProxy.release` forwards what was
held, in order, and forwards again from then on. A client that gives up and closes
its connection meanwhile (a statement timeout) does not take back what it sent: its
held bytes, then its end of the stream, still reach the server on release -- so a
statement the client saw time out runs on the server afterwards, which is what makes
its outcome unknown to the client. The server's answers are forwarded as they come.
"""

from __future__ import annotations

import asyncio

from tests.chaos import CHUNK, TcpProxy

__all__ = ["HoldingProxy"]


class HoldingProxy(TcpProxy):
    def __init__(self, upstream_port: int, upstream_host: str = "127.0.0.1") -> None:
        super().__init__(upstream_port, upstream_host)
        self._released = asyncio.Event()
        self._released.set()
        #: bytes held so far (all connections)
        self.held_bytes = 0

    def hold(self) -> None:
        """Keep every byte clients send from now on."""
        self._call(self._set_held(True))

    def release(self) -> None:
        """Forward what was held, and everything after it."""
        self._call(self._set_held(False))

    async def _set_held(self, held: bool) -> None:
        if held:
            self._released.clear()
        else:
            self._released.set()

    async def _to_upstream(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        """Client to server: while held, what the client sends waits here (its end
        of stream, or its reset, too) until release."""
        held: list[bytes] = []
        reading = asyncio.ensure_future(reader.read(CHUNK))
        try:
            while True:
                released = asyncio.ensure_future(self._released.wait())
                await asyncio.wait({reading, released}, return_when=asyncio.FIRST_COMPLETED)
                released.cancel()
                if self._released.is_set() and held:
                    writer.write(b"".join(held))
                    held.clear()
                    await writer.drain()
                if not reading.done():
                    continue
                try:
                    data = reading.result()
                except (OSError, RuntimeError):
                    data = b""  # the client reset: what it sent before still goes through
                if not data:
                    await self._released.wait()
                    if held:
                        writer.write(b"".join(held))
                        await writer.drain()
                    if writer.can_write_eof():
                        writer.write_eof()
                    return
                if self._released.is_set():
                    writer.write(data)
                    await writer.drain()
                else:
                    held.append(data)
                    self.held_bytes += len(data)
                reading = asyncio.ensure_future(reader.read(CHUNK))
        except (OSError, RuntimeError):
            writer.transport.abort()
        finally:
            reading.cancel()

    async def _to_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Server to client, as it comes; a client gone is no reason to stop reading."""
        try:
            while data := await reader.read(CHUNK):
                if not writer.transport.is_closing():
                    writer.write(data)
                    await writer.drain()
        except (OSError, RuntimeError):
            return
