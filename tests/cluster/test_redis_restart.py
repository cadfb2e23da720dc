"""Redis restarts (no persistence: every live tail is gone) while a reply streams on node
A: every client that then resumes on node B by offset gets the whole reply in ONE resume,
equal to the stored final reply, with no gap and no text twice -- node A restores the
tail of the reply it runs (issue 17 item 4; the bus side: tests/bus/test_tail_restore.py).

The test restarts a Redis server of its own (a subprocess on a free port, no persistence),
so the machine's shared Redis is never disturbed."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from tests.cluster.support import Cluster, report, wait_ready_status
from tests.server import RunningServer, free_port
from tests.transports.support import Reassembly, ws_client

pytestmark = [pytest.mark.postgres, pytest.mark.redis]

RESUMERS = 12


class RedisServer:
    """``redis-server`` without persistence, restartable on the same port."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        executable = shutil.which("redis-server")
        if executable is None:
            pytest.skip("redis-server is not installed")
        options = ["--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--daemonize", "no"]
        self.process = subprocess.Popen(
            [executable, "--port", str(self.port), *options],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis.from_url(self.url, socket_connect_timeout=0.2)
        deadline = time.monotonic() + 10
        try:
            while True:
                with contextlib.suppress(redis.ConnectionError):
                    if client.ping():
                        return
                assert time.monotonic() < deadline, "redis-server did not start"
                time.sleep(0.02)
        finally:
            client.close()

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()  # as a crash: nothing saved, nothing said to clients
            self.process.wait(10)
            self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    server = RedisServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()


async def resume_once(server: RunningServer, generation_id: str, offset: int) -> tuple[str, str]:
    """One ``generation.resume`` from ``offset`` on a fresh connection, read to the end:
    the text after ``offset`` (asserted gapless and without overlap) and how it ended."""
    async with ws_client(server) as client:
        await client.send(type="generation.resume", generation_id=generation_id, offset=offset)
        assert (await client.recv())["type"] == "generation.started"
        end = await client.until_terminal(generation_id, timeout=60.0)
        # asserts: each delta starts where the text so far ends
        rest = Reassembly(generation_id, offset).add_all(client.received)
        assert not [e for e in client.received if e["type"] == "error"], client.received
    return rest.text, end["type"]


async def test_after_a_redis_restart_every_resume_on_another_node_gets_the_whole_reply(
    shared: Cluster, own_redis: RedisServer
) -> None:
    with shared.node("restart-a", BUS_URL=own_redis.url) as node_a:
        with shared.node("restart-b", BUS_URL=own_redis.url) as node_b:
            async with ws_client(node_a) as author:
                accepted = await author.create("a long answer please", model="long")
                generation_id = accepted["generation_id"]
                text = await Reassembly(generation_id).read(author.recv, deltas=10)
                author.cut()  # the tab drops mid-reply

            restarted = time.monotonic()
            own_redis.restart()  # every live tail is gone
            for server in (node_a, node_b):
                await wait_ready_status(server, 200, timeout=30.0)
            report("redis restarted: both nodes ready after", time.monotonic() - restarted)

            had = text.end
            offsets = [had * i // (RESUMERS - 1) for i in range(RESUMERS)]
            results: list[Any] = await asyncio.gather(
                *(resume_once(node_b, generation_id, offset) for offset in offsets)
            )
    final = shared.stored(generation_id)
    assert final["status"] == "complete"
    for offset, (rest, ended) in zip(offsets, results, strict=True):
        assert ended == "generation.completed"
        assert text.text[:offset] + rest == final["content"], f"resumed from {offset}"
