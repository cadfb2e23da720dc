"""Slowloris (issue 17, item 3), against real JWT servers: a request head that
trickles in or stops half-way is answered 408 by its deadline, a silent
connection is closed, and half-open connections past the cap are closed at once
while a client that sends its head gets in. Deadlines here are functional (a 3 s
deadline checked with a 20 s bound), never a measure of speed."""

from __future__ import annotations

import asyncio
import inspect
import os
import resource
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import sanic
from sanic.http import Http, Stage
from sanic.server.protocols import http_protocol
from sanic.server.protocols.base_protocol import SanicProtocol
from sanic.server.protocols.http_protocol import HttpProtocol

from tests.server import RunningServer

from .support import bearer, jwt_env, new_user, serve_jwt, server_with

#: the Sanic release the request-head hooks (sanic_internals.py) were written against
SANIC_CHECKED = "25.12."
DEADLINE_S = 3
#: far more than DEADLINE_S: a test that fails waits this long, one that passes does not
BOUND_S = 20.0
HALF_HEAD = b"GET /api/v1/conversations HTTP/1.1\r\nHost: 127.0.0.1\r\n"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    yield from serve_jwt(tmp_path_factory, "slowloris", SANIC_CHAT_HEADER_TIMEOUT_S=str(DEADLINE_S))


@pytest.fixture(scope="module")
def capped_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """A deadline far away, so that only the cap (20) can close anything."""
    yield from serve_jwt(
        tmp_path_factory,
        "capped",
        SANIC_CHAT_HEADER_TIMEOUT_S="120",
        SANIC_CHAT_MAX_PENDING_HANDSHAKES="20",
    )


def _address(server: RunningServer) -> tuple[str, int]:
    host, port = server.base_url.removeprefix("http://").split(":")
    return host, int(port)


async def _open(server: RunningServer) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection(*_address(server))


async def _answer(reader: asyncio.StreamReader, within: float = BOUND_S) -> bytes:
    """Everything the server sends until it closes (b"" if it closes silently)."""
    return await asyncio.wait_for(reader.read(), within)


# ------------------------------------------------------------------ the deadline


def test_a_head_trickling_one_line_a_second_is_answered_408_by_the_deadline(
    server: RunningServer,
) -> None:
    async def scenario() -> tuple[bytes, float]:
        reader, writer = await _open(server)
        started = time.monotonic()
        writer.write(HALF_HEAD)
        answer = asyncio.ensure_future(reader.read())
        for line in range(int(BOUND_S)):
            done, _ = await asyncio.wait({answer}, timeout=1.0)
            if done:
                break
            writer.write(b"X-Line-%d: still here\r\n" % line)  # one header line a second
        answered = await asyncio.wait_for(answer, 5.0)
        writer.close()
        return answered, time.monotonic() - started

    answer, took = asyncio.run(scenario())
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
    assert b"did not arrive in time" in answer
    assert took >= DEADLINE_S - 0.5  # the deadline, not an earlier refusal


def test_a_head_that_stops_half_way_is_a_408_not_a_401(server: RunningServer) -> None:
    async def scenario() -> bytes:
        reader, writer = await _open(server)
        writer.write(HALF_HEAD)
        try:
            return await _answer(reader)
        finally:
            writer.close()

    answer = asyncio.run(scenario())
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]


def test_a_connection_that_sends_nothing_is_closed_by_the_deadline(server: RunningServer) -> None:
    async def scenario() -> bytes:
        reader, writer = await _open(server)
        try:
            return await _answer(reader)
        finally:
            writer.close()

    assert asyncio.run(scenario()) == b""


