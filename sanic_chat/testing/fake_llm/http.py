r"""A minimal HTTP/1.1 server connection for the fake LLM: httptools parsing,
keep-alive, in-order answers, chunked streaming, and write flow control.

It knows nothing of LLMs. The handler answers each request with :meth:`send`,
or with :meth:`start_stream`, :meth:`write_chunk`\s and :meth:`end_stream`
(or :meth:`cut`: the connection closes mid-body, as a crashed upstream would).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol, cast

import httptools

__all__ = ["Handler", "HttpConnection", "Request", "ResponseBody"]

_REASONS = {
    200: "OK",
    204: "No Content",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    413: "Payload Too Large",
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
    529: "Site Overloaded",
}


@dataclass(slots=True)
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    keep_alive: bool


class ResponseBody(Protocol):
    """A streamed response being written on a connection."""

    def resume(self) -> None:
        """The write buffer drained: go on writing."""

    def lost(self) -> None:
        """The client went away before the response ended."""


Handler = Callable[["HttpConnection", Request], None]


class HttpConnection(asyncio.Protocol):
    """One HTTP/1.1 connection: keep-alive, requests answered in order."""

    def __init__(self, handler: Handler, connections: set[HttpConnection]) -> None:
        self.handler = handler
        self.connections = connections
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.pending: deque[Request] = deque()
        self.busy = False
        self.closed = False
        self.paused = False
        self.waiting = False  # the body writer waits for the write buffer to drain
        #: the streamed response in progress, told when to go on and when the client left
        self.body: ResponseBody | None = None
        #: a scheduled step of the response, cancelled if the client leaves
        self.timer: asyncio.TimerHandle | None = None
        self.keep_alive = True
        self._url = b""
        self._headers: dict[str, str] = {}
        self._body: list[bytes] = []

    # -- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it
        self.transport = cast(asyncio.Transport, transport)
        self.connections.add(self)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.send(400, b'{"error":"bad HTTP request"}', keep_alive=False)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.connections.discard(self)
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.body is not None:
            body, self.body = self.body, None
            body.lost()

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        if self.waiting and self.body is not None:
            self.waiting = False
            self.body.resume()

    # -- httptools callbacks

    def on_message_begin(self) -> None:
        self._url = b""
        self._headers = {}
        self._body = []

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        self.pending.append(
            Request(
                method=self.parser.get_method().decode(),
                path=self._url.decode("latin-1"),
                headers=self._headers,
                body=b"".join(self._body),
                keep_alive=self.parser.should_keep_alive(),
            )
        )
        if not self.busy:
            self._next()

    # -- responses

    def _next(self) -> None:
        if self.busy or self.closed or not self.pending:
            return
        request = self.pending.popleft()
        self.busy = True
        self.keep_alive = request.keep_alive
        self.handler(self, request)

    def _done(self) -> None:
        self.busy = False
        if not self.keep_alive:
            self.close()
        elif self.pending:
            asyncio.get_running_loop().call_soon(self._next)

    def _head(self, status: int, content_type: bytes, extra: bytes) -> bytes:
        connection = b"keep-alive" if self.keep_alive else b"close"
        return (
            b"HTTP/1.1 %d %s\r\ncontent-type: %s\r\nconnection: %s\r\n"
            b"x-request-id: fake\r\nrequest-id: req_fake\r\n%s"
        ) % (status, _REASONS.get(status, "Error").encode(), content_type, connection, extra)

    def send(
        self,
        status: int,
        body: bytes,
        content_type: bytes = b"application/json",
        headers: Mapping[str, str] | None = None,
        *,
        keep_alive: bool | None = None,
    ) -> None:
        self.timer = None
        if self.closed or self.transport is None:
            return
        if keep_alive is not None:
            self.keep_alive = keep_alive
        extra = b"".join(
            f"{name}: {value}\r\n".encode("latin-1") for name, value in (headers or {}).items()
        )
        extra += b"content-length: %d\r\n\r\n" % len(body)
        self.transport.write(self._head(status, content_type, extra) + body)
        self._done()

    def start_stream(self, content_type: bytes) -> None:
        assert self.transport is not None
        extra = b"cache-control: no-cache\r\ntransfer-encoding: chunked\r\n\r\n"
        self.transport.write(self._head(200, content_type, extra))

    def write_chunk(self, data: bytes) -> None:
        if data and self.transport is not None and not self.closed:
            self.transport.write(b"%x\r\n%s\r\n" % (len(data), data))

    def end_stream(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.write(b"0\r\n\r\n")
            self._done()

    def cut(self) -> None:
        """Close mid-body: what is written goes out, then FIN, no last chunk."""
        self.close()

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.abort()
