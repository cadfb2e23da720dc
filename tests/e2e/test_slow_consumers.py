"""Slow consumers, on SQLite and PostgreSQL: a reader that stops reading
during a fast 8,000-token reply gets every code point in fewer, merged frames
while the server's memory stays bounded; one that falls further behind than
its outbox may hold is dropped with the resumable close code 4008 (WebSocket)
or the end of its stream (SSE), and resumes by offset.

A stalled reader is a real one: a socket with a small receive buffer whose
client stops reading. Frames, bytes and server RSS are printed, not asserted.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpx
import pytest
from websockets.exceptions import ConnectionClosedError

from tests.server import RunningServer
from tests.transports.support import (
    BACKENDS,
    Reassembly,
    SseStream,
    http_client,
    new_conversation,
    post_message,
    raw_sse_stream,
    rss_kib,
    server_on,
    shared_server,
    stored_message,
    wait_stored_final,
    ws_client,
)

TOKENS = 8000
STALL_S = 2.0
SMALL_BUFFER = 4096
SMALL_SEGMENT = 1024


@pytest.fixture(scope="module", params=BACKENDS)
def server(request: pytest.FixtureRequest) -> RunningServer:
    return shared_server(request, request.param)


@pytest.fixture(scope="module", params=BACKENDS)
def tight_server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningServer]:
    """A server whose connections may hold only 1,000 code points unsent."""
    tmp = tmp_path_factory.mktemp("db")
    with server_on(request.param, tmp, {"SANIC_CHAT_OUTBOX_MAX_CHARS": "1000"}) as running:
        yield running


def stalled_socket(server: RunningServer) -> socket.socket:
    """A connected socket whose receive buffer is small (set before connect,
    so the window never grows): the server's writes block soon after its
    reader stops reading."""
    url = urlsplit(server.base_url)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SMALL_BUFFER)
    # a small segment size keeps the server's send buffer small too (Linux
    # sizes it from the segment size: ~2.6 MB for loopback's 64 KiB segments)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, SMALL_SEGMENT)
    sock.connect((url.hostname, url.port))
    sock.setblocking(False)
    return sock


@dataclass
class StalledStream:
    sse: SseStream
    path: str
    conversation_id: str
    generation_id: str


@contextlib.asynccontextmanager
async def stalled_sse_firehose(
    server: RunningServer, client: httpx.AsyncClient
) -> AsyncIterator[StalledStream]:
    """A new conversation's event stream over ``stalled_socket``, opened (its
    opening comment read) before the firehose reply is posted to it."""
    conversation_id = await new_conversation(client)
    path = f"/api/v1/conversations/{conversation_id}/events"
    async with raw_sse_stream(stalled_socket(server), path) as sse:
        assert (await sse.next()) is not None  # the opening comment
        posted = await post_message(client, conversation_id, "firehose", model="firehose")
        yield StalledStream(sse, path, conversation_id, posted.json()["generation_id"])


def report(what: str, **numbers: object) -> None:
    shown = ", ".join(f"{k}={v}" for k, v in numbers.items())
    print(f"\n[measure] {what}: {shown}")


async def test_a_websocket_reader_that_stalls_gets_every_code_point_in_fewer_frames(
    server: RunningServer,
) -> None:
    pid = server.process.pid
    async with (
        http_client(server) as client,
        ws_client(server, sock=stalled_socket(server), max_queue=1) as ws,
    ):
        accepted = await ws.create("firehose", model="firehose")
        generation_id = accepted["generation_id"]
        rss_before = rss_kib(pid)
        await asyncio.sleep(STALL_S)  # not reading; the reply runs to its end meanwhile
        stored = await wait_stored_final(client, accepted["conversation_id"], generation_id)
        assert stored["status"] == "complete"
        rss_stalled = rss_kib(pid)
        text = Reassembly(generation_id)
        frames = wire_bytes = 0
        while True:
            raw = await asyncio.wait_for(ws.connection.recv(), 10)
            frames += 1
            wire_bytes += len(raw)
            event = ws.decode(raw)
            text.add(event)
            if event["type"] == "generation.completed":
                break
        rss_after = rss_kib(pid)
    assert text.text == stored["content"]  # every code point, in order, once
    assert stored["usage"]["output_tokens"] == TOKENS
    assert text.deltas < TOKENS  # merged while the reader stalled
    report(
        "WebSocket reader stalled 2 s during an 8,000-token reply",
        tokens=TOKENS,
        delta_frames=text.deltas,
        frames=frames,
        wire_bytes=wire_bytes,
        code_points=len(text.text),
        server_rss_kib=f"{rss_before}->{rss_stalled}->{rss_after}",
    )


async def test_an_sse_reader_that_stalls_gets_every_code_point_in_fewer_events(
    server: RunningServer,
) -> None:
    pid = server.process.pid
    async with http_client(server) as client:
        async with stalled_sse_firehose(server, client) as stalled:
            sse, conversation_id = stalled.sse, stalled.conversation_id
            generation_id = stalled.generation_id
            rss_before = rss_kib(pid)
            await asyncio.sleep(STALL_S)  # not reading; the reply runs to its end meanwhile
            stored = await wait_stored_final(client, conversation_id, generation_id)
            rss_stalled = rss_kib(pid)
            terminal = await sse.until_terminal(generation_id)
            rss_after = rss_kib(pid)
    text = Reassembly(generation_id).add_all(sse.received_data)
    assert stored["status"] == "complete"
    assert text.text == stored["content"] == terminal["message"]["content"]
    assert text.deltas < TOKENS
    report(
        "SSE reader stalled 2 s during an 8,000-token reply",
        tokens=TOKENS,
        delta_events=text.deltas,
        events=len(sse.received_data),
        body_bytes=sse.body_bytes,
        code_points=len(text.text),
        server_rss_kib=f"{rss_before}->{rss_stalled}->{rss_after}",
    )


async def test_a_websocket_reader_too_far_behind_is_closed_4008_and_resumes_by_offset(
    tight_server: RunningServer,
) -> None:
    server = tight_server
    async with http_client(server) as client:
        async with ws_client(server, sock=stalled_socket(server), max_queue=1) as ws:
            accepted = await ws.create("firehose", model="firehose")
            generation_id = accepted["generation_id"]
            await asyncio.sleep(STALL_S)
            text = Reassembly(generation_id)
            with pytest.raises(ConnectionClosedError) as closed:
                while True:
                    text.add(await ws.recv())
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4008
        stored = await wait_stored_final(client, accepted["conversation_id"], generation_id)
        assert stored["status"] == "complete"  # the reply never noticed
        assert len(text.text) < len(stored["content"])
        asked = time.monotonic()
        async with ws_client(server) as ws:
            await ws.send(type="generation.resume", generation_id=generation_id, offset=text.end)
            assert (await ws.recv())["type"] == "generation.started"
            first = await ws.recv()
            latency = time.monotonic() - asked
            text.add(first)
            terminal = await ws.until_terminal(generation_id)
            text.add_all(ws.received[2:])
        assert text.text == stored["content"] == terminal["message"]["content"]
        report(
            "WebSocket reader dropped with 4008, then resumed",
            had=len(text.text) - len(first["text"]),
            resumed_from=first["offset"],
            resume_latency_ms=round(latency * 1000, 1),
        )


async def test_an_sse_reader_too_far_behind_loses_its_stream_and_resumes_with_last_event_id(
    tight_server: RunningServer,
) -> None:
    server = tight_server
    async with http_client(server) as client:
        async with stalled_sse_firehose(server, client) as stalled:
            sse, conversation_id = stalled.sse, stalled.conversation_id
            generation_id = stalled.generation_id
            await asyncio.sleep(STALL_S)
            text = Reassembly(generation_id)
            while (data := await sse.next_data()) is not None:
                text.add(data)
                assert data["type"] != "generation.completed"
        # the stream ended early; the client reconnects with the last id it saw
        assert sse.last_id == f"{generation_id}:{text.end}"
        headers = {"Last-Event-ID": sse.last_id}
        async with raw_sse_stream(stalled_socket(server), stalled.path, headers) as again:
            terminal = await again.until_terminal(generation_id)
        text.add_all(again.received_data)
        stored = await stored_message(client, conversation_id, generation_id)
        assert stored["status"] == "complete"
        assert text.text == stored["content"] == terminal["message"]["content"]
        metrics = (await client.get("/metrics")).text
        assert 'sanic_chat_slow_consumers_dropped_total{transport="sse"}' in metrics
