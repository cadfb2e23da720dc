"""Http11Connection and the ConnectionPool over real loopback sockets, against
servers that misbehave the ways upstreams do, on both event loops the server
runs on (asyncio's and uvloop, whose transports are not asyncio.Transport
subclasses)."""

from __future__ import annotations

import asyncio
import ipaddress
import os
import shutil
import socket
import ssl
import struct
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import cast

import httpx
import pytest
import uvloop

from sanic_chat.providers.http11 import _HIGH_WATER, Http11Connection
from sanic_chat.providers.pool import ConnectionPool

LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "asyncio": asyncio.new_event_loop,
    "uvloop": uvloop.new_event_loop,
}
BIG = 16 * 1024 * 1024  # more than loopback's socket buffers hold
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
Scenario = Callable[[], Awaitable[None]]


@pytest.fixture(params=sorted(LOOPS))
def run(request: pytest.FixtureRequest) -> Callable[[Scenario], None]:
    """Run a scenario on a fresh loop of each kind, within 10 s."""

    def runner(scenario: Scenario) -> None:
        async def bounded() -> None:
            await asyncio.wait_for(scenario(), 10)

        with asyncio.Runner(loop_factory=LOOPS[request.param]) as loop:
            loop.run(bounded())

    return runner


# --------------------------------------------------------------------------- servers


@dataclass(eq=False)
class Peer(asyncio.Protocol):
    """The server side of one test connection."""

    paused: bool = False  # never read what the client sends
    transport: asyncio.Transport | None = None
    received: bytearray = field(default_factory=bytearray)
    #: the heads of the requests received, in order (bodies are not split off)
    requests: asyncio.Queue[bytes] = field(default_factory=asyncio.Queue)
    heads: list[bytes] = field(default_factory=list)
    lost: asyncio.Event = field(default_factory=asyncio.Event)
    _unparsed: bytearray = field(default_factory=bytearray)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        if self.paused:
            self.transport.pause_reading()

    def data_received(self, data: bytes) -> None:
        if self.paused and self.transport is not None and self.transport.is_reading():
            # uvloop starts reading an accepted transport after connection_made
            self.transport.pause_reading()
        self.received += data
        self._unparsed += data
        while (end := self._unparsed.find(b"\r\n\r\n")) >= 0:
            head = bytes(self._unparsed[: end + 4])
            del self._unparsed[: end + 4]
            self.heads.append(head)
            self.requests.put_nowait(head)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost.set()

    def send(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)

    def close(self) -> None:
        """A clean close: FIN after whatever was sent."""
        assert self.transport is not None
        self.transport.close()

    def reset(self) -> None:
        """Close with a TCP RST, as a crashed or killed server does."""
        assert self.transport is not None
        sock = self.transport.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.transport.abort()

    async def sent_out(self) -> None:
        """Until the bytes sent so far left for the client."""
        transport = self.transport
        assert transport is not None
        await eventually(lambda: not transport.get_write_buffer_size())


Respond = Callable[[Peer, bytes], Awaitable[None]]


def answer(*parts: bytes, then: Callable[[Peer], None] | None = None, turns: int = 1) -> Respond:
    """Send ``parts`` one write each, the loop running ``turns`` times between
    them, then ``then``."""

    async def respond(peer: Peer, head: bytes) -> None:
        for part in parts:
            peer.send(part)
            for _ in range(turns):
                await asyncio.sleep(0)
        if then is not None:
            await peer.sent_out()
            then(peer)

    return respond


def byte_by_byte(response: bytes) -> Respond:
    # two turns of the loop: on asyncio's one byte can otherwise join the next
    return answer(*(response[i : i + 1] for i in range(len(response))), turns=2)


@dataclass
class Listener:
    """A loopback server; each request a peer receives is answered by
    ``respond`` as it is at the time (``None``: not at all)."""

    port: int
    peers: list[Peer]
    respond: Respond | None = None
    paused: bool = False  # peers accepted from now on never read

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    async def accept(self) -> Peer:
        await eventually(lambda: bool(self.peers), within=5)
        return self.peers[-1]


