"""The single-user default (``SANIC_CHAT_AUTH=none``) under a load script: many
concurrent chats, each on its own connection and conversation, all as the one
``local`` user, on two workers sharing the Redis bus. The per-user caps are off
by default with ``none``, so every chat completes."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import websockets

from tests.cluster.support import run_node
from tests.conftest import require_redis
from tests.server import RunningServer, demo_models_file

CHATS = 40
TERMINAL = {"generation.completed", "generation.cancelled", "generation.failed"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    redis_url = require_redis()
    directory: Path = tmp_path_factory.mktemp("single-user-load")
    env = {
        "SANIC_CHAT_AUTH": "none",
        "SANIC_CHAT_BUS_URL": redis_url,
        "SANIC_CHAT_BUS_PREFIX": f"sanic-chat-test:load:{uuid.uuid4().hex[:12]}",
        # quick, but long enough (about half a second) for all replies to overlap
        "SANIC_CHAT_MODELS": demo_models_file(
            directory, ttft_ms=10, tokens_per_second=100, reply_tokens=50
        ),
    }
    with run_node(env, args=("--workers", "2")) as running:
        yield running


class _Start:
    """Holds every chat until all connections are open (or refused), so the
    replies run at the same time, as a load script's users' do."""

    def __init__(self, chats: int) -> None:
        self.waiting = chats
        self.go = asyncio.Event()

    def arrived(self) -> None:
        self.waiting -= 1
        if self.waiting == 0:
            self.go.set()


async def _one_chat(server: RunningServer, start: _Start, number: int) -> dict[str, Any]:
    """What a load script's user does: open a connection, send one message to a
    new conversation, read until its reply ends."""
    try:
        ws = await websockets.connect(server.ws_url, open_timeout=20)
    except websockets.InvalidStatus as exc:
        start.arrived()
        return {"type": "refused", "code": exc.response.status_code}
    async with ws:
        start.arrived()
        await start.go.wait()
        frame = {
            "type": "message.create",
            "client_id": str(uuid.uuid4()),
            "content": f"load script user {number}",
        }
        await ws.send(json.dumps(frame))
        while True:
            event: dict[str, Any] = json.loads(await asyncio.wait_for(ws.recv(), 30))
            if event["type"] in TERMINAL or event["type"] == "error":
                return event


async def test_forty_concurrent_chats_of_the_one_local_user_all_complete(
    server: RunningServer,
) -> None:
    start = _Start(CHATS)
    ends = await asyncio.gather(*(_one_chat(server, start, n) for n in range(CHATS)))
    completed = [e for e in ends if e["type"] == "generation.completed"]
    others = sorted(f"{e['type']} {e.get('code')}" for e in ends if e not in completed)
    assert len(completed) == CHATS, f"{len(completed)}/{CHATS} completed; the others: {others}"
    assert all(e["message"]["content"] for e in completed)
    assert len({e["message"]["conversation_id"] for e in completed}) == CHATS
