"""The connection pool against the fake LLM behind a TCP proxy that counts the
connections it forwards (and sees them end), plus a raw socket server for the
server-closes-a-keep-alive-connection race."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AsyncExitStack, asynccontextmanager

import httpx
import orjson
import pytest

from sanic_chat.providers.pool import ConnectionPool
from sanic_chat.testing.fake_llm import FakeLLM
from tests.chaos import TcpProxy

POOL_TIMEOUT = httpx.Timeout(5.0, pool=0.2)


@pytest.fixture
def proxy(fake: FakeLLM) -> Iterator[TcpProxy]:
    with TcpProxy(int(fake.base_url.rsplit(":", 1)[1])) as forwarding:
        yield forwarding


@asynccontextmanager
async def client_of(proxy: TcpProxy, **settings: float) -> AsyncIterator[httpx.AsyncClient]:
    pool = ConnectionPool(**settings)  # type: ignore[arg-type]
    async with httpx.AsyncClient(
        transport=pool, base_url=f"http://127.0.0.1:{proxy.port}", timeout=POOL_TIMEOUT
    ) as client:
        yield client
        for origin in pool._origins.values():  # at rest, every slot is an open connection
            assert origin.opened == len(origin.connections)
            assert {connection for connection, _ in origin.idle} <= origin.connections


def pool_of(client: httpx.AsyncClient) -> ConnectionPool:
    transport = client._transport
    assert isinstance(transport, ConnectionPool)
    return transport


def reply_request(client: httpx.AsyncClient, directives: str) -> httpx.Request:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    return client.build_request(
        "POST",
        "/v1/chat/completions",
        content=orjson.dumps(body),
        headers={"content-type": "application/json", "X-Fake-LLM": directives},
    )


async def eventually(condition: Callable[[], bool], within: float = 1.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "not within the time allowed"
        await asyncio.sleep(0.01)


async def get_ok(client: httpx.AsyncClient) -> httpx.Response:
    response = await client.get("/healthz")
    assert response.status_code == 200
    return response


# --------------------------------------------------------------------------- reuse


async def test_the_most_recently_released_connection_is_reused_first(proxy: TcpProxy) -> None:
    async with client_of(proxy) as client:
        first = await client.send(client.build_request("GET", "/healthz"), stream=True)
        second = await client.send(client.build_request("GET", "/healthz"), stream=True)
        await first.aread()
        await second.aread()
        warmest = second.extensions["network_stream"]
        third = await get_ok(client)
        assert third.extensions["network_stream"] is warmest
        assert proxy.connections_made == 2
        assert pool_of(client).connections() == 2


async def test_connections_of_many_concurrent_replies_are_all_reused(proxy: TcpProxy) -> None:
    streams = 300
    async with client_of(proxy, max_keepalive=streams) as client:
        pool = pool_of(client)
        for _round in range(2):
            async with AsyncExitStack() as held:
                # every response stays open until all have started: 300 at once
                responses = await asyncio.gather(
                    *(
                        held.enter_async_context(
                            client.stream("POST", "/v1/chat/completions", **_reply_kw("tokens=3"))
                        )
                        for _ in range(streams)
                    )
                )
                assert pool.connections() == streams
                await asyncio.gather(*(response.aread() for response in responses))
            assert pool.idle_connections() == streams
        assert proxy.connections_made == streams


def _reply_kw(directives: str) -> dict[str, object]:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    return {
        "content": orjson.dumps(body),
        "headers": {"content-type": "application/json", "X-Fake-LLM": directives},
    }


# --------------------------------------------------------------------------- not reused


async def test_a_response_closed_early_closes_its_connection(proxy: TcpProxy) -> None:
    async with client_of(proxy) as client:
        async with client.stream(
            "POST", "/v1/chat/completions", **_reply_kw("tps=20;tokens=50")
        ) as response:
            async for _ in response.aiter_bytes():
                break
        assert pool_of(client).connections() == 0
        await eventually(lambda: proxy.live_connections == 0)
        await get_ok(client)
        assert proxy.connections_made == 2


async def test_a_cancelled_reader_closes_its_connection(proxy: TcpProxy) -> None:
    started = asyncio.Event()

    async def read(client: httpx.AsyncClient) -> None:
        async with client.stream(
            "POST", "/v1/chat/completions", **_reply_kw("tps=20;tokens=50")
        ) as response:
            async for _ in response.aiter_bytes():
                started.set()

    async with client_of(proxy) as client:
        reader = asyncio.create_task(read(client))
        await asyncio.wait_for(started.wait(), 5)
        reader.cancel()
        with pytest.raises(asyncio.CancelledError):
            await reader
        assert pool_of(client).connections() == 0
        await eventually(lambda: proxy.live_connections == 0)
        await get_ok(client)
        assert proxy.connections_made == 2


async def test_a_reply_cut_mid_body_is_a_read_error_and_not_reused(proxy: TcpProxy) -> None:
    async with client_of(proxy) as client:
        with pytest.raises(httpx.RemoteProtocolError):
            async with client.stream(
                "POST", "/v1/chat/completions", **_reply_kw("fault=cut:2;tokens=10")
            ) as response:
                await response.aread()
        assert pool_of(client).connections() == 0
        await get_ok(client)
        assert proxy.connections_made == 2


async def test_an_idle_connection_the_server_closed_is_replaced(proxy: TcpProxy) -> None:
    async with client_of(proxy) as client:
        await get_ok(client)
        proxy.cut()  # drops the idle connection
        proxy.restore()
        await get_ok(client)
        assert proxy.connections_made == 2
        assert pool_of(client).connections() == 1


_RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


@pytest.mark.parametrize("replayable", [True, False], ids=["bytes-body", "streamed-body"])
async def test_a_request_the_server_drops_on_a_reused_connection_is_sent_once_more(
    replayable: bool,
) -> None:
    """The server answers once, then closes the connection on the next request
    without a byte of answer (it timed the connection out as it arrived)."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    accepted: list[socket.socket] = []

    def receive(conn: socket.socket) -> bytes:
        request = b""
        while b"\r\n\r\n" not in request:
            part = conn.recv(4096)
            if not part:
                break
            request += part
        return request

    def serve() -> None:
        conn, _ = listener.accept()
        accepted.append(conn)
        receive(conn)
        conn.sendall(_RESPONSE)
        receive(conn)
        conn.close()
        listener.settimeout(2 if replayable else 0.3)
        try:
            again, _ = listener.accept()
        except TimeoutError:
            return
        accepted.append(again)
        receive(again)
        again.sendall(_RESPONSE)

    server = threading.Thread(target=serve, daemon=True)
    server.start()

    async def body() -> AsyncIterator[bytes]:
        yield b"x"

    try:
        async with httpx.AsyncClient(transport=ConnectionPool(), timeout=5) as client:
            url = f"http://127.0.0.1:{port}/"
            assert (await client.post(url, content=b"x")).content == b"ok"
            if replayable:
                assert (await client.post(url, content=b"x")).content == b"ok"
                assert len(accepted) == 2
            else:
                # not sent again: the body is gone
                with pytest.raises((httpx.NetworkError, httpx.RemoteProtocolError)):
                    await client.post(url, content=body())
                assert len(accepted) == 1
    finally:
        server.join(5)
        for conn in accepted:
            conn.close()
        listener.close()


