"""Every limit, against a real server configured small enough to hit them."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import httpx
import pytest
from websockets.exceptions import ConnectionClosed

from tests.server import RunningServer

from .support import (
    bearer,
    chat,
    create,
    history,
    new_conversation,
    new_user,
    post_message,
    recv,
    refused_upgrade,
    request,
    send,
    serve_jwt,
    until,
    ws_connect,
)

FRAME_LIMIT = 64 * 1024
BODY_LIMIT = 16 * 1024
CONTENT_LIMIT = 1000
FRAME_RATE = 3


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    yield from serve_jwt(
        tmp_path_factory,
        "limits",
        SANIC_CHAT_MAX_FRAME_BYTES=str(FRAME_LIMIT),
        SANIC_CHAT_MAX_BODY_BYTES=str(BODY_LIMIT),
        SANIC_CHAT_MAX_CONTENT_CHARS=str(CONTENT_LIMIT),
        SANIC_CHAT_RATE_LIMIT="4/minute",
        SANIC_CHAT_FRAME_RATE_LIMIT=f"{FRAME_RATE}/minute",
        SANIC_CHAT_MAX_CONNECTIONS_PER_USER="2",
        SANIC_CHAT_MAX_RUNNING_REPLIES_PER_USER="1",
        SANIC_CHAT_IDLE_TIMEOUT_S="1",
    )


async def test_a_frame_over_the_size_limit_closes_the_socket_with_1009(
    server: RunningServer,
) -> None:
    async with ws_connect(server, bearer(new_user())) as ws:
        await ws.send("x" * (FRAME_LIMIT + 1))
        with pytest.raises(ConnectionClosed) as closed:
            await recv(ws)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009


async def test_content_over_the_limit_is_too_large_and_the_socket_stays_open(
    server: RunningServer,
) -> None:
    user = new_user()
    async with ws_connect(server, bearer(user)) as ws:
        frame = create("y" * (CONTENT_LIMIT + 1))
        await send(ws, **frame)
        error = await recv(ws)
        assert (error["type"], error["code"], error["ref"]) == (
            "error",
            "too_large",
            frame["client_id"],
        )
        await ws.send('{"type": "ping"}')
        assert (await recv(ws))["type"] == "pong"
    conversation = await new_conversation(server, user)
    response = await post_message(server, user, conversation["id"], "y" * (CONTENT_LIMIT + 1))
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "too_large"


@pytest.mark.parametrize("path", ["/api/v1/conversations", "/api/v1/tickets"])
def test_a_body_over_the_limit_is_413_too_large(server: RunningServer, path: str) -> None:
    response = httpx.post(
        f"{server.base_url}{path}",
        headers={**bearer(new_user()), "Content-Type": "application/json"},
        content=b'{"title": "' + b"z" * BODY_LIMIT + b'"}',
    )
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "too_large"


async def test_the_message_rate_is_limited_per_user_on_both_transports(
    server: RunningServer,
) -> None:
    user = new_user()
    async with ws_connect(server, bearer(user)) as ws:
        first = await chat(ws, "one")
        conversation_id = first[0]["conversation_id"]
        for content in ("two", "three", "four"):
            frames = await chat(ws, content, conversation_id=conversation_id)
            assert frames[-1]["type"] == "generation.completed"
        fifth = create("five", conversation_id=conversation_id)
        await send(ws, **fifth)
        error = await recv(ws)
        assert (error["code"], error["ref"]) == ("rate_limited", fifth["client_id"])
    response = await post_message(server, user, conversation_id, "six")
    assert response.status_code == 429
    assert response.json()["error"]["code"] == "rate_limited"
    assert 1 <= int(response.headers["retry-after"]) <= 15
    # refused messages were not stored; another user has a rate of their own
    stored = await history(server, user, conversation_id)
    assert [m["content"] for m in stored if m["role"] == "user"] == ["one", "two", "three", "four"]
    async with ws_connect(server, bearer(new_user())) as ws:
        assert (await chat(ws, "mine"))[-1]["type"] == "generation.completed"


async def test_subscribe_resume_and_cancel_frames_are_rate_limited_per_user(
    server: RunningServer,
) -> None:
    user = new_user()
    async with ws_connect(server, bearer(user)) as ws:
        frames = await chat(ws, "one")
        conversation_id, reply_id = frames[0]["conversation_id"], frames[-1]["generation_id"]
        # the frame rate is a bucket of its own: the message above did not spend it
        await send(ws, type="conversation.subscribe", conversation_id=conversation_id)
        await send(ws, type="conversation.subscribe", conversation_id=conversation_id)
        await send(ws, type="generation.resume", generation_id=reply_id, offset=0)
        replayed = [await recv(ws) for _ in range(3)]  # started, the text, completed
        assert [f["type"] for f in replayed][-1] == "generation.completed"
        await send(ws, type="generation.resume", generation_id=reply_id, offset=0)
        refused = await recv(ws)
        assert (refused["type"], refused["code"], refused["ref"]) == (
            "error",
            "rate_limited",
            reply_id,
        )
        assert "retry in" in refused["message"]
        await send(ws, type="ping")  # free, and the connection is fine
        assert (await recv(ws))["type"] == "pong"
    # a rate per user, on every connection of theirs; another user has their own
    async with ws_connect(server, bearer(user)) as ws:
        await send(ws, type="conversation.subscribe", conversation_id=conversation_id)
        assert (await recv(ws))["code"] == "rate_limited"
    async with ws_connect(server, bearer(new_user())) as ws:
        await send(ws, type="conversation.subscribe", conversation_id=conversation_id)
        assert (await recv(ws))["code"] == "not_found"  # not theirs: checked, not limited


async def test_connections_per_user_are_limited_before_the_upgrade(
    server: RunningServer,
) -> None:
    user = new_user()
    async with ws_connect(server, bearer(user)) as one:
        frames = await chat(one, "something to stream later")
        generation_id = frames[-1]["generation_id"]
        async with ws_connect(server, bearer(user)):
            status, body = await refused_upgrade(server, bearer(user))
            assert (status, body["error"]["code"]) == (429, "rate_limited")
            response = await request(
                "GET",
                f"{server.base_url}/api/v1/generations/{generation_id}/events",
                headers=bearer(user),
            )
            assert response.status_code == 429
            # another user is not affected
            async with ws_connect(server, bearer(new_user())):
                pass
        # a closed connection frees its slot
        for _ in range(50):
            try:
                async with ws_connect(server, bearer(user)) as again:
                    await again.send('{"type": "ping"}')
                    await until(again, "pong")
                break
            except Exception:
                await asyncio.sleep(0.1)
        else:
            raise AssertionError("the slot of a closed connection was not freed")


async def test_running_replies_per_user_are_limited(server: RunningServer) -> None:
    user = new_user()
    async with ws_connect(server, bearer(user)) as ws:
        await send(ws, **create("a long one", model="slow"))
        await until(ws, "generation.started")
        refused = create("another conversation meanwhile")
        await send(ws, **refused)
        error = await until(ws, "error")
        assert (error["code"], error["ref"]) == ("rate_limited", refused["client_id"])
        conversation = await new_conversation(server, user)
        response = await post_message(server, user, conversation["id"], "and over HTTP")
        assert response.status_code == 429
        await until(ws, "generation.completed", timeout=20)
        # the slot is free again once the reply ended (4 attempts: within the rate)
        assert (await chat(ws, "now it fits"))[-1]["type"] == "generation.completed"


async def test_an_idle_connection_is_closed(server: RunningServer) -> None:
    async with ws_connect(server, bearer(new_user())) as ws:
        started = time.monotonic()
        with pytest.raises(ConnectionClosed) as closed:
            await recv(ws, timeout=15)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1000
    assert 0.9 < time.monotonic() - started < 8
