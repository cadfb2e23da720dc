"""PostgreSQL or Redis out of reach of one node (its connections cut by a TCP proxy;
the shared services themselves stay up): new messages are refused with ``unavailable``
and nothing is half-stored, the reply already running streams on and is stored once the
service returns, /readyz says 503 meanwhile, and the node recovers by itself."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator

import pytest

from tests.chaos import TcpProxy
from tests.cluster.support import Cluster, report, wait_ready_status
from tests.server import RunningServer
from tests.transports.support import Reassembly, WsClient, ws_client

pytestmark = [pytest.mark.postgres, pytest.mark.redis]

#: long enough to outlive the reply it cuts into, and every retry backoff's first steps
OUTAGE_S = 3.0


@pytest.fixture(scope="module")
def postgres_proxy() -> Iterator[TcpProxy]:
    with TcpProxy(5432) as proxy:
        yield proxy


@pytest.fixture(scope="module")
def redis_proxy() -> Iterator[TcpProxy]:
    with TcpProxy(6379) as proxy:
        yield proxy


@pytest.fixture(scope="module")
def node(
    shared: Cluster, postgres_proxy: TcpProxy, redis_proxy: TcpProxy
) -> Iterator[RunningServer]:
    """A node that reaches both services through proxies. Its lease is the default
    15 s: an outage shorter than that must not let another node take its replies."""
    with shared.node(
        "node-cut",
        DATABASE_URL=postgres_proxy.url_for(shared.database_url),
        BUS_URL=redis_proxy.url_for(shared.redis_url),
        LEASE_S="15",
    ) as server:
        yield server


async def refused_while_out(ws: WsClient) -> str:
    """A message for a new conversation is refused with ``unavailable``; its client_id."""
    client_id = str(uuid.uuid4())
    await ws.send(type="message.create", client_id=client_id, content="are you there?")
    error = await ws.recv_type("error")
    assert (error["code"], error.get("ref")) == ("unavailable", client_id)
    return client_id


async def retried_after(ws: WsClient, client_id: str, shared: Cluster) -> None:
    """The refused message, sent again once the service is back, is stored exactly once
    and answered with a complete reply."""
    accepted = await ws.create("are you there?", client_id=client_id)
    again = await ws.create("are you there?", client_id=client_id)  # and once more
    assert again["message"]["id"] == accepted["message"]["id"]
    end = await ws.until_terminal(accepted["generation_id"])
    assert end["type"] == "generation.completed"
    assert shared.count_messages(accepted["conversation_id"]) == {"user": 1, "assistant": 1}


async def test_a_database_outage_refuses_new_messages_streams_on_and_stores_after_recovery(
    shared: Cluster, node: RunningServer, postgres_proxy: TcpProxy
) -> None:
    async with ws_client(node) as ws:
        generation_id = await ws.streaming("keep talking through it", model="steady")
        postgres_proxy.cut()
        cut_at = len(ws.received)

        client_id = await refused_while_out(ws)
        not_ready = await wait_ready_status(node, 503, timeout=10.0)
        report("database cut: /readyz answers 503 after", not_ready)

        # the running reply streams on to its end, which is stored once PostgreSQL is back
        finished = asyncio.ensure_future(ws.until_terminal(generation_id, timeout=30.0))
        await asyncio.sleep(OUTAGE_S)
        assert not finished.done(), "the end was announced before it could be stored"
        postgres_proxy.restore()
        end = await finished
        text = Reassembly(generation_id).add_all(ws.received)  # asserts: no gap, no overlap
        assert any(e["type"] == "generation.delta" for e in ws.received[cut_at:])
        assert end["type"] == "generation.completed"
        assert text.text == end["message"]["content"]

        back = await wait_ready_status(node, 200, timeout=20.0)
        report("database restored: /readyz answers 200 after", back)
        stored = shared.stored(generation_id)
        assert (stored["status"], stored["content"]) == ("complete", text.text)
        await retried_after(ws, client_id, shared)


async def test_a_redis_outage_refuses_new_messages_and_the_running_reply_resumes_without_a_gap(
    shared: Cluster, node: RunningServer, redis_proxy: TcpProxy
) -> None:
    async with ws_client(node) as ws:
        generation_id = await ws.streaming("keep talking through it", model="steady")
        redis_proxy.cut()

        client_id = await refused_while_out(ws)
        not_ready = await wait_ready_status(node, 503, timeout=10.0)
        report("redis cut: /readyz answers 503 after", not_ready)
        await asyncio.sleep(OUTAGE_S)  # the provider's stream ends meanwhile
        redis_proxy.restore()

        # what could not be published arrives as one delta from where the client is
        end = await ws.until_terminal(generation_id, timeout=30.0)
        text = Reassembly(generation_id).add_all(ws.received)  # asserts: no gap, no overlap
        assert end["type"] == "generation.completed"
        assert text.text == end["message"]["content"]
        stored = shared.stored(generation_id)
        assert (stored["status"], stored["content"]) == ("complete", text.text)

        back = await wait_ready_status(node, 200, timeout=20.0)
        report("redis restored: /readyz answers 200 after", back)
        await retried_after(ws, client_id, shared)
