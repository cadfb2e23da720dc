"""With a Redis bus, tickets and the message rate are shared by every node:
a ticket minted on one node opens a socket on any, once; the rate holds
across nodes."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import require_redis
from tests.server import RunningServer

from .support import (
    bearer,
    jwt_env,
    mint_ticket,
    new_user,
    refused_upgrade,
    server_with,
    until,
    ws_connect,
)

pytestmark = pytest.mark.redis


@pytest.fixture(scope="module")
def nodes(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[RunningServer, RunningServer]]:
    env = jwt_env(
        tmp_path_factory.mktemp("nodes"),
        SANIC_CHAT_BUS_URL=require_redis(),
        SANIC_CHAT_RATE_LIMIT="3/minute",
    )
    with server_with(env) as node_a, server_with(env) as node_b:
        yield node_a, node_b


async def test_a_ticket_minted_on_one_node_works_once_on_any(
    nodes: tuple[RunningServer, RunningServer],
) -> None:
    node_a, node_b = nodes
    user = new_user()
    ticket = mint_ticket(node_a, bearer(user))
    async with ws_connect(node_b, query=f"ticket={ticket}") as ws:
        await ws.send('{"type": "ping"}')
        await until(ws, "pong")
    for node in nodes:
        status, _ = await refused_upgrade(node, query=f"ticket={ticket}")
        assert status == 401
    # the same ticket raced at both nodes: exactly one wins
    ticket = mint_ticket(node_b, bearer(user))
    outcomes = await asyncio.gather(*(_opens(node, ticket) for node in (*nodes, *nodes)))
    assert sorted(outcomes) == [False, False, False, True]


async def _opens(server: RunningServer, ticket: str) -> bool:
    try:
        async with ws_connect(server, query=f"ticket={ticket}"):
            return True
    except Exception:
        return False


def test_the_message_rate_holds_across_nodes(nodes: tuple[RunningServer, RunningServer]) -> None:
    user = new_user()
    statuses = []
    for node in (*nodes, *nodes):
        conversation = httpx.post(
            f"{node.base_url}/api/v1/conversations", headers=bearer(user), json={}
        ).json()
        response = httpx.post(
            f"{node.base_url}/api/v1/conversations/{conversation['id']}/messages",
            headers=bearer(user),
            json={"client_id": str(uuid.uuid4()), "content": "hi"},
        )
        statuses.append(response.status_code)
    assert statuses == [202, 202, 202, 429]
