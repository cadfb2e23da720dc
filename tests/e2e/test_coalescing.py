"""A busy server lets a reply's text gather into fewer frames, on both
transports, without losing, repeating or delaying the first of it."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

import httpx
import pytest
import websockets

from tests.server import RunningServer, demo_models_file, run_server

from .wire import create, joined_text, until_terminal

TOKENS = 60


@pytest.fixture(scope="module")
def busy_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    env = {
        "SANIC_CHAT_MODELS": demo_models_file(
            tmp_path_factory.mktemp("models"),
            ttft_ms=20,
            tokens_per_second=200,
            reply_tokens=TOKENS,
        ),
        # every reply counts as "busy": text gathers for up to 100 ms
        "SANIC_CHAT_COALESCE_ABOVE": "0",
        "SANIC_CHAT_COALESCE_MS": "100",
    }
    with run_server(env) as server:
        yield server


async def test_websocket_text_gathers_into_fewer_frames_and_stays_exact(
    busy_server: RunningServer,
) -> None:
    async with websockets.connect(busy_server.ws_url) as ws:
        await ws.send(json.dumps(create("gather")))
        frames = await until_terminal(ws)
    deltas = [f for f in frames if f["type"] == "generation.delta"]
    text = joined_text(frames)
    assert text == frames[-1]["message"]["content"]
    assert len(text.split()) == TOKENS
    # 60 tokens 5 ms apart, gathered for up to 100 ms: a handful of frames
    assert len(deltas) < TOKENS / 4
    # the first text is never held back: it came alone, as the demo sent it
    assert len(deltas[0]["text"].split()) == 1


async def test_sse_text_gathers_too(busy_server: RunningServer) -> None:
    base = busy_server.base_url
    async with httpx.AsyncClient(base_url=base, timeout=10) as client:
        conversation = (await client.post("/api/v1/conversations", json={})).json()
        posted = await client.post(
            f"/api/v1/conversations/{conversation['id']}/messages",
            json={"client_id": str(uuid.uuid4()), "content": "gather over sse"},
        )
        generation_id = posted.json()["generation_id"]
        frames = []
        async with client.stream(
            "GET", f"/api/v1/generations/{generation_id}/events", params={"offset": 0}
        ) as response:
            async for line in response.aiter_lines():
                if line.startswith("data: "):
                    frames.append(json.loads(line[6:]))
    text = joined_text(frames)
    assert frames[-1]["type"] == "generation.completed"
    assert text == frames[-1]["message"]["content"]
    assert len([f for f in frames if f["type"] == "generation.delta"]) < TOKENS / 4
