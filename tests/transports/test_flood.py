"""A WebSocket flood: bounded server memory, and a bystander still answered.

Raw-socket clients (benchmarks/flood.py) write masked ``ping`` frames as fast
as the kernel takes them, on one connection and then on twenty, while another
user pings on an ordinary client. Before sanic_internals.bound_websocket_input,
one connection took the server from 85 to 379 MiB in 10 s and twenty stalled it
so that the bystander could not connect (benchmarks/RESULTS.md, "WebSocket input
flood"). The bystander's latency is measured by the benchmark, not here: this
test only asks that every one of its pings is answered (within 30 s each).
"""

from __future__ import annotations

import asyncio
import threading
import time
from urllib.parse import urlsplit

from benchmarks.flood import bystander_pings, flood, rss_mib
from tests.server import run_server

#: server RSS bound during and after the floods (measured peak 109 MiB for twenty
#: ``ping`` flooders, 167 MiB for twenty WebSocket-ping flooders, from 85 MiB idle)
RSS_BOUND_MIB = 300.0


def _flood_with_bystander(
    ws_url: str, pid: int, *, connections: int, seconds: float
) -> tuple[float, int, list[float]]:
    """Peak RSS during the flood, frames written, and the bystander's round trips."""
    parts = urlsplit(ws_url)
    assert parts.hostname is not None and parts.port is not None
    peak = rss_mib(pid)
    done = threading.Event()
    sent: list[int] = []

    def run_flood() -> None:
        try:
            result = flood(parts.hostname, parts.port, seconds=seconds, connections=connections)
            sent.append(result.frames_sent)
        finally:
            done.set()

    flooder = threading.Thread(target=run_flood)
    flooder.start()
    time.sleep(0.5)
    rtts: list[float] = []

    async def watch() -> None:
        nonlocal peak
        pinging = asyncio.create_task(bystander_pings(ws_url, seconds - 1.0, interval=0.1))
        while not pinging.done() or not done.is_set():
            peak = max(peak, rss_mib(pid))
            await asyncio.sleep(0.2)
        rtts.extend(await pinging)

    try:
        asyncio.run(watch())
    finally:
        flooder.join()
    return peak, sent[0] if sent else 0, rtts


def test_a_flood_of_frames_leaves_memory_bounded_and_a_bystander_answered() -> None:
    with run_server() as server:
        pid = server.process.pid
        idle = rss_mib(pid)
        for connections, seconds in ((1, 10.0), (20, 8.0)):
            peak, sent, rtts = _flood_with_bystander(
                server.ws_url, pid, connections=connections, seconds=seconds
            )
            # the flood was real: far more frames than the server reads in that time
            assert sent > 100_000, sent
            assert peak < RSS_BOUND_MIB, (
                f"{connections} flooding connection(s): server RSS {peak:.0f} MiB "
                f"(idle {idle:.0f} MiB) passed {RSS_BOUND_MIB:.0f} MiB"
            )
            # every bystander ping answered (bystander_pings raises on a 30 s wait)
            assert len(rtts) >= (seconds - 1.0) / 0.1 / 10, rtts
            time.sleep(2.0)
            after = rss_mib(pid)
            assert after < RSS_BOUND_MIB, f"after close: {after:.0f} MiB"
        # and the server still serves after both floods
        assert asyncio.run(bystander_pings(server.ws_url, 0.5))
