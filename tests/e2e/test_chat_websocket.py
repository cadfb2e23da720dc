"""The running product over a real WebSocket, on SQLite and on PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets

from tests.server import RunningServer, database_env, demo_models_file, run_server

from .wire import create, joined_text, recv, until_terminal


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningServer]:
    directory = tmp_path_factory.mktemp("models")
    env = {
        **database_env(request.param),
        "SANIC_CHAT_MODELS": demo_models_file(
            directory, ttft_ms=50, tokens_per_second=100, reply_tokens=30
        ),
        "SANIC_CHAT_CHECKPOINT_INTERVAL_S": "0.1",
    }
    with run_server(env) as running:
        yield running


def stored_messages(server: RunningServer, conversation_id: str) -> list[dict[str, Any]]:
    response = httpx.get(f"{server.base_url}/api/v1/conversations/{conversation_id}/messages")
    response.raise_for_status()
    items: list[dict[str, Any]] = response.json()["items"]
    return items


async def test_a_message_streams_a_reply_that_is_stored_complete(server: RunningServer) -> None:
    async with websockets.connect(server.ws_url) as ws:
        frame = create("tell me about rivers")
        sent = time.monotonic()
        await ws.send(json.dumps(frame))
        accepted = await recv(ws)
        assert accepted["type"] == "message.accepted"
        assert accepted["client_id"] == frame["client_id"]
        assert accepted["message"]["content"] == "tell me about rivers"
        assert accepted["message"]["status"] == "complete"
        # acknowledged only after the commit: the row is already readable
        rows = stored_messages(server, accepted["conversation_id"])
        assert rows[0]["id"] == accepted["message"]["id"]
        started = await recv(ws)
        assert started["type"] == "generation.started"
        assert started["reply_to"] == accepted["message"]["id"]
        assert started["message_id"] == started["generation_id"]
        assert started["model"] == "demo"
        frames = await until_terminal(ws)
        first_delta_ms = None
        assert frames[0]["type"] == "generation.delta"
        first_delta_ms = (time.monotonic() - sent) * 1000
        completed = frames[-1]
        assert completed["type"] == "generation.completed"
        assert completed["finish_reason"] == "stop"
        assert completed["usage"]["output_tokens"] == 30
        text = joined_text(frames)
        assert text and completed["message"]["content"] == text
        assert first_delta_ms is not None
    rows = stored_messages(server, accepted["conversation_id"])
    assert [(r["role"], r["status"]) for r in rows] == [
        ("user", "complete"),
        ("assistant", "complete"),
    ]
    assert rows[1]["content"] == text


async def test_same_client_id_twice_returns_the_same_message_and_no_new_reply(
    server: RunningServer,
) -> None:
    async with websockets.connect(server.ws_url) as ws:
        frame = create("only once")
        await ws.send(json.dumps(frame))
        first = await recv(ws)
        await until_terminal(ws)
        await ws.send(json.dumps(frame))
        again = await recv(ws)
        assert again["type"] == "message.accepted"
        assert again["message"]["id"] == first["message"]["id"]
        assert again["conversation_id"] == first["conversation_id"]
        await ws.send(json.dumps({"type": "ping"}))
        assert (await recv(ws))["type"] == "pong"  # nothing else was started
    assert len(stored_messages(server, first["conversation_id"])) == 2


async def test_dropping_the_connection_does_not_stop_the_reply(server: RunningServer) -> None:
    ws = await websockets.connect(server.ws_url)
    await ws.send(json.dumps(create("keep going without me")))
    accepted = await recv(ws)
    await recv(ws)  # started
    await recv(ws)  # the first delta
    ws.transport.abort()  # a TCP cut: no close frame
    conversation_id = accepted["conversation_id"]
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        rows = stored_messages(server, conversation_id)
        if rows[-1]["status"] != "streaming":
            break
        await asyncio.sleep(0.1)
    assert rows[-1]["status"] == "complete"
    assert len(rows[-1]["content"].split()) == 30


async def test_cancel_stops_the_reply_and_keeps_exactly_the_streamed_text(
    server: RunningServer,
) -> None:
    async with websockets.connect(server.ws_url) as ws:
        await ws.send(json.dumps(create("a long answer please")))
        accepted = await recv(ws)
        started = await recv(ws)
        frames = [await recv(ws), await recv(ws)]
        await ws.send(
            json.dumps({"type": "generation.cancel", "generation_id": started["generation_id"]})
        )
        frames += await until_terminal(ws)
        cancelled = frames[-1]
        assert cancelled["type"] == "generation.cancelled"
        text = joined_text(frames)
        assert cancelled["message"]["content"] == text
        assert cancelled["message"]["status"] == "cancelled"
    rows = stored_messages(server, accepted["conversation_id"])
    assert rows[-1]["status"] == "cancelled" and rows[-1]["content"] == text
    assert len(text.split()) < 30


async def test_one_reply_at_a_time_per_conversation(server: RunningServer) -> None:
    async with websockets.connect(server.ws_url) as ws:
        await ws.send(json.dumps(create("first")))
        accepted = await recv(ws)
        second = create("second", conversation_id=accepted["conversation_id"])
        await ws.send(json.dumps(second))
        seen = []
        while True:
            frame = await recv(ws)
            seen.append(frame)
            if frame["type"] == "error":
                break
        assert frame["code"] == "conflict" and frame["ref"] == second["client_id"]
        await until_terminal(ws)
        # nothing of the refused message was stored
        rows = stored_messages(server, accepted["conversation_id"])
        assert [r["content"] for r in rows if r["role"] == "user"] == ["first"]
        # after the reply, the same client_id is welcome
        await ws.send(json.dumps(second))
        assert (await recv(ws))["type"] == "message.accepted"
        await until_terminal(ws)


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        ("this is not json", "bad_request"),
        ('"a string"', "bad_request"),
        ('{"type": "warp.drive"}', "unknown_type"),
        ('{"type": "message.create", "client_id": "x", "content": "hi"}', "validation_error"),
        (json.dumps(create("")), "validation_error"),
        (
            json.dumps({"type": "generation.cancel", "generation_id": str(uuid.uuid4())}),
            "not_found",
        ),
        (json.dumps(create("hi", conversation_id=str(uuid.uuid4()))), "not_found"),
        (json.dumps(create("hi", model="no-such-model")), "validation_error"),
    ],
)
async def test_bad_input_is_answered_and_the_connection_keeps_working(
    server: RunningServer, raw: str, code: str
) -> None:
    async with websockets.connect(server.ws_url) as ws:
        await ws.send(raw)
        error = await recv(ws)
        assert error["type"] == "error" and error["code"] == code
        if '"client_id"' in raw and code != "validation_error":
            assert error["ref"] == json.loads(raw)["client_id"]
        await ws.send(json.dumps(create("still here?")))
        assert (await recv(ws))["type"] == "message.accepted"
        frames = await until_terminal(ws)
        assert frames[-1]["type"] == "generation.completed"


def test_rest_conversations_and_paged_history(server: RunningServer) -> None:
    base = f"{server.base_url}/api/v1"
    created = httpx.post(f"{base}/conversations", json={"title": "Plans"})
    assert created.status_code == 201
    conversation = created.json()
    assert conversation["title"] == "Plans"
    got = httpx.get(f"{base}/conversations/{conversation['id']}")
    assert got.status_code == 200 and got.json()["id"] == conversation["id"]
    listed = httpx.get(f"{base}/conversations", params={"limit": 200}).json()["items"]
    assert conversation["id"] in [c["id"] for c in listed]

    async def chat() -> None:
        async with websockets.connect(server.ws_url) as ws:
            for i in range(3):
                await ws.send(json.dumps(create(f"q{i}", conversation_id=conversation["id"])))
                await until_terminal(ws)

    asyncio.run(chat())
    page = httpx.get(f"{base}/conversations/{conversation['id']}/messages", params={"limit": 4})
    body = page.json()
    assert [m["role"] for m in body["items"]] == ["user", "assistant", "user", "assistant"]
    assert body["items"][0]["content"] == "q1"  # the 4 newest, oldest first
    older = httpx.get(
        f"{base}/conversations/{conversation['id']}/messages",
        params={"limit": 4, "before": body["next_before"]},
    ).json()
    assert [m["content"] for m in older["items"]][0] == "q0"
    assert len(older["items"]) == 2
    assert httpx.delete(f"{base}/conversations/{conversation['id']}").status_code == 204
    missing = httpx.get(f"{base}/conversations/{conversation['id']}")
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "not_found"


def test_rest_errors_are_json(server: RunningServer) -> None:
    base = f"{server.base_url}/api/v1"
    bad = httpx.post(f"{base}/conversations", content=b"{not json")
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "bad_request"
    wrong = httpx.post(f"{base}/conversations", json={"model": "nope"})
    assert wrong.status_code == 422 and wrong.json()["error"]["code"] == "validation_error"
    # PostgreSQL text cannot hold NUL: refused up front on both databases, never a 500
    nul = httpx.post(f"{base}/conversations", json={"title": "before\u0000after"})
    assert nul.status_code == 422 and nul.json()["error"]["code"] == "validation_error"
    assert "NUL" in nul.json()["error"]["message"]
    nowhere = httpx.get(f"{server.base_url}/api/v1/nowhere")
    assert nowhere.status_code == 404 and nowhere.json()["error"]["code"] == "not_found"
    models = httpx.get(f"{base}/models").json()
    assert models["default"] == "demo" and models["items"][0]["provider"] == "demo"
    assert httpx.get(f"{server.base_url}/docs").status_code in (200, 301, 302)
    page = httpx.get(f"{server.base_url}/")
    assert page.status_code == 200 and "<html" in page.text.lower()


def test_first_chunk_latency_is_recorded_in_metrics(server: RunningServer) -> None:
    text = httpx.get(f"{server.base_url}/metrics").text
    assert "sanic_chat_first_chunk_seconds_count" in text
    assert "sanic_chat_persist_seconds_bucket" in text


def test_the_page_is_served(server: RunningServer, tmp_path: Path) -> None:
    response = httpx.get(server.base_url + "/")
    assert response.headers["content-type"].startswith("text/html")


def test_the_event_loop_lag_is_sampled_into_metrics(server: RunningServer) -> None:
    """Sampled twice a second from start-up: a running server has observations."""
    import time

    deadline = time.monotonic() + 5
    count = 0.0
    while time.monotonic() < deadline:
        for line in httpx.get(f"{server.base_url}/metrics").text.splitlines():
            if line.startswith("sanic_chat_event_loop_lag_seconds_count"):
                count = float(line.rsplit(" ", 1)[1])
        if count > 0:
            break
        time.sleep(0.25)
    assert count > 0
