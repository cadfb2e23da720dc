"""One WebSocket connection (or twenty) sending frames as fast as it can.

A raw-socket client does the WebSocket upgrade itself, then writes masked
frames (prebuilt, many per ``send``) as fast as the kernel takes them for a
bounded time, while a second thread reads and discards whatever the server
sends (so the server never closes it as a slow reader: the flood is input,
not output). Meanwhile a bystander -- another user on an ordinary client --
sends ``ping`` every 50 ms and times each ``pong``. The server's RSS is read
from ``/proc/<pid>/status`` during the flood and after the flooders close.

    python -m benchmarks.flood --connections 1 --seconds 10
    python -m benchmarks.flood --connections 20 --seconds 10 --frame ws-ping

The test (tests/transports/test_flood.py) uses the same client and checks
bounds; this script prints the numbers RESULTS.md records (bystander p99 idle
and under flood, RSS peak and after close).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import multiprocessing
import os
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from websockets.asyncio.client import connect

__all__ = [
    "FRAMES",
    "FloodResult",
    "bystander_pings",
    "flood",
    "masked_frame",
    "rss_mib",
    "serve",
]

#: what a flooder sends: our protocol's ``ping``, a type nobody handles, or
#: WebSocket-level pings (opcode 9: answered by Sanic, never seen by our handler)
FRAMES = {
    "ping": (0x1, b'{"type":"ping"}'),
    "unknown": (0x1, b'{"type":"x"}'),
    "ws-ping": (0x9, b"p"),
}


def masked_frame(opcode: int, payload: bytes, mask: bytes = b"\x01\x02\x03\x04") -> bytes:
    """One final client frame (clients must mask, RFC 6455 §5.3); payload < 126 bytes."""
    assert len(payload) < 126
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return struct.pack("!BB", 0x80 | opcode, 0x80 | len(payload)) + mask + masked


def cpu_seconds(pid: int) -> float:
    """User + system CPU time ``pid`` has used, in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mib(pid: int) -> float:
    """Resident set size of ``pid`` in MiB (VmRSS)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def _upgrade(host: str, port: int) -> socket.socket:
    sock = socket.create_connection((host, port), timeout=10)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        (
            f"GET /ws HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError(f"closed during the upgrade: {head!r}")
        head += chunk
    if not head.startswith(b"HTTP/1.1 101"):
        status = head.split(b"\r\n", 1)[0]
        raise ConnectionError(f"upgrade refused: {status!r}")
    return sock


@dataclass
class FloodResult:
    frames_sent: int = 0
    bytes_read: int = 0
    errors: list[str] = field(default_factory=list)


def flood(
    host: str, port: int, *, seconds: float, connections: int = 1, frame: str = "ping"
) -> FloodResult:
    """``connections`` raw sockets writing ``frame`` as fast as they can for
    ``seconds``, reading and discarding what comes back; then closed. Blocking."""
    opcode, payload = FRAMES[frame]
    batch = masked_frame(opcode, payload) * 2000
    per_batch = 2000
    result = FloodResult()
    lock = threading.Lock()
    deadline = time.monotonic() + seconds
    sockets = [_upgrade(host, port) for _ in range(connections)]

    def write(sock: socket.socket) -> None:
        sent = 0
        sock.settimeout(0.5)
        try:
            while time.monotonic() < deadline:
                try:
                    sock.sendall(batch)
                    sent += per_batch
                except TimeoutError:
                    continue  # the server stopped reading: try again until the deadline
        except OSError as exc:
            with lock:
                result.errors.append(f"write: {exc}")
        with lock:
            result.frames_sent += sent

    def read(sock: socket.socket) -> None:
        got = 0
        sock_r = sock.dup()
        sock_r.settimeout(0.5)
        try:
            while time.monotonic() < deadline + 1:
                try:
                    chunk = sock_r.recv(1 << 16)
                except TimeoutError:
                    continue
                if not chunk:
                    break
                got += len(chunk)
        except OSError:
            pass
        finally:
            sock_r.close()
        with lock:
            result.bytes_read += got

    threads = [threading.Thread(target=f, args=(s,)) for s in sockets for f in (write, read)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for sock in sockets:
        sock.close()
    return result


async def bystander_pings(ws_url: str, seconds: float, interval: float = 0.05) -> list[float]:
    """Round trips (seconds) of ``ping`` → ``pong`` on an ordinary client, one
    every ``interval`` for ``seconds``. A ping not answered within 30 s raises."""
    rtts: list[float] = []
    async with connect(ws_url, max_size=None, open_timeout=30) as ws:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            start = time.perf_counter()
            await ws.send('{"type":"ping"}')
            while True:
                reply = await asyncio.wait_for(ws.recv(), 30)
                if '"pong"' in str(reply):
                    break
            rtts.append(time.perf_counter() - start)
            await asyncio.sleep(interval)
    return rtts


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def serve(env: dict[str, str] | None = None) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """A ``sanic-chat serve`` subprocess (one process, SQLite, no auth) on a free port."""
    port = _free_port()
    with tempfile.TemporaryDirectory(prefix="sanic-chat-flood-") as tmp:
        full_env = {**os.environ, "SANIC_CHAT_DATA_DIR": tmp, **(env or {})}
        log = open(Path(tmp) / "server.log", "wb")
        process = subprocess.Popen(
            [sys.executable, "-m", "sanic_chat", "serve", "--port", str(port)],
            env=full_env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + 30
            while True:
                if process.poll() is not None:
                    raise RuntimeError((Path(tmp) / "server.log").read_text())
                try:
                    if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError("server did not start")
                time.sleep(0.1)
            yield process, port
        finally:
            process.terminate()
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
            log.close()


def _p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def _flood_into(
    sent: Any, host: str, port: int, seconds: float, connections: int, frame: str
) -> None:
    result = flood(host, port, seconds=seconds, connections=connections, frame=frame)
    sent.put(result.frames_sent)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--frame", choices=sorted(FRAMES), default="ping")
    parser.add_argument(
        "--pin",
        action="store_true",
        help="server and bystander on CPU 0, the flooders on CPU 1 (an attacker is on "
        "another machine: this keeps the flooders' own work off the server's core)",
    )
    args = parser.parse_args(argv)
    with serve() as (process, port):
        if args.pin:
            os.sched_setaffinity(process.pid, {0})
            os.sched_setaffinity(0, {0})
        ws_url = f"ws://127.0.0.1:{port}/ws"
        idle = asyncio.run(bystander_pings(ws_url, 5.0))
        before = rss_mib(process.pid)
        cpu_before = cpu_seconds(process.pid)
        samples: list[float] = []
        done = threading.Event()

        def sample() -> None:
            while not done.wait(0.25):
                samples.append(rss_mib(process.pid))

        sampler = threading.Thread(target=sample)
        sampler.start()
        # the flooders run in a process of their own: as threads of this one they
        # would hold the GIL the bystander's event loop needs, and its round trips
        # would measure this script, not the server
        context = multiprocessing.get_context("spawn")
        sent = context.Queue()
        flooder = context.Process(
            target=_flood_into,
            args=(sent, "127.0.0.1", port, args.seconds, args.connections, args.frame),
        )
        flooder.start()
        if args.pin and flooder.pid is not None:
            os.sched_setaffinity(flooder.pid, {1})
        time.sleep(1.0)  # the process starts, and its connections upgrade
        loaded = asyncio.run(bystander_pings(ws_url, args.seconds - 1.5))
        frames_sent = sent.get(timeout=60)
        server_cpu = cpu_seconds(process.pid) - cpu_before
        flooder.join()
        time.sleep(3.0)
        done.set()
        sampler.join()
        after = rss_mib(process.pid)
    print(
        f"{args.connections} connection(s), {args.frame} frames, {args.seconds:.0f} s: "
        f"{frames_sent:,} frames written ({frames_sent / args.seconds:,.0f}/s)"
    )
    print(f"server RSS: {before:.0f} MiB before, peak {max(samples):.0f}, {after:.0f} after close")
    print(
        f"server CPU during the flood: {server_cpu:.2f} s ({server_cpu / args.seconds:.0%} of a core)"
    )
    print(
        f"bystander ping RTT idle: p50 {_p(idle, 0.5):.1f} ms, p99 {_p(idle, 0.99):.1f} ms "
        f"({len(idle)} pings); under flood: p50 {_p(loaded, 0.5):.1f} ms, "
        f"p99 {_p(loaded, 0.99):.1f} ms, max {max(loaded) * 1000:.1f} ms ({len(loaded)} pings)"
    )
    print(f"mean idle RTT {statistics.mean(idle) * 1000:.2f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
