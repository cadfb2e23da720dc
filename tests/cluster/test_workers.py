"""``sanic-chat serve --workers 2`` on the Redis bus: Sanic's multiprocess mode, each
worker with its own node id, database pool and bus connections, serving many chats at
once behind one port; /metrics (answered by either worker) counts them all."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time

import httpx
import pytest
import redis
from websockets.exceptions import ConnectionClosed

from tests.cluster.support import Cluster, metric, report
from tests.transports.support import Reassembly, ws_client

pytestmark = [pytest.mark.postgres, pytest.mark.redis]

CHATS = 40


async def bus_subscribers(shared: Cluster, node_id: str, expected: int) -> set[str]:
    """The names of a node's pub/sub connections to Redis, once there are ``expected``
    (or after 20 s)."""
    admin = redis.Redis.from_url(shared.redis_url, decode_responses=True)
    try:
        deadline = time.monotonic() + 20.0
        while True:
            names = {
                client["name"]
                for client in admin.client_list()
                if client["name"].startswith(f"{shared.prefix}:{node_id}/")
                and client["name"].endswith(":sub")
            }
            if len(names) >= expected or time.monotonic() > deadline:
                return names
            await asyncio.sleep(0.1)
    finally:
        admin.close()


async def test_two_workers_serve_forty_concurrent_chats_to_the_end_without_loss(
    shared: Cluster,
) -> None:
    with shared.node("node-workers", args=("--workers", "2")) as node:
        # two workers, two node ids: each has its own pub/sub connection to Redis
        subscribers = await bus_subscribers(shared, "node-workers", expected=2)
        assert len(subscribers) == 2, subscribers
        assert len({name.split("/")[1] for name in subscribers}) == 2  # one per worker

        async def chat(index: int) -> tuple[str, str, dict[str, object]]:
            async with ws_client(node) as ws:
                accepted = await ws.create(f"chat number {index}", model="steady")
                generation_id = accepted["generation_id"]
                end = await ws.until_terminal(generation_id, timeout=60.0)
                text = Reassembly(generation_id).add_all(ws.received)
                return generation_id, text.text, end

        started = time.monotonic()
        results = await asyncio.gather(*(chat(i) for i in range(CHATS)))
        report(f"{CHATS} concurrent chats on 2 workers", time.monotonic() - started)

        assert len({generation_id for generation_id, _, _ in results}) == CHATS
        for generation_id, text, end in results:
            assert end["type"] == "generation.completed"
            assert text == end["message"]["content"] != ""  # type: ignore[index]
            stored = shared.stored(generation_id)
            assert (stored["status"], stored["content"]) == ("complete", text)

        # either worker answers /metrics with the sum over both
        async with httpx.AsyncClient(timeout=10.0) as http:
            scraped = (await http.get(f"{node.base_url}/metrics")).text
        assert metric(scraped, "sanic_chat_reply_seconds_count", {"status": "complete"}) == CHATS
        assert metric(scraped, "sanic_chat_first_chunk_seconds_count") == CHATS
        assert metric(scraped, "sanic_chat_persist_seconds_count") == CHATS


async def test_sigterm_to_a_multi_worker_node_drains_every_worker(shared: Cluster) -> None:
    with shared.node("node-workers-drained", args=("--workers", "2")) as node:
        streaming = asyncio.Event()
        count = 0

        async def chat(index: int) -> tuple[str, int | None]:
            nonlocal count
            async with ws_client(node) as ws:
                accepted = await ws.create(f"drain me {index}", model="steady")
                await ws.recv_type("generation.delta")
                count += 1
                if count == 6:
                    streaming.set()
                end = await ws.until_terminal(accepted["generation_id"], timeout=30.0)
                with pytest.raises(ConnectionClosed):
                    while True:
                        await ws.recv(30.0)
                return end["type"], ws.connection.close_code

        chats = asyncio.gather(*(chat(i) for i in range(6)))
        await asyncio.wait_for(streaming.wait(), 20.0)
        node.process.send_signal(signal.SIGTERM)  # to the main process, which tells the workers
        sent = time.monotonic()
        results = await chats
        try:
            # generous: a loaded CI machine has been seen to take longer than 30 s
            await asyncio.to_thread(node.process.wait, 60)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the node did not exit 60 s after SIGTERM; its log:\n{node.log()[-6000:]}")
        report("drain of a 2-worker node: SIGTERM to exit", time.monotonic() - sent)
    assert results == [("generation.completed", 1001)] * 6
    assert node.process.returncode == 0


async def test_a_sigterm_right_after_the_workers_started_stops_the_node(shared: Cluster) -> None:
    # the workers log "Worker ready" a moment before Sanic's main process notes that they
    # started (it looks every 0.1 s): the SIGTERM lands in between
    with shared.node("node-workers-fresh", args=("--workers", "2")) as node:
        node.process.send_signal(signal.SIGTERM)
        try:
            await asyncio.to_thread(node.process.wait, 30)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the node did not exit 30 s after SIGTERM; its log:\n{node.log()[-6000:]}")
    assert node.process.returncode == 0, node.log()[-6000:]
