"""Graceful shutdown (SIGTERM): the node stops taking new work at once, lets the replies
running on it finish within ``SANIC_CHAT_DRAIN_TIMEOUT_S``, stores those that do not
as ``interrupted`` with their text, and closes its WebSockets with 1001 (going away:
reconnect elsewhere and resume)."""

from __future__ import annotations

import asyncio
import signal
import time

import httpx
import pytest
from websockets.exceptions import ConnectionClosed

from tests.cluster.support import Cluster, report, wait_ready_status
from tests.server import RunningServer
from tests.transports.support import Reassembly, WsClient, ws_client

pytestmark = [pytest.mark.postgres, pytest.mark.redis]


async def closed_code(ws: WsClient, timeout: float = 20.0) -> int | None:
    """Read until the server closes the connection; its close code."""
    with pytest.raises(ConnectionClosed):
        while True:
            await ws.recv(timeout)
    return ws.connection.close_code


async def test_sigterm_lets_a_running_reply_finish_and_store_complete_then_says_going_away(
    shared: Cluster,
) -> None:
    with shared.node("node-drained", DRAIN_TIMEOUT_S="20") as node:
        async with ws_client(node) as author:
            generation_id = await author.streaming("finish me before you go", model="steady")
            node.process.send_signal(signal.SIGTERM)
            sent = time.monotonic()

            # draining: not ready, and new work is turned away -- on a new request and
            # on a connection that is already open
            await wait_ready_status(node, 503, timeout=5.0)
            async with httpx.AsyncClient(base_url=node.base_url, timeout=5.0) as http:
                body = (await http.get("/readyz")).json()
                refused = await http.get("/api/v1/models")
            assert body["checks"]["server"] == "draining"
            assert refused.status_code == 503
            assert refused.json()["error"]["code"] == "unavailable"
            await author.send(
                type="message.create", client_id="7c1d0c3e-0000-4000-8000-000000000001", content="x"
            )

            end = await author.until_terminal(generation_id, timeout=20.0)
            code = await closed_code(author)
        node.process.wait(30)
        drained = time.monotonic() - sent
    report("drain: SIGTERM to exit, with a reply of ~2 s in flight", drained)
    assert end["type"] == "generation.completed"
    text = Reassembly(generation_id).add_all(author.received)
    assert text.text == end["message"]["content"]
    refusals = [e for e in author.received if e["type"] == "error"]
    assert [e["code"] for e in refusals] == ["unavailable"]
    assert code == 1001
    assert node.process.returncode == 0
    stored = shared.stored(generation_id)
    assert (stored["status"], stored["content"]) == ("complete", end["message"]["content"])


async def test_a_reply_longer_than_the_drain_timeout_is_stored_interrupted_with_its_text(
    shared: Cluster, node_b: RunningServer
) -> None:
    with shared.node("node-hurried", DRAIN_TIMEOUT_S="1") as node:
        async with ws_client(node) as author:
            generation_id = await author.streaming("this takes a while", model="long")
            node.process.send_signal(signal.SIGTERM)
            sent = time.monotonic()
            end = await author.until_terminal(generation_id, timeout=20.0)
            code = await closed_code(author)
        node.process.wait(30)
        report("drain: SIGTERM to exit, drain timeout 1 s", time.monotonic() - sent)
    text = Reassembly(generation_id).add_all(author.received)
    assert end["type"] == "generation.failed"
    assert end["error"]["code"] == "interrupted"
    assert end["message"]["content"] == text.text != ""
    assert code == 1001
    stored = shared.stored(generation_id)
    assert (stored["status"], stored["content"]) == ("interrupted", text.text)

    # the client reconnects elsewhere and resumes: it is told how the reply ended
    async with ws_client(node_b) as again:
        await again.send(type="generation.resume", generation_id=generation_id, offset=text.end)
        resumed = await asyncio.wait_for(again.until_terminal(generation_id), 10.0)
    assert resumed["error"]["code"] == "interrupted"