@asynccontextmanager
async def listening(
    respond: Respond | None = None, *, tls: ssl.SSLContext | None = None, paused: bool = False
) -> AsyncIterator[Listener]:
    loop = asyncio.get_running_loop()
    servers: list[asyncio.Task[None]] = []

    async def serve(peer: Peer) -> None:
        while True:
            head = await peer.requests.get()
            if listener.respond is not None:
                await listener.respond(peer, head)

    def factory() -> Peer:
        peer = Peer(paused=listener.paused)
        listener.peers.append(peer)
        servers.append(loop.create_task(serve(peer)))
        return peer

    server = await loop.create_server(factory, "127.0.0.1", 0, ssl=tls)
    listener = Listener(server.sockets[0].getsockname()[1], [], respond, paused)
    try:
        yield listener
    finally:
        server.close()
        for task in servers:
            task.cancel()
        for peer in listener.peers:
            if peer.transport is not None:
                peer.transport.abort()
        await server.wait_closed()


@asynccontextmanager
async def pooled(
    ssl_context: ssl.SSLContext | None = None, **settings: float
) -> AsyncIterator[tuple[httpx.AsyncClient, ConnectionPool]]:
    pool = ConnectionPool(ssl_context=ssl_context, **settings)  # type: ignore[arg-type]
    async with httpx.AsyncClient(transport=pool, timeout=5) as client:
        yield client, pool
        for origin in pool._origins.values():  # at rest, every slot is an open connection
            assert origin.opened == len(origin.connections)
            assert {connection for connection, _ in origin.idle} <= origin.connections


