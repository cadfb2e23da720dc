"""A post whose statement outlives the node's database timeout (PostgreSQL's bytes held
by a proxy, then let through): the client is told the message *may* have been stored
(never "nothing was stored"), the statement commits afterwards, and the retry with the
same client_id -- on the node that posted, on another, or on both at once -- gets that
one reply streamed to completion, started exactly once. And a message committed whose
client left while its announcement waited on a slow Redis is answered all the same."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.cluster.holding_proxy import HoldingProxy
from tests.cluster.support import Cluster, metric
from tests.server import RunningServer
from tests.transports.support import http_client, new_conversation, post_message

pytestmark = [pytest.mark.postgres, pytest.mark.redis]

#: the database timeout of the node whose PostgreSQL is held (the default is 5 s)
TIMEOUT_S = 1.0


@pytest.fixture
def proxy() -> Iterator[HoldingProxy]:
    with HoldingProxy(5432) as made:
        yield made


@pytest.fixture
def held_node(shared: Cluster, proxy: HoldingProxy) -> Iterator[RunningServer]:
    """A node (fresh: its metrics count this test's replies only) reaching PostgreSQL
    through ``proxy``, with a short database timeout."""
    url = proxy.url_for(shared.database_url) + f"&timeout={TIMEOUT_S}"
    with shared.node(f"node-held-{uuid.uuid4().hex[:6]}", DATABASE_URL=url) as server:
        yield server


@pytest.fixture
def other_node(shared: Cluster) -> Iterator[RunningServer]:
    with shared.node(f"node-other-{uuid.uuid4().hex[:6]}") as server:
        yield server


async def held_post(
    client: httpx.AsyncClient, proxy: HoldingProxy, shared: Cluster
) -> tuple[str, str]:
    """A post whose statement is held past the timeout, then let through: answered
    ``unavailable`` with "may have been stored"; it commits once released. Its
    (conversation id, client_id)."""
    conversation_id = await new_conversation(client)
    client_id = str(uuid.uuid4())
    proxy.hold()
    try:
        response = await post_message(
            client, conversation_id, "what is 6 x 7?", client_id=client_id
        )
    finally:
        proxy.release()
    assert response.status_code == 503, response.text
    error = response.json()["error"]
    assert error["code"] == "unavailable"
    assert "nothing was stored" not in error["message"]
    assert "may have been stored" in error["message"]
    assert "same client_id" in error["message"]
    # the statement the node gave up on runs now: the message and its reply row exist
    for _ in range(100):
        if shared.count_messages(conversation_id) == {"user": 1, "assistant": 1}:
            break
        await asyncio.sleep(0.05)
    assert shared.count_messages(conversation_id) == {"user": 1, "assistant": 1}
    return conversation_id, client_id


async def answered(
    responses: list[httpx.Response], shared: Cluster, conversation_id: str
) -> dict[str, Any]:
    """Every retry answered ``202 created: false`` with the one reply, which completes
    with text; the stored reply."""
    bodies = [response.json() for response in responses]
    assert [r.status_code for r in responses] == [202] * len(responses), bodies
    assert {b["created"] for b in bodies} == {False}
    generation_ids = {b["generation_id"] for b in bodies}
    assert len(generation_ids) == 1
    (generation_id,) = generation_ids
    for _ in range(300):
        stored = shared.stored(generation_id)
        if stored["status"] != "streaming":
            break
        await asyncio.sleep(0.05)
    assert stored["status"] == "complete", stored
    assert stored["content"]
    assert shared.count_messages(conversation_id) == {"user": 1, "assistant": 1}
    return stored


async def replies_completed(*nodes: RunningServer) -> float:
    total = 0.0
    for node in nodes:
        async with http_client(node) as client:
            text = (await client.get("/metrics")).text
        total += metric(text, "sanic_chat_reply_seconds_count", {"status": "complete"})
    return total


async def test_the_retry_on_the_same_node_finishes_a_post_whose_outcome_was_unknown(
    shared: Cluster, held_node: RunningServer, proxy: HoldingProxy
) -> None:
    async with http_client(held_node) as client:
        conversation_id, client_id = await held_post(client, proxy, shared)
        retry = await post_message(client, conversation_id, "what is 6 x 7?", client_id=client_id)
        await answered([retry], shared, conversation_id)
        # the conversation is free again: a new message gets its own reply
        follow_up = await post_message(client, conversation_id, "and 7 x 8?")
        assert follow_up.status_code == 202, follow_up.text
    assert await replies_completed(held_node) == 1.0


async def test_retries_on_two_nodes_at_once_start_the_reply_exactly_once(
    shared: Cluster, held_node: RunningServer, other_node: RunningServer, proxy: HoldingProxy
) -> None:
    async with http_client(held_node) as client, http_client(other_node) as other:
        conversation_id, client_id = await held_post(client, proxy, shared)
        retries = await asyncio.gather(
            post_message(client, conversation_id, "what is 6 x 7?", client_id=client_id),
            post_message(other, conversation_id, "what is 6 x 7?", client_id=client_id),
        )
        await answered(list(retries), shared, conversation_id)
    assert await replies_completed(held_node, other_node) == 1.0


async def test_a_retry_on_another_node_gets_the_reply_the_posting_node_starts(
    shared: Cluster, held_node: RunningServer, other_node: RunningServer, proxy: HoldingProxy
) -> None:
    async with http_client(held_node) as client, http_client(other_node) as other:
        conversation_id, client_id = await held_post(client, proxy, shared)
        retry = await post_message(other, conversation_id, "what is 6 x 7?", client_id=client_id)
        await answered([retry], shared, conversation_id)
    assert await replies_completed(held_node, other_node) == 1.0


async def test_a_stored_message_whose_client_left_while_the_bus_was_slow_is_answered(
    shared: Cluster,
) -> None:
    """The message is committed, then its announcement waits on a Redis whose bytes are
    held; the client gives up (the server cancels the request): the reply still runs."""
    with HoldingProxy(6379) as redis_proxy:
        bus_url = redis_proxy.url_for(shared.redis_url)
        with shared.node(f"node-slow-bus-{uuid.uuid4().hex[:6]}", BUS_URL=bus_url) as node:
            async with http_client(node) as client:
                conversation_id = await new_conversation(client)
                redis_proxy.hold()
                try:
                    async with httpx.AsyncClient(base_url=node.base_url, timeout=0.5) as short:
                        with pytest.raises(httpx.TimeoutException):
                            await post_message(short, conversation_id, "still there?")
                    await asyncio.sleep(0.5)
                finally:
                    redis_proxy.release()
                for _ in range(200):
                    counts = shared.count_messages(conversation_id)
                    rows = shared.query(
                        'SELECT id FROM "{schema}".message WHERE conversation_id = %s'
                        " AND role = 'assistant'",
                        conversation_id,
                    )
                    if rows and shared.stored(rows[0][0])["status"] != "streaming":
                        break
                    await asyncio.sleep(0.05)
                assert counts == {"user": 1, "assistant": 1}
                stored = shared.stored(rows[0][0])
                assert stored["status"] == "complete", stored
                assert stored["content"]
