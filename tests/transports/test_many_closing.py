"""Thousands of idle WebSocket connections closing at once: a clean log, a server that
still chats.

Each idle connection's reader waits for its next frame with a deadline (see
``sanic_internals.py``). When thousands of peers go away together the server's
loop lags, and for some connections the deadline fires after their end of stream was
handled but before the wake-up it scheduled has run: that wake-up then finds a timeout
that is already expiring. That was a ``RuntimeError`` traceback per such connection
(370 when 8,000 idle connections closed together); and every connection's close was an
INFO line.
"""

from __future__ import annotations

import asyncio
import os
import resource
import signal
import time
from pathlib import Path

import httpx
from websockets.frames import Frame, Opcode

from tests.server import RunningServer

from .support import (
    http_client,
    new_conversation,
    server_on,
    wait_connections,
    ws_client,
)

#: enough that, on a 2-core machine, the burst of closes lasts long enough for a few
#: hundred milliseconds of read deadlines to fall inside it (before the fix: ~50-250
#: tracebacks a run)
CONNECTIONS = 3000
#: handshakes in flight at once
OPENING_AT_ONCE = 64
#: the reader's deadline on an idle connection: ``min(idle timeout, 5 s)`` in websocket.py
READ_DEADLINE_S = 5.0
#: the pings that spread the deadlines go out in this many groups over READ_DEADLINE_S
PING_GROUPS = 200

#: a minimal client handshake (RFC 6455 section 1.3's example key); no Origin header:
#: a non-browser client
_HANDSHAKE = (
    "GET /ws HTTP/1.1\r\n"
    "Host: {host}\r\n"
    "Upgrade: websocket\r\n"
    "Connection: Upgrade\r\n"
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    "Sec-WebSocket-Version: 13\r\n"
    "\r\n"
)
_PING = Frame(Opcode.TEXT, b'{"type":"ping"}').serialize(mask=True, extensions=[])

Connection = tuple[asyncio.StreamReader, asyncio.StreamWriter]


def _raise_open_files_limit(needed: int) -> None:
    """Let this process (and the server it starts, which inherits the limit) hold
    ``needed`` sockets, up to the hard limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


async def _open_idle(host: str, port: int, gate: asyncio.Semaphore) -> Connection:
    async with gate:
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(_HANDSHAKE.format(host=f"{host}:{port}").encode())
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30.0)
        assert head.startswith(b"HTTP/1.1 101"), head
        return reader, writer


async def _spread_read_deadlines(connections: list[Connection]) -> None:
    """One ``ping`` per connection, sent evenly over one deadline period: each one ends
    its reader's wait and starts the next, so the deadlines fall evenly over the next
    period, as with clients that connected over time. (Opened in a burst, their
    deadlines bunch up: closes that fall between the bunches meet none.)"""
    size = -(-len(connections) // PING_GROUPS)
    start = time.monotonic()
    for group in range(PING_GROUPS):
        for _, writer in connections[group * size : (group + 1) * size]:
            writer.write(_PING)
        next_group = start + (group + 1) * READ_DEADLINE_S / PING_GROUPS
        await asyncio.sleep(max(0.0, next_group - time.monotonic()))


async def _close_all_at_once(server: RunningServer, connections: list[Connection]) -> None:
    """Every connection ends (FIN) while the server is stopped, so that it finds them
    all ended in one look at its sockets: one burst, however fast this client is."""
    server.process.send_signal(signal.SIGSTOP)
    try:
        for _, writer in connections:
            writer.close()
        await asyncio.sleep(0.2)  # the FINs reach the server's sockets
    finally:
        os.kill(server.process.pid, signal.SIGCONT)


async def _chat(server: RunningServer) -> str:
    async with http_client(server) as client:
        conversation = await new_conversation(client)
    async with ws_client(server) as ws:
        accepted = await ws.create("still there?", conversation_id=conversation)
        terminal = await ws.until_terminal(accepted["generation_id"])
    kind: str = terminal["type"]
    return kind


async def test_thousands_of_idle_connections_closing_at_once_leave_a_clean_log(
    tmp_path: Path,
) -> None:
    _raise_open_files_limit(CONNECTIONS + 1024)
    env = {"SANIC_CHAT_MAX_CONNECTIONS_PER_USER": str(CONNECTIONS * 2)}
    with server_on("sqlite", tmp_path, env) as server:
        url = httpx.URL(server.base_url)
        host, port = str(url.host), int(url.port or 80)
        gate = asyncio.Semaphore(OPENING_AT_ONCE)
        connections = list(
            await asyncio.gather(*(_open_idle(host, port, gate) for _ in range(CONNECTIONS)))
        )
        async with http_client(server) as client:
            assert await wait_connections(client, "websocket", CONNECTIONS, 30.0) == CONNECTIONS
            await _spread_read_deadlines(connections)
            log_before = server.log()
            await _close_all_at_once(server, connections)
            assert await wait_connections(client, "websocket", 0, 60.0) == 0
        # the gauge is back at 0: the burst has been handled (the failing callbacks ran
        # before their connections' handlers ended)
        log = server.log()
        burst = log[len(log_before) :]
        # counts, not ``in`` on the whole log: pytest's explanation of a failed ``in`` on
        # megabytes of text takes minutes
        expiring = log.count("Cannot change state of expiring Timeout")
        tracebacks = log.count("Traceback")
        first = log.find("Traceback")
        assert (expiring, tracebacks) == (0, 0), log[max(0, first - 300) : first + 1500]
        # per-connection lines are DEBUG, and the server logs at INFO
        per_connection = log.count("connection closed") + log.count("connection open")
        assert per_connection == 0, burst[:3000]
        burst_lines = len(burst.splitlines())
        assert burst_lines < 50, burst[:3000]
        assert await _chat(server) == "generation.completed"
