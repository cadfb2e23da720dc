"""Real servers on both databases, and small real-socket clients for them.

Every server-level test runs against a ``sanic-chat serve`` subprocess on a
free loopback port, once on SQLite (a fresh data directory) and once on
PostgreSQL (a fresh schema on the shared test database, created with the
store's own migration and dropped afterwards: ``?schema=`` in the URL).
Reply speed is set by demo models in a models file.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from websockets.asyncio.client import ClientConnection, connect

from tests.server import RunningServer, migrated_schema, run_server

BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]

#: demo models: ``demo`` is quick, ``slow`` runs for seconds (time to cut a
#: connection mid-reply), ``firehose`` is 8,000 unpaced tokens
MODELS_TOML = """
default = "demo"
[models.demo]
provider = "demo"
ttft_ms = 20
tokens_per_second = 200
reply_tokens = 40
[models.slow]
provider = "demo"
ttft_ms = 20
tokens_per_second = 40
reply_tokens = 100
[models.firehose]
provider = "demo"
ttft_ms = 0
tokens_per_second = 0
reply_tokens = 8000
"""

#: small heartbeat, tail TTL and checkpoint interval so tests see them quickly
FAST_ENV = {
    "SANIC_CHAT_HEARTBEAT_S": "0.5",
    "SANIC_CHAT_TAIL_TTL_S": "1",
    "SANIC_CHAT_CHECKPOINT_INTERVAL_S": "0.2",
}

TERMINAL = ("generation.completed", "generation.cancelled", "generation.failed")


# --------------------------------------------------------------------------- servers


@dataclass
class Database:
    """Where a test server keeps its data; ``env`` points a server at it."""

    backend: str
    data_dir: Path
    env: dict[str, str] = field(default_factory=dict)
    schema: str | None = None
    url: str | None = None


@contextlib.contextmanager
def database(backend: str, tmp: Path) -> Iterator[Database]:
    data_dir = tmp / f"data-{uuid.uuid4().hex[:8]}"
    data_dir.mkdir(parents=True)
    if backend == "sqlite":
        yield Database("sqlite", data_dir)
        return
    schema = f"test_transport_{uuid.uuid4().hex[:16]}"
    with migrated_schema(schema) as url:
        yield Database("postgres", data_dir, {"SANIC_CHAT_DATABASE_URL": url}, schema, url)


@contextlib.contextmanager
def chat_server(
    db: Database, env: Mapping[str, str] | None = None, *, models: str = MODELS_TOML
) -> Iterator[RunningServer]:
    models_path = db.data_dir / "models.toml"
    models_path.write_text(models)
    full_env = {**FAST_ENV, **db.env, "SANIC_CHAT_MODELS": str(models_path), **(env or {})}
    with run_server(full_env, data_dir=str(db.data_dir)) as server:
        yield server


@contextlib.contextmanager
def server_on(
    backend: str, tmp: Path, env: Mapping[str, str] | None = None, *, models: str = MODELS_TOML
) -> Iterator[RunningServer]:
    """A server of its own on a fresh database of ``backend`` (see ``chat_server``)."""
    with database(backend, tmp) as db, chat_server(db, env, models=models) as server:
        yield server


_shared: dict[str, RunningServer] = {}


def shared_server(request: pytest.FixtureRequest, backend: str) -> RunningServer:
    """The run's one default server on ``backend``, started on first use and
    stopped when the run ends: the modules that need no special settings
    share it (each test works in its own conversations)."""
    if backend not in _shared:
        stack = contextlib.ExitStack()
        tmp = request.getfixturevalue("tmp_path_factory").mktemp("shared")
        try:
            _shared[backend] = stack.enter_context(server_on(backend, tmp))
        except BaseException:
            stack.close()
            raise
        request.config.add_cleanup(stack.close)
    return _shared[backend]


def rss_kib(pid: int) -> int:
    """Resident set size of a process, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


# --------------------------------------------------------------------------- text


class Reassembly:
    """Rebuilds one generation's text from deltas, failing on a gap or an overlap."""

    def __init__(self, generation_id: str, offset: int = 0, text: str = "") -> None:
        self.generation_id = generation_id
        self.text = text
        self.start = offset - len(text)
        self.deltas = 0

    @property
    def end(self) -> int:
        return self.start + len(self.text)

    def add(self, event: Mapping[str, Any]) -> None:
        if event.get("generation_id") != self.generation_id:
            return
        if event["type"] == "generation.delta":
            assert event["offset"] == self.end, (event["offset"], self.end)
            self.text += event["text"]
            self.deltas += 1

    def add_all(self, events: Iterable[Mapping[str, Any]]) -> Reassembly:
        """``add`` each of ``events`` (a client's ``received``, say)."""
        for event in events:
            self.add(event)
        return self

    async def read(
        self, next_event: Callable[[], Awaitable[Mapping[str, Any] | None]], deltas: int
    ) -> Reassembly:
        """Add what ``next_event`` gives (``WsClient.recv``, ``SseStream.next_data``)
        until ``deltas`` deltas are in; the stream must not end first."""
        while self.deltas < deltas:
            event = await next_event()
            assert event is not None, "the stream ended first"
            self.add(event)
        return self