def test_a_kept_alive_connection_has_the_deadline_for_its_next_request(
    server: RunningServer,
) -> None:
    async def scenario() -> tuple[bytes, bytes]:
        reader, writer = await _open(server)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        first = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), BOUND_S)
        length = int(first.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        await reader.readexactly(length)
        await asyncio.sleep(DEADLINE_S + 1)  # idle between requests is keep-alive, not a head
        writer.write(HALF_HEAD)
        try:
            return first, await _answer(reader)
        finally:
            writer.close()

    first, second = asyncio.run(scenario())
    assert first.startswith(b"HTTP/1.1 200 ")
    assert second.startswith(b"HTTP/1.1 408 "), second[:200]


# ------------------------------------------------------------------ the cap


def test_half_open_connections_past_the_cap_are_closed_and_a_real_client_gets_in(
    capped_server: RunningServer,
) -> None:
    user = new_user()

    async def scenario() -> tuple[int, int, list[int]]:
        connections = []
        for _ in range(50):
            reader, writer = await _open(capped_server)
            writer.write(HALF_HEAD)
            await writer.drain()
            connections.append((reader, writer))
        answers = [asyncio.ensure_future(reader.read()) for reader, _ in connections]
        # with the flood in place, a client that sends its head is served
        async with httpx.AsyncClient(base_url=capped_server.base_url, timeout=BOUND_S) as client:
            statuses = [
                (await client.get("/healthz")).status_code,
                (await client.get("/api/v1/conversations", headers=bearer(user))).status_code,
            ]
        waiting = set(answers)
        deadline = time.monotonic() + BOUND_S
        while len(answers) - len(waiting) < 30 and (left := deadline - time.monotonic()) > 0:
            _, waiting = await asyncio.wait(
                waiting, timeout=left, return_when=asyncio.FIRST_COMPLETED
            )
        closed = [a.result() for a in answers if a.done()]
        timed_out = sum(answer.startswith(b"HTTP/1.1 408 ") for answer in closed)
        still_open = sum(not a.done() for a in answers)
        for answer in answers:
            answer.cancel()
        for _, writer in connections:
            writer.close()
        return timed_out, still_open, statuses

    timed_out, still_open, statuses = asyncio.run(scenario())
    assert statuses == [200, 200]
    # 50 + the client's connections through a cap of 20: at least 30 closed, each with a 408;
    # the rest wait for a deadline two minutes away
    assert timed_out >= 30
    assert still_open <= 20


# ------------------------------------------------------------------ descriptors


def test_the_server_raises_its_open_files_soft_limit_to_the_hard_limit(
    tmp_path: Path,
) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard <= 256:
        pytest.skip(f"the hard limit ({hard}) leaves nothing to raise")
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))  # the server inherits this
    try:
        with server_with(jwt_env(tmp_path)) as running:
            limits = Path(f"/proc/{running.process.pid}/limits").read_text()
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    line = next(line for line in limits.splitlines() if line.startswith("Max open files"))
    server_soft = line.split()[3]
    assert server_soft != "256", line
    expected = "unlimited" if hard == resource.RLIM_INFINITY else str(hard)
    assert server_soft in (expected, str(1_048_576)), line


# ------------------------------------------------------------------ the internals


def test_the_sanic_internals_security_handshakes_relies_on_are_there() -> None:
    """sanic_internals.py's request-head hooks (for security/handshakes.py) reach into
    Sanic: re-check them on every Sanic release."""
    if not sanic.__version__.startswith(SANIC_CHECKED):
        pytest.fail(
            f"Sanic {sanic.__version__}: re-read sanic_chat/sanic_internals.py (request heads) against it "
            f"(written for {SANIC_CHECKED}x), delete it if Sanic now bounds request heads, "
            "then update SANIC_CHECKED"
        )
    # what it works around: every chunk restarts REQUEST_TIMEOUT
    source = inspect.getsource(http_protocol)
    data_received = source[source.index("def data_received") :]
    assert "self._time = current_time()" in data_received.split("\n    def ")[0]
    # what it uses
    assert "_task" in SanicProtocol.__slots__
    assert isinstance(inspect.getattr_static(HttpProtocol, "http"), property)
    assert {"stage", "exception"} <= set(Http.__slots__)
    assert {Stage.IDLE, Stage.REQUEST} <= set(Stage)
    assert 'method="NONE"' in inspect.getsource(Http.create_empty_request)
    for name in ("connection_made", "data_received", "connection_lost"):
        assert callable(getattr(HttpProtocol, name))
    assert os.path.exists(inspect.getfile(HttpProtocol))