async def eventually(condition: Callable[[], bool], within: float = 1.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "not within the time allowed"
        await asyncio.sleep(0.005)


async def get_ok(client: httpx.AsyncClient, listener: Listener) -> httpx.Response:
    """A request answered ``ok`` (every test server answers so once told to)."""
    listener.respond = answer(OK)
    response = await client.get(listener.url)
    assert (response.status_code, response.content) == (200, b"ok")
    return response


def connection_of(response: httpx.Response) -> Http11Connection:
    connection = response.extensions["network_stream"]
    assert isinstance(connection, Http11Connection)
    return connection


# --------------------------------------------------------------------------- timeouts


@pytest.mark.parametrize("silent", ["before-the-head", "mid-body"])
def test_a_silent_server_is_a_read_timeout_and_its_connection_is_not_reused(
    run: Callable[[Scenario], None], silent: str
) -> None:
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n"
    respond = answer(head + b"abc") if silent == "mid-body" else None

    async def scenario() -> None:
        async with listening(respond) as listener, pooled() as (client, pool):
            started = time.monotonic()
            with pytest.raises(httpx.ReadTimeout):
                await client.get(listener.url, timeout=httpx.Timeout(5, read=0.2))
            assert 0.15 <= time.monotonic() - started < 1.0
            assert pool.connections() == 0
            await asyncio.wait_for(listener.peers[0].lost.wait(), 1)
            await get_ok(client, listener)
            assert len(listener.peers) == 2

    run(scenario)


@pytest.mark.parametrize("second_timeout", [None, 2.0], ids=["no-read-timeout", "a-longer-one"])
def test_a_later_request_waits_by_its_own_read_timeout_not_an_earlier_ones(
    run: Callable[[Scenario], None], second_timeout: float | None
) -> None:
    """The connection's one timer, armed by a request with a short read timeout,
    must not cut a later request on the same connection that allows longer."""

    async def late(peer: Peer, head: bytes) -> None:
        await asyncio.sleep(0.4)
        peer.send(OK)

    async def scenario() -> None:
        async with listening(answer(OK)) as listener, pooled() as (client, _):
            first = await client.get(listener.url, timeout=httpx.Timeout(5, read=0.1))
            assert first.content == b"ok"
            listener.respond = late
            second = await client.get(listener.url, timeout=httpx.Timeout(5, read=second_timeout))
            assert second.content == b"ok"
            assert connection_of(second) is connection_of(first)

    run(scenario)


# --------------------------------------------------------------------------- cut short


_CUT_BODIES = {
    "content-length": (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n", b"abc"),
    "chunked": (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", b"3\r\nabc\r\n"),
}


@pytest.mark.parametrize("framing", sorted(_CUT_BODIES))
@pytest.mark.parametrize(
    ("cut", "error"),
    [("reset", httpx.ReadError), ("close", httpx.RemoteProtocolError)],
)
def test_a_body_cut_short_is_an_error_and_its_connection_is_not_reused(
    run: Callable[[Scenario], None], framing: str, cut: str, error: type[Exception]
) -> None:
    head, start = _CUT_BODIES[framing]

    async def scenario() -> None:
        async with listening(answer(head + start)) as listener, pooled() as (client, pool):
            received = bytearray()
            with pytest.raises(error):
                async with client.stream("GET", listener.url) as response:
                    async for part in response.aiter_raw():
                        if not received:  # cut once the client has the first bytes
                            getattr(listener.peers[0], cut)()
                        received += part
            assert received == b"abc"
            assert pool.connections() == 0
            await get_ok(client, listener)
            assert len(listener.peers) == 2

    run(scenario)


@pytest.mark.parametrize(
    "sent",
    [b"", b"HTTP/1.1 200 OK\r\nContent-Le", b"HTTP/1.1 100 Continue\r\n\r\n"],
    ids=["nothing", "half-a-head", "an-interim-head"],
)
def test_a_close_before_the_head_ended_is_a_remote_protocol_error(
    run: Callable[[Scenario], None], sent: bytes
) -> None:
    async def scenario() -> None:
        respond = answer(sent, then=Peer.close)
        async with listening(respond) as listener, pooled() as (client, pool):
            with pytest.raises(httpx.RemoteProtocolError):
                await client.get(listener.url)
            assert len(listener.peers) == 1  # a new connection's request is not sent again
            assert pool.connections() == 0
            await get_ok(client, listener)

    run(scenario)


@pytest.mark.parametrize(
    "response",
    [
        b"HTTP/1.1 2x0 OK\r\nContent-Length: 2\r\n\r\nok",
        b"SMTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\nzz\r\n",
    ],
    ids=["status", "protocol", "two-lengths", "chunk-size"],
)
@pytest.mark.parametrize("delivery", ["at-once", "byte-by-byte"])
def test_malformed_response_bytes_are_a_remote_protocol_error(
    run: Callable[[Scenario], None], response: bytes, delivery: str
) -> None:
    async def scenario() -> None:
        respond = answer(response) if delivery == "at-once" else byte_by_byte(response)
        async with listening(respond) as listener, pooled() as (client, pool):
            with pytest.raises(httpx.RemoteProtocolError):
                await client.get(listener.url)
            assert pool.connections() == 0
            await asyncio.wait_for(listener.peers[0].lost.wait(), 1)
            await get_ok(client, listener)

    run(scenario)


# --------------------------------------------------------------------------- framing


_WHOLE_BODIES = {
    "content-length": b"HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\nhello, world",
    "chunked": (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5;ext=1\r\nhello\r\n7\r\n, world\r\n0\r\nX-Trailer: yes\r\n\r\n"
    ),
}


@pytest.mark.parametrize("framing", sorted(_WHOLE_BODIES))
@pytest.mark.parametrize("delivery", ["at-once", "byte-by-byte"])
def test_a_framed_body_comes_out_whole_and_its_connection_is_reused(
    run: Callable[[Scenario], None], framing: str, delivery: str
) -> None:
    response = _WHOLE_BODIES[framing]
    respond = answer(response) if delivery == "at-once" else byte_by_byte(response)

    async def scenario() -> None:
        async with listening(respond) as listener, pooled() as (client, pool):
            first = await client.get(listener.url)
            second = await client.get(listener.url)
            for reply in (first, second):
                assert (reply.status_code, reply.content) == (200, b"hello, world")
            assert connection_of(second) is connection_of(first)
            assert len(listener.peers) == 1
            assert [head.split(b" ", 1)[0] for head in listener.peers[0].heads] == [b"GET"] * 2
            assert pool.idle_connections() == 1

    run(scenario)


@pytest.mark.parametrize("delivery", ["at-once", "in-parts"])
def test_a_body_without_length_or_chunking_ends_at_eof_and_is_not_reused(
    run: Callable[[Scenario], None], delivery: str
) -> None:
    head = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n"
    parts = [b"hello", b", ", b"world"]
    if delivery == "at-once":
        parts = [b"".join(parts)]

    async def scenario() -> None:
        async with listening(answer(head, *parts, then=Peer.close)) as listener:
            async with pooled() as (client, pool):
                response = await client.get(listener.url)
                assert (response.status_code, response.content) == (200, b"hello, world")
                assert pool.connections() == 0
                await get_ok(client, listener)
                assert len(listener.peers) == 2

    run(scenario)


@pytest.mark.parametrize("side", ["server", "client"])
def test_connection_close_from_either_side_is_not_reused(
    run: Callable[[Scenario], None], side: str
) -> None:
    says_close = b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok"
    headers = {"Connection": "close"} if side == "client" else {}

    async def scenario() -> None:
        respond = answer(says_close if side == "server" else OK)
        async with listening(respond) as listener, pooled() as (client, pool):
            response = await client.get(listener.url, headers=headers)
            assert response.content == b"ok"
            assert pool.connections() == 0
            await asyncio.wait_for(listener.peers[0].lost.wait(), 1)
            await get_ok(client, listener)
            assert len(listener.peers) == 2

    run(scenario)


@pytest.mark.parametrize(
    "beyond",
    [OK, b"HTTP/1.1 2", b"okay"],
    ids=["a-second-response", "half-a-head", "junk"],
)
def test_bytes_after_the_response_ended_are_not_trusted(
    run: Callable[[Scenario], None], beyond: bytes
) -> None:
    """Bytes beyond the response (in the same write, or later while idle): the
    response stands as it was framed, the connection is not reused."""

    async def scenario() -> None:
        async with listening(answer(OK + beyond)) as listener, pooled() as (client, pool):
            assert (await client.get(listener.url)).content == b"ok"
            assert pool.connections() == 0
            first = await get_ok(client, listener)
            assert pool.idle_connections() == 1
            listener.peers[1].send(b"unasked")
            await asyncio.wait_for(listener.peers[1].lost.wait(), 1)
            second = await get_ok(client, listener)
            assert connection_of(second) is not connection_of(first)
            assert len(listener.peers) == 3

    run(scenario)


@pytest.mark.parametrize("delivery", ["at-once", "apart"])
def test_interim_responses_before_the_real_one_are_skipped(
    run: Callable[[Scenario], None], delivery: str
) -> None:
    interim = [
        b"HTTP/1.1 100 Continue\r\n\r\n",
        b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n",
    ]
    final = b"HTTP/1.1 201 Created\r\nContent-Length: 4\r\nX-Final: yes\r\n\r\ndone"

    async def scenario() -> None:
        if delivery == "at-once":
            respond = answer(b"".join(interim) + final)
        else:
            respond = answer(*interim, final)
        async with listening(respond) as listener, pooled() as (client, _):
            response = await client.post(listener.url, content=b"payload")
            assert (response.status_code, response.content) == (201, b"done")
            assert response.reason_phrase == "Created"
            assert response.headers["x-final"] == "yes"
            assert "link" not in response.headers
            again = await get_ok(client, listener)
            assert connection_of(again) is connection_of(response)

    run(scenario)


def test_a_head_request_gets_no_body_and_does_not_hang(run: Callable[[Scenario], None]) -> None:
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\nContent-Type: text/plain\r\n\r\n"

    async def scenario() -> None:
        async with listening(answer(head)) as listener, pooled() as (client, _):
            response = await asyncio.wait_for(client.head(listener.url), 2)
            assert (response.status_code, response.content) == (200, b"")
            assert response.headers["content-length"] == "1000"
            assert listener.peers[0].heads[0].startswith(b"HEAD / HTTP/1.1\r\n")
            await get_ok(client, listener)

    run(scenario)


# --------------------------------------------------------------------------- flow control


def test_a_slow_reader_holds_a_large_body_back_at_the_server(
    run: Callable[[Scenario], None],
) -> None:
    body = os.urandom(BIG)
    head = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % BIG

    async def scenario() -> None:
        async with listening(answer(head + body)) as listener, pooled() as (client, pool):
            async with client.stream("GET", listener.url) as response:
                await asyncio.sleep(0.3)  # the client reads nothing meanwhile
                transport = listener.peers[0].transport
                assert transport is not None
                # with reading paused the body stays queued at the server
                held = transport.get_write_buffer_size()
                assert held > BIG - _HIGH_WATER - 8 * 1024 * 1024, held
                received = bytearray()
                async for part in response.aiter_raw():
                    received += part
            assert received == body
            assert pool.idle_connections() == 1

    run(scenario)


async def _parts(size: int, count: int) -> AsyncIterator[bytes]:
    for _ in range(count):
        yield os.urandom(size)


@pytest.mark.parametrize("body", ["bytes", "streamed"])
def test_a_large_request_to_a_server_that_does_not_read_is_a_write_timeout(
    run: Callable[[Scenario], None], body: str
) -> None:
    async def scenario() -> None:
        async with listening(paused=True) as listener, pooled() as (client, pool):
            content = os.urandom(BIG) if body == "bytes" else _parts(1024 * 1024, 16)
            started = time.monotonic()
            with pytest.raises(httpx.WriteTimeout):
                await client.post(
                    listener.url, content=content, timeout=httpx.Timeout(5, write=0.3)
                )
            assert time.monotonic() - started < 2.0
            assert pool.connections() == 0
            # the connection is dropped with the rest of the body unsent
            peer = listener.peers[0]
            assert peer.transport is not None
            peer.paused = False
            peer.transport.resume_reading()
            await asyncio.wait_for(peer.lost.wait(), 1)
            assert len(peer.received) < BIG
            listener.paused = False
            await get_ok(client, listener)

    run(scenario)


# --------------------------------------------------------------------------- connecting


def test_a_refused_port_is_a_connect_error(run: Callable[[Scenario], None]) -> None:
    async def scenario() -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]  # nothing listens here once closed
        async with pooled(max_connections=1) as (client, pool):
            for _ in range(2):  # the failed connect gave its slot back
                with pytest.raises(httpx.ConnectError):
                    await client.get(f"http://127.0.0.1:{port}/")
            assert pool.connections() == 0

    run(scenario)


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(cert, key) PEM files of a self-signed certificate for localhost and 127.0.0.1."""
    folder = tmp_path_factory.mktemp("tls")
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    try:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID
    except ImportError:
        if shutil.which("openssl") is None:
            pytest.skip("neither cryptography nor openssl is available to make a certificate")
        subprocess.run(
            [
                *("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt"),
                *("ec_paramgen_curve:prime256v1", "-nodes", "-days", "1", "-subj", "/CN=localhost"),
                *("-keyout", str(key_path), "-out", str(cert_path)),
                *("-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"),
            ],
            check=True,
            capture_output=True,
        )
        return cert_path, key_path
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def _contexts(certificate: tuple[Path, Path]) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """(server, client) contexts; the client trusts only the test certificate."""
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(*certificate)
    return server, ssl.create_default_context(cafile=str(certificate[0]))


def https(listener: Listener) -> str:
    return f"https://127.0.0.1:{listener.port}/"


def test_https_through_the_pool_to_a_trusted_server(
    run: Callable[[Scenario], None], certificate: tuple[Path, Path]
) -> None:
    server_tls, client_tls = _contexts(certificate)

    async def scenario() -> None:
        chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"
        async with listening(answer(chunked), tls=server_tls) as listener:
            async with pooled(client_tls) as (client, _):
                first = await client.get(https(listener))
                second = await client.get(https(listener))
                for response in (first, second):
                    assert (response.status_code, response.content) == (200, b"ok")
                stream = first.extensions["network_stream"]
                assert isinstance(stream.get_extra_info("ssl_object"), ssl.SSLObject)
                assert stream.get_extra_info("peername")[:2] == ("127.0.0.1", listener.port)
                assert connection_of(second) is connection_of(first)
                assert listener.peers[0].heads[0].startswith(b"GET / HTTP/1.1\r\n")

    run(scenario)


def test_a_certificate_for_another_name_is_a_connect_error(
    run: Callable[[Scenario], None], certificate: tuple[Path, Path]
) -> None:
    server_tls, client_tls = _contexts(certificate)

    async def scenario() -> None:
        async with listening(answer(OK), tls=server_tls) as listener:
            async with pooled(client_tls, max_connections=1) as (client, pool):
                with pytest.raises(httpx.ConnectError):
                    await client.get(https(listener), extensions={"sni_hostname": "example.com"})
                assert pool.connections() == 0
                response = await client.get(https(listener))  # the slot was given back
                assert response.content == b"ok"

    run(scenario)


def test_a_server_that_never_shakes_hands_is_a_connect_timeout(
    run: Callable[[Scenario], None], certificate: tuple[Path, Path]
) -> None:
    _, client_tls = _contexts(certificate)

    async def scenario() -> None:
        async with listening() as listener:  # plain TCP, says nothing
            async with pooled(client_tls) as (client, pool):
                started = time.monotonic()
                with pytest.raises(httpx.ConnectTimeout):
                    await client.get(https(listener), timeout=httpx.Timeout(5, connect=0.3))
                assert time.monotonic() - started < 2.0
                assert pool.connections() == 0
                peer = await listener.accept()
                await asyncio.wait_for(peer.lost.wait(), 1)

    run(scenario)


# --------------------------------------------------------------------------- the pool


@pytest.mark.parametrize("noticed", [True, False], ids=["eof-seen", "only-in-the-socket"])
def test_an_idle_connection_the_server_closed_is_replaced(
    run: Callable[[Scenario], None], noticed: bool
) -> None:
    """``noticed``: the loop ran after the close (the protocol saw the EOF), or
    not (the request goes out on the dead connection, fails without a byte of
    answer, and is sent once more on a new one)."""

    async def scenario() -> None:
        # a server on its own thread: it closes while the client's loop is blocked
        listener = socket.create_server(("127.0.0.1", 0))
        port = listener.getsockname()[1]
        close_first, first_closed = threading.Event(), threading.Event()
        accepted: list[socket.socket] = []

        def serve() -> None:
            for number in range(2):
                conn, _ = listener.accept()
                accepted.append(conn)
                request = b""
                while b"\r\n\r\n" not in request:
                    request += conn.recv(4096)
                conn.sendall(OK)
                if number == 0:
                    close_first.wait(5)
                    conn.close()
                    first_closed.set()

        server = threading.Thread(target=serve, daemon=True)
        server.start()
        try:
            async with pooled() as (client, pool):
                url = f"http://127.0.0.1:{port}/"
                first = await client.get(url)
                assert first.content == b"ok"
                assert pool.idle_connections() == 1
                close_first.set()
                assert first_closed.wait(5)  # blocks the loop: nothing is read meanwhile
                if noticed:
                    await eventually(lambda: not connection_of(first).is_reusable())
                else:  # the pool will hand out the dead connection, and retry
                    assert connection_of(first).is_reusable()
                second = await client.get(url)
                assert second.content == b"ok"
                assert connection_of(second) is not connection_of(first)
                assert len(accepted) == 2
                assert pool.connections() == 1
        finally:
            server.join(5)
            for conn in accepted:
                conn.close()
            listener.close()

    run(scenario)


@pytest.mark.parametrize("blocked", ["waiting-for-the-head", "reading-the-body"])
def test_a_cancelled_request_closes_its_connection_and_frees_its_slot(
    run: Callable[[Scenario], None], blocked: str
) -> None:
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n"

    async def scenario() -> None:
        respond = answer(head + b"abc") if blocked == "reading-the-body" else None
        async with listening(respond) as listener, pooled(max_connections=1) as (client, pool):
            reading = asyncio.Event()

            async def read() -> None:
                async with client.stream("GET", listener.url) as response:
                    async for _ in response.aiter_raw():
                        reading.set()

            reader = asyncio.create_task(read())
            if blocked == "reading-the-body":
                await asyncio.wait_for(reading.wait(), 5)
            else:
                await eventually(lambda: bool(listener.peers and listener.peers[0].heads))
            await asyncio.sleep(0.05)
            reader.cancel()
            with pytest.raises(asyncio.CancelledError):
                await reader
            assert pool.connections() == 0
            await asyncio.wait_for(listener.peers[0].lost.wait(), 1)
            listener.respond = answer(OK)
            response = await client.get(listener.url, timeout=httpx.Timeout(5, pool=0.5))
            assert response.content == b"ok"
            assert len(listener.peers) == 2

    run(scenario)