# --------------------------------------------------------------------------- WebSocket


class WsClient:
    def __init__(self, connection: ClientConnection) -> None:
        self.connection = connection
        self.received: list[dict[str, Any]] = []

    async def send(self, **frame: Any) -> None:
        await self.connection.send(orjson.dumps(frame).decode())

    async def recv(self, timeout: float = 10.0) -> dict[str, Any]:
        return self.decode(await asyncio.wait_for(self.connection.recv(), timeout))

    def decode(self, raw: str | bytes) -> dict[str, Any]:
        event: dict[str, Any] = orjson.loads(raw)
        self.received.append(event)
        return event

    async def recv_type(self, kind: str, timeout: float = 10.0) -> dict[str, Any]:
        while True:
            event = await self.recv(timeout)
            if event["type"] == kind:
                return event

    async def until_terminal(self, generation_id: str, timeout: float = 30.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            event = await self.recv(max(0.1, deadline - time.monotonic()))
            if event["type"] in TERMINAL and event["generation_id"] == generation_id:
                return event

    async def create(self, content: str = "hello", **fields: Any) -> dict[str, Any]:
        """Post a message; returns its ``message.accepted``."""
        client_id = fields.pop("client_id", None) or str(uuid.uuid4())
        await self.send(type="message.create", client_id=client_id, content=content, **fields)
        return await self.recv_type("message.accepted")

    async def streaming(self, content: str = "hello", **fields: Any) -> str:
        """Post a message and wait until its reply streams (its first delta is in);
        the reply's ``generation_id``."""
        accepted = await self.create(content, **fields)
        await self.recv_type("generation.delta")
        return str(accepted["generation_id"])

    def cut(self) -> None:
        """Drop the TCP connection with no close frame (RST)."""
        self.connection.transport.abort()


@contextlib.asynccontextmanager
async def ws_client(
    server: RunningServer, *, sock: socket.socket | None = None, max_queue: int | None = None
) -> AsyncIterator[WsClient]:
    """A client connection. ``max_queue`` None reads the socket eagerly (a
    client that stops reading once its queue is full also ignores the
    server's close frame, and its own close waits out its timeout)."""
    kwargs: dict[str, Any] = {"max_size": None, "open_timeout": 10, "max_queue": max_queue}
    if sock is not None:
        kwargs["sock"] = sock
    async with connect(server.ws_url, **kwargs) as connection:
        yield WsClient(connection)


# --------------------------------------------------------------------------- SSE


@dataclass
class SseEvent:
    event: str | None
    id: str | None
    data: dict[str, Any] | None
    comment: str | None = None


class SseStream:
    """A small SSE line parser over an httpx streaming response or any other
    source of lines (comments are kept: heartbeats are comments)."""

    def __init__(self, source: httpx.Response | AsyncIterator[str]) -> None:
        self._lines = source.aiter_lines() if isinstance(source, httpx.Response) else source
        self.received: list[SseEvent] = []
        self.last_id: str | None = None
        #: bytes of the response body read so far (raw streams only)
        self.body_bytes = 0

    async def next(self, timeout: float = 10.0) -> SseEvent | None:
        """The next event or comment; None at the end of the stream."""
        return await asyncio.wait_for(self._next(), timeout)

    async def _next(self) -> SseEvent | None:
        fields: dict[str, str] = {}
        data: list[str] = []
        async for line in self._lines:
            if line == "":
                if not data:  # e.g. a lone "retry:" block: nothing to dispatch
                    fields.clear()
                    continue
                event = SseEvent(
                    fields.get("event"),
                    fields.get("id"),
                    orjson.loads("\n".join(data)) if data else None,
                )
                if event.id is not None:
                    self.last_id = event.id
                self.received.append(event)
                return event
            if line.startswith(":"):
                if not fields and not data:
                    comment = SseEvent(None, None, None, line[1:].strip())
                    self.received.append(comment)
                    return comment
                continue
            name, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if name == "data":
                data.append(value)
            else:
                fields[name] = value
        return None

    async def next_data(self, timeout: float = 10.0) -> dict[str, Any] | None:
        """The next event's JSON (skipping comments); None at the end."""
        while True:
            event = await self.next(timeout)
            if event is None:
                return None
            if event.data is not None:
                return event.data

    @property
    def received_data(self) -> list[dict[str, Any]]:
        """The JSON of every event read so far (comments left out)."""
        return [event.data for event in self.received if event.data is not None]

    async def all_data(self) -> list[dict[str, Any]]:
        """Every event's JSON up to the end of the stream."""
        events = []
        while (data := await self.next_data()) is not None:
            events.append(data)
        return events

    async def until_terminal(self, generation_id: str, timeout: float = 30.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            data = await self.next_data(max(0.1, deadline - time.monotonic()))
            assert data is not None, "the stream ended before the terminal event"
            if data["type"] in TERMINAL and data["generation_id"] == generation_id:
                return data


class HttpSseStream(SseStream):
    def __init__(self, response: httpx.Response) -> None:
        super().__init__(response)
        self.response = response


@contextlib.asynccontextmanager
async def sse_stream(
    client: httpx.AsyncClient, path: str, headers: Mapping[str, str] | None = None
) -> AsyncIterator[HttpSseStream]:
    async with client.stream("GET", path, headers=dict(headers or {})) as response:
        assert response.status_code == 200, (response.status_code, await response.aread())
        yield HttpSseStream(response)


@contextlib.asynccontextmanager
async def raw_sse_stream(
    sock: socket.socket, path: str, headers: Mapping[str, str] | None = None
) -> AsyncIterator[SseStream]:
    """An SSE stream over a socket the caller set up (before connect: what a
    socket is told after it connected does not bound its peer), read only
    when the test reads, with an application buffer of a few KiB."""
    reader, writer = await asyncio.open_connection(sock=sock, limit=4096)
    host, port = sock.getpeername()[:2]
    request = f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nAccept: text/event-stream\r\n"
    for name, value in (headers or {}).items():
        request += f"{name}: {value}\r\n"
    writer.write((request + "\r\n").encode())
    await writer.drain()
    status = await reader.readuntil(b"\r\n")
    assert b" 200 " in status, status
    head = await reader.readuntil(b"\r\n\r\n")
    assert b"transfer-encoding: chunked" in head.lower(), head
    stream: SseStream

    async def lines() -> AsyncIterator[str]:
        pending = b""
        while True:
            size = int((await reader.readuntil(b"\r\n")).strip(), 16)
            if size == 0:
                return
            chunk = await reader.readexactly(size + 2)
            stream.body_bytes += size
            pending += chunk[:-2]
            *complete, pending = pending.split(b"\n")
            for line in complete:
                yield line.rstrip(b"\r").decode()

    stream = SseStream(lines())
    try:
        yield stream
    finally:
        writer.close()


def http_client(server: RunningServer) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=server.base_url, timeout=httpx.Timeout(30.0))


async def new_conversation(client: httpx.AsyncClient) -> str:
    response = await client.post("/api/v1/conversations", json={})
    assert response.status_code == 201, response.text
    conversation_id: str = response.json()["id"]
    return conversation_id


async def post_message(
    client: httpx.AsyncClient,
    conversation_id: str,
    content: str = "hello",
    *,
    client_id: str | None = None,
    model: str | None = None,
) -> httpx.Response:
    body: dict[str, Any] = {"client_id": client_id or str(uuid.uuid4()), "content": content}
    if model is not None:
        body["model"] = model
    return await client.post(f"/api/v1/conversations/{conversation_id}/messages", json=body)


async def stored_message(
    client: httpx.AsyncClient, conversation_id: str, message_id: str
) -> dict[str, Any]:
    response = await client.get(f"/api/v1/conversations/{conversation_id}/messages")
    assert response.status_code == 200, response.text
    for message in response.json()["items"]:
        if message["id"] == message_id:
            found: dict[str, Any] = message
            return found
    raise AssertionError(f"message {message_id} not stored")


async def wait_stored_final(
    client: httpx.AsyncClient, conversation_id: str, message_id: str, timeout: float = 30.0
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        message = await stored_message(client, conversation_id, message_id)
        if message["status"] != "streaming" or time.monotonic() > deadline:
            return message
        await asyncio.sleep(0.05)


async def connections(client: httpx.AsyncClient, transport: str) -> float:
    """``sanic_chat_connections{transport=...}`` from /metrics."""
    text = (await client.get("/metrics")).text
    prefix = f'sanic_chat_connections{{transport="{transport}"}} '
    for line in text.splitlines():
        if line.startswith(prefix):
            return float(line[len(prefix) :])
    return 0.0


async def wait_connections(
    client: httpx.AsyncClient, transport: str, expected: float, timeout: float = 5.0
) -> float:
    deadline = time.monotonic() + timeout
    while True:
        value = await connections(client, transport)
        if value == expected or time.monotonic() > deadline:
            return value
        await asyncio.sleep(0.05)