# --------------------------------------------------------------------------- limits


async def test_a_request_beyond_max_connections_waits_for_a_free_one(proxy: TcpProxy) -> None:
    async with client_of(proxy, max_connections=1) as client:
        held = await client.send(client.build_request("GET", "/healthz"), stream=True)
        waiting = asyncio.create_task(get_ok(client))
        await asyncio.sleep(0.05)
        assert not waiting.done()
        await held.aread()
        response = await asyncio.wait_for(waiting, 1)
        assert response.extensions["network_stream"] is held.extensions["network_stream"]
        assert proxy.connections_made == 1


async def test_waiters_are_served_first_come_first_served(proxy: TcpProxy) -> None:
    async with client_of(proxy, max_connections=1) as client:
        held = await client.send(client.build_request("GET", "/healthz"), stream=True)
        order: list[int] = []

        async def request(number: int) -> None:
            await get_ok(client)
            order.append(number)

        waiting = [asyncio.create_task(request(n)) for n in range(5)]
        await asyncio.sleep(0.05)
        await held.aread()
        await asyncio.wait_for(asyncio.gather(*waiting), 2)
        assert order == [0, 1, 2, 3, 4]
        assert proxy.connections_made == 1


async def test_no_free_connection_within_the_pool_timeout_is_a_pool_timeout(
    proxy: TcpProxy,
) -> None:
    async with client_of(proxy, max_connections=1) as client:
        held = await client.send(client.build_request("GET", "/healthz"), stream=True)
        started = time.monotonic()
        with pytest.raises(httpx.PoolTimeout):
            await client.get("/healthz")
        assert time.monotonic() - started < 1.0
        await held.aread()
        await get_ok(client)  # the timed-out waiter left no claim behind
        assert proxy.connections_made == 1


async def test_a_cancelled_waiter_leaves_its_place_to_the_next(proxy: TcpProxy) -> None:
    async with client_of(proxy, max_connections=1) as client:
        held = await client.send(client.build_request("GET", "/healthz"), stream=True)
        gone = asyncio.create_task(get_ok(client))
        after = asyncio.create_task(get_ok(client))
        await asyncio.sleep(0.05)
        gone.cancel()
        await held.aread()
        await asyncio.wait_for(after, 1)
        assert gone.cancelled()
        assert pool_of(client).connections() == 1


async def test_idle_connections_beyond_max_keepalive_are_closed(proxy: TcpProxy) -> None:
    async with client_of(proxy, max_keepalive=1) as client:
        responses = [
            await client.send(client.build_request("GET", "/healthz"), stream=True)
            for _ in range(3)
        ]
        for response in responses:
            await response.aread()
        assert pool_of(client).connections() == 1
        await eventually(lambda: proxy.live_connections == 1)


async def test_an_idle_connection_past_keepalive_expiry_is_not_reused(proxy: TcpProxy) -> None:
    async with client_of(proxy, keepalive_expiry=0.1) as client:
        await get_ok(client)
        await get_ok(client)
        assert proxy.connections_made == 1
        await asyncio.sleep(0.2)
        await get_ok(client)
        assert proxy.connections_made == 2
        assert pool_of(client).connections() == 1


async def test_aclose_closes_idle_and_busy_connections(proxy: TcpProxy) -> None:
    async with client_of(proxy) as client:
        busy = await client.send(reply_request(client, "tps=20;tokens=50"), stream=True)
        await get_ok(client)  # on a second connection, idle after
        await eventually(lambda: proxy.live_connections == 2)
        pool = pool_of(client)
        await pool.aclose()
        await eventually(lambda: proxy.live_connections == 0)
        assert pool.connections() == 0
        with pytest.raises(httpx.ReadError):
            await busy.aread()
        await busy.aclose()
        with pytest.raises(RuntimeError):
            await pool.handle_async_request(client.build_request("GET", "/healthz"))


async def test_a_refused_connection_is_a_connect_error_and_frees_its_slot() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # nothing listens here once closed
    async with httpx.AsyncClient(transport=ConnectionPool(max_connections=1)) as client:
        for _ in range(2):
            with pytest.raises(httpx.ConnectError):
                await client.get(f"http://127.0.0.1:{port}/")
