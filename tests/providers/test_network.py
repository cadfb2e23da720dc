"""The asyncio network backend over real loopback sockets, on both event loops
the server runs on (asyncio's and uvloop), and its use by the catalog."""

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
from typing import Any, cast

import httpcore
import httpx
import pytest
import uvloop

from sanic_chat.fake_llm import FakeLLM
from sanic_chat.providers.catalog import ModelCatalog, _own_transport, pooled_transport
from sanic_chat.providers.network import HIGH_WATER, AsyncioNetworkBackend, AsyncioStream
from sanic_chat.providers.pool import ConnectionPool
from sanic_chat.providers.spec import ModelSpec

LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "asyncio": asyncio.new_event_loop,
    "uvloop": uvloop.new_event_loop,
}
BIG = 16 * 1024 * 1024  # more than loopback's socket buffers hold
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


# --------------------------------------------------------------------------- peers


@dataclass(eq=False)
class Peer(asyncio.Protocol):
    """The server side of one test connection."""

    transport: asyncio.Transport | None = None
    received: bytearray = field(default_factory=bytearray)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    lost: asyncio.Event = field(default_factory=asyncio.Event)
    echo: bool = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses

    def data_received(self, data: bytes) -> None:
        self.received += data
        self.arrived.set()
        if self.echo:
            self.send(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost.set()

    def send(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)

    def reset(self) -> None:
        """Close with a TCP RST, as a crashed or killed server does."""
        assert self.transport is not None
        sock = self.transport.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.transport.abort()


@dataclass
class Listener:
    port: int
    peers: asyncio.Queue[Peer]

    async def accept(self) -> Peer:
        return await asyncio.wait_for(self.peers.get(), 5)


@asynccontextmanager
async def listening(
    *, echo: bool = False, tls: ssl.SSLContext | None = None
) -> AsyncIterator[Listener]:
    loop = asyncio.get_running_loop()
    peers: asyncio.Queue[Peer] = asyncio.Queue()
    made: list[Peer] = []

    def factory() -> Peer:
        peer = Peer(echo=echo)
        made.append(peer)
        peers.put_nowait(peer)
        return peer

    server = await loop.create_server(factory, "127.0.0.1", 0, ssl=tls)
    try:
        yield Listener(server.sockets[0].getsockname()[1], peers)
    finally:
        server.close()
        for peer in made:
            if peer.transport is not None:
                peer.transport.abort()
        await server.wait_closed()


async def connect(port: int, **kw: Any) -> AsyncioStream:
    stream = await AsyncioNetworkBackend().connect_tcp("127.0.0.1", port, timeout=5, **kw)
    assert isinstance(stream, AsyncioStream)
    return stream


async def read_exactly(stream: httpcore.AsyncNetworkStream, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        part = await stream.read(65536, timeout=5)
        assert part, f"EOF after {len(data)} of {size} bytes"
        data += part
    return bytes(data)


# --------------------------------------------------------------------------- read and write


def test_bytes_written_come_back(run: Callable[[Scenario], None]) -> None:
    async def scenario() -> None:
        async with listening(echo=True) as listener:
            stream = await connect(listener.port)
            for message in (b"0123456789", b"abcdef"):
                await stream.write(message, timeout=5)
                assert await read_exactly(stream, len(message)) == message
            await stream.aclose()

    run(scenario)


def test_buffered_bytes_come_out_in_order_up_to_max_bytes(run: Callable[[Scenario], None]) -> None:
    async def scenario() -> None:
        async with listening() as listener:
            stream = await connect(listener.port)
            peer = await listener.accept()
            for part in (b"ab", b"cd", b"efgh"):
                peer.send(part)
                await asyncio.sleep(0.02)  # separate segments, separate data_received
            assert await stream.read(3, timeout=5) == b"abc"
            assert await stream.read(100, timeout=5) == b"defgh"
            await stream.aclose()

    run(scenario)


def test_eof_comes_after_the_last_bytes_and_stays(run: Callable[[Scenario], None]) -> None:
    async def scenario() -> None:
        async with listening() as listener:
            stream = await connect(listener.port)
            peer = await listener.accept()
            peer.send(b"last words")
            assert peer.transport is not None
            peer.transport.close()
            assert await read_exactly(stream, 10) == b"last words"
            assert await stream.read(100, timeout=5) == b""
            assert await stream.read(100, timeout=5) == b""
            assert stream.get_extra_info("is_readable") is True
            with pytest.raises(httpcore.WriteError):
                await stream.write(b"too late", timeout=5)
            await stream.aclose()

    run(scenario)


def test_a_silent_peer_is_a_read_timeout_and_the_stream_still_works(
    run: Callable[[Scenario], None],
) -> None:
    async def scenario() -> None:
        async with listening() as listener:
            stream = await connect(listener.port)
            peer = await listener.accept()
            started = time.monotonic()
            with pytest.raises(httpcore.ReadTimeout):
                await stream.read(100, timeout=0.2)
            assert 0.15 <= time.monotonic() - started < 1.0
            peer.send(b"late")
            assert await stream.read(100, timeout=5) == b"late"
            await stream.aclose()

    run(scenario)


def test_a_peer_reset_is_a_read_error_after_the_bytes_before_it(
    run: Callable[[Scenario], None],
) -> None:
    async def scenario() -> None:
        async with listening() as listener:
            stream = await connect(listener.port)
            peer = await listener.accept()
            peer.send(b"partial")
            assert await read_exactly(stream, 7) == b"partial"
            peer.reset()
            with pytest.raises(httpcore.ReadError):
                await stream.read(100, timeout=5)
            with pytest.raises(httpcore.WriteError):
                await stream.write(b"x", timeout=5)
            await stream.aclose()

    run(scenario)


def test_a_slow_reader_holds_a_large_body_back_at_the_sender(
    run: Callable[[Scenario], None],
) -> None:
    async def scenario() -> None:
        body = os.urandom(BIG)
        async with listening() as listener:
            stream = await connect(listener.port)
            peer = await listener.accept()
            peer.send(body)
            await asyncio.sleep(0.3)  # the client reads nothing meanwhile
            assert peer.transport is not None
            # with reading paused the body stays queued at the server
            held = peer.transport.get_write_buffer_size()
            assert held > BIG - HIGH_WATER - 8 * 1024 * 1024, held
            assert await read_exactly(stream, BIG) == body
            await stream.aclose()

    run(scenario)


def test_a_large_write_waits_for_the_peer_to_drain_it(run: Callable[[Scenario], None]) -> None:
    async def scenario() -> None:
        body = os.urandom(BIG)
        async with listening() as listener:
            stream = await connect(listener.port)
            peer = await listener.accept()
            await stream.write(body, timeout=5)
            while len(peer.received) < BIG:
                await asyncio.wait_for(peer.arrived.wait(), 5)
                peer.arrived.clear()
            assert peer.received == body
            await stream.aclose()

    run(scenario)


def test_a_peer_that_stops_reading_is_a_write_timeout_and_aclose_drops_the_rest(
    run: Callable[[Scenario], None],
) -> None:
    async def scenario() -> None:
        async with listening() as listener:
            stream = await connect(listener.port)
            peer = await listener.accept()
            assert peer.transport is not None
            peer.transport.pause_reading()
            started = time.monotonic()
            with pytest.raises(httpcore.WriteTimeout):
                await stream.write(os.urandom(BIG), timeout=0.3)
            assert time.monotonic() - started < 2.0
            # aclose drops the queued bytes: the peer sees the end without them
            await stream.aclose()
            peer.transport.resume_reading()
            await asyncio.wait_for(peer.lost.wait(), 1.0)
            assert len(peer.received) < BIG

    run(scenario)


def test_cancelling_a_blocked_read_keeps_the_connection_and_later_bytes(
    run: Callable[[Scenario], None],
) -> None:
    async def scenario() -> None:
        async with listening() as listener:
            stream = await connect(listener.port)
            peer = await listener.accept()
            reader = asyncio.create_task(stream.read(100, timeout=0.3))
            await asyncio.sleep(0.05)
            reader.cancel()
            with pytest.raises(asyncio.CancelledError):
                await reader
            await asyncio.sleep(0.4)  # past the cancelled read's timer
            assert not peer.lost.is_set()
            peer.send(b"still here")
            assert await read_exactly(stream, 10) == b"still here"
            await stream.write(b"and me", timeout=5)
            await asyncio.wait_for(peer.arrived.wait(), 5)
            assert peer.received == b"and me"
            await stream.aclose()

    run(scenario)


def test_aclose_disconnects_the_peer_at_once_and_ends_reads_and_writes(
    run: Callable[[Scenario], None],
) -> None:
    async def scenario() -> None:
        async with listening() as listener:
            stream = await connect(listener.port)
            peer = await listener.accept()
            reader = asyncio.create_task(stream.read(100))
            await asyncio.sleep(0.05)
            await stream.aclose()
            await asyncio.wait_for(peer.lost.wait(), 1.0)
            with pytest.raises(httpcore.ReadError):
                await reader
            with pytest.raises(httpcore.ReadError):
                await stream.read(100)
            with pytest.raises(httpcore.WriteError):
                await stream.write(b"x")
            await stream.aclose()  # twice is fine

    run(scenario)


# --------------------------------------------------------------------------- connecting


def test_a_refused_connection_is_a_connect_error(run: Callable[[Scenario], None]) -> None:
    async def scenario() -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        with pytest.raises(httpcore.ConnectError):
            await AsyncioNetworkBackend().connect_tcp("127.0.0.1", port, timeout=5)

    run(scenario)


def test_a_connect_that_gets_no_answer_is_a_connect_timeout(
    run: Callable[[Scenario], None],
) -> None:
    async def scenario() -> None:
        # a full accept queue makes the kernel drop further SYNs
        with socket.socket() as full:
            full.bind(("127.0.0.1", 0))
            full.listen(0)
            port = full.getsockname()[1]
            waiting = [socket.socket() for _ in range(3)]
            for sock in waiting:
                sock.setblocking(False)
                try:
                    sock.connect(("127.0.0.1", port))
                except BlockingIOError:
                    pass
            try:
                started = time.monotonic()
                with pytest.raises(httpcore.ConnectTimeout):
                    await AsyncioNetworkBackend().connect_tcp("127.0.0.1", port, timeout=0.3)
                assert time.monotonic() - started < 2.0
            finally:
                for sock in waiting:
                    sock.close()

    run(scenario)


def test_socket_options_and_local_address_are_applied(run: Callable[[Scenario], None]) -> None:
    async def scenario() -> None:
        async with listening() as listener:
            stream = await connect(
                listener.port,
                local_address="127.0.0.1",
                socket_options=[(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)],
            )
            sock = stream.get_extra_info("socket")
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
            assert stream.get_extra_info("client_addr")[0] == "127.0.0.1"
            assert stream.get_extra_info("server_addr") == ("127.0.0.1", listener.port)
            assert stream.get_extra_info("ssl_object") is None
            assert stream.get_extra_info("is_readable") is False
            await stream.aclose()

    run(scenario)


def test_unix_sockets_connect_too(run: Callable[[Scenario], None], tmp_path: Path) -> None:
    async def scenario() -> None:
        path = str(tmp_path / "echo.sock")
        peers: list[Peer] = []

        def factory() -> Peer:
            peers.append(Peer(echo=True))
            return peers[-1]

        server = await asyncio.get_running_loop().create_unix_server(factory, path)
        stream = await AsyncioNetworkBackend().connect_unix_socket(path, timeout=5)
        await stream.write(b"over a file", timeout=5)
        assert await read_exactly(stream, 11) == b"over a file"
        await stream.aclose()
        server.close()
        await server.wait_closed()

    run(scenario)


# --------------------------------------------------------------------------- the pool


def test_is_readable_turns_true_when_the_peer_closes_an_idle_connection(
    run: Callable[[Scenario], None],
) -> None:
    async def scenario() -> None:
        async with listening() as listener:
            stream = await connect(listener.port)
            peer = await listener.accept()
            assert stream.get_extra_info("is_readable") is False
            assert peer.transport is not None
            peer.transport.close()
            for _ in range(100):
                if stream.get_extra_info("is_readable"):
                    break
                await asyncio.sleep(0.01)
            assert stream.get_extra_info("is_readable") is True
            await stream.aclose()

    run(scenario)


_RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


@pytest.mark.parametrize("noticed", [True, False], ids=["eof-seen", "only-in-the-socket"])
def test_the_pool_replaces_a_pooled_connection_the_server_closed(
    run: Callable[[Scenario], None], noticed: bool
) -> None:
    """``noticed``: the loop ran after the close (the protocol saw the EOF), or
    not (only polling the socket can tell)."""

    async def scenario() -> None:
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
                conn.sendall(_RESPONSE)
                if number == 0:
                    close_first.wait(5)
                    conn.close()
                    first_closed.set()

        server = threading.Thread(target=serve, daemon=True)
        server.start()
        pool = httpcore.AsyncConnectionPool(network_backend=AsyncioNetworkBackend())
        try:
            first = await pool.request("GET", f"http://127.0.0.1:{port}/")
            assert (first.status, first.content) == (200, b"ok")
            close_first.set()
            assert first_closed.wait(5)  # blocks the loop: nothing is read meanwhile
            if noticed:
                await asyncio.sleep(0.05)
            second = await pool.request("GET", f"http://127.0.0.1:{port}/")
            assert (second.status, second.content) == (200, b"ok")
            assert len(accepted) == 2
        finally:
            await pool.aclose()
            server.join(5)
            for conn in accepted:
                conn.close()
            listener.close()

    run(scenario)


# --------------------------------------------------------------------------- TLS


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


def test_start_tls_upgrades_the_stream(
    run: Callable[[Scenario], None], certificate: tuple[Path, Path]
) -> None:
    server_tls, client_tls = _contexts(certificate)

    async def scenario() -> None:
        async with listening(echo=True, tls=server_tls) as listener:
            stream = await connect(listener.port)
            tls = await stream.start_tls(client_tls, server_hostname="localhost", timeout=5)
            assert isinstance(tls.get_extra_info("ssl_object"), ssl.SSLObject)
            assert tls.get_extra_info("server_addr") == ("127.0.0.1", listener.port)
            await tls.write(b"secret", timeout=5)
            assert await read_exactly(tls, 6) == b"secret"
            assert tls.get_extra_info("is_readable") is False
            peer = await listener.accept()
            await tls.aclose()
            await asyncio.wait_for(peer.lost.wait(), 1.0)

    run(scenario)


def test_https_requests_through_a_pool_on_the_backend(
    run: Callable[[Scenario], None], certificate: tuple[Path, Path]
) -> None:
    server_tls, client_tls = _contexts(certificate)

    async def scenario() -> None:
        async with listening(tls=server_tls) as listener:
            pool = httpcore.AsyncConnectionPool(
                ssl_context=client_tls, network_backend=AsyncioNetworkBackend()
            )
            url = f"https://127.0.0.1:{listener.port}/"
            requested = asyncio.create_task(pool.request("GET", url))
            peer = await listener.accept()
            await asyncio.wait_for(peer.arrived.wait(), 5)
            assert peer.received.startswith(b"GET / HTTP/1.1\r\n")
            peer.send(_RESPONSE)
            response = await requested
            assert (response.status, response.content) == (200, b"ok")
            await pool.aclose()

    run(scenario)


def test_a_certificate_for_another_name_is_a_connect_error(
    run: Callable[[Scenario], None], certificate: tuple[Path, Path]
) -> None:
    server_tls, client_tls = _contexts(certificate)

    async def scenario() -> None:
        async with listening(tls=server_tls) as listener:
            stream = await connect(listener.port)
            with pytest.raises(httpcore.ConnectError):
                await stream.start_tls(client_tls, server_hostname="example.com", timeout=5)
            with pytest.raises(httpcore.ReadError):
                await stream.read(100)

    run(scenario)


def test_a_server_that_never_shakes_hands_is_a_connect_timeout(
    run: Callable[[Scenario], None], certificate: tuple[Path, Path]
) -> None:
    _, client_tls = _contexts(certificate)

    async def scenario() -> None:
        async with listening() as listener:  # plain TCP, says nothing
            stream = await connect(listener.port)
            peer = await listener.accept()
            started = time.monotonic()
            with pytest.raises(httpcore.ConnectTimeout):
                await stream.start_tls(client_tls, server_hostname="localhost", timeout=0.3)
            assert time.monotonic() - started < 2.0
            await asyncio.wait_for(peer.lost.wait(), 1.0)

    run(scenario)


# --------------------------------------------------------------------------- the catalog


def test_httpx_still_has_the_private_pool_the_catalog_replaces() -> None:
    # pooled_transport swaps AsyncHTTPTransport._pool; an httpx without it must
    # fail here, loudly, before the catalog silently streams over anyio again
    assert isinstance(httpx.AsyncHTTPTransport()._pool, httpcore.AsyncConnectionPool)
    assert isinstance(pooled_transport()._pool._network_backend, AsyncioNetworkBackend)


async def test_catalog_clients_stream_over_the_asyncio_backend(fake: FakeLLM) -> None:
    spec = ModelSpec(name="m", provider="openai", model="m", base_url=fake.base_url)
    catalog = ModelCatalog([spec], "m")
    try:
        provider = catalog.get("m")
        client: httpx.AsyncClient = provider.client  # type: ignore[attr-defined]
        async with client.stream("GET", fake.base_url + "/healthz") as response:
            assert response.status_code == 200
            assert isinstance(response.extensions["network_stream"], AsyncioStream)
    finally:
        await catalog.aclose()


def test_a_proxy_in_the_environment_leaves_httpx_its_own_transport(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("all_proxy", raising=False)
    assert isinstance(_own_transport(), ConnectionPool)
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.test:3128")
    assert _own_transport() is None
