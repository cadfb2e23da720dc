"""Isolation: user B, holding user A's ids, gets on every REST path, SSE stream
and WebSocket frame exactly the answer an unknown id gets -- and nothing of
A's, while A's reply is running. On SQLite and on PostgreSQL."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection

from tests.server import RunningServer

from .support import (
    bearer,
    chat,
    create,
    history,
    jwt_env,
    mint_ticket,
    new_user,
    postgres_schema,
    recv,
    send,
    server_with,
    until,
    ws_connect,
)


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningServer]:
    if request.param == "sqlite":
        yield request.getfixturevalue("jwt_server")
        return
    with postgres_schema() as url:
        env = jwt_env(tmp_path_factory.mktemp("pg"), SANIC_CHAT_DATABASE_URL=url)
        with server_with(env) as running:
            yield running


@dataclass
class WorldOfA:
    user: str
    ws: ClientConnection
    conversation_id: str
    user_message_id: str
    client_id: str
    done_generation_id: str
    running_generation_id: str
    secret_text: str

    @property
    def ids(self) -> list[str]:
        return [
            self.conversation_id,
            self.user_message_id,
            self.done_generation_id,
            self.running_generation_id,
        ]


@pytest.fixture
async def a(server: RunningServer) -> AsyncIterator[WorldOfA]:
    """A's conversation: one finished reply, and one still running (slow model)."""
    user = new_user()
    secret_text = f"A's secret {uuid.uuid4()}"
    async with ws_connect(server, bearer(user)) as ws:
        first = create(secret_text)
        await send(ws, **first)
        accepted = await until(ws, "message.accepted")
        done = await until(ws, "generation.completed")
        await send(
            ws, **create(secret_text, conversation_id=accepted["conversation_id"], model="slow")
        )
        running = await until(ws, "generation.started")
        yield WorldOfA(
            user=user,
            ws=ws,
            conversation_id=accepted["conversation_id"],
            user_message_id=accepted["message"]["id"],
            client_id=first["client_id"],
            done_generation_id=done["generation_id"],
            running_generation_id=running["generation_id"],
            secret_text=secret_text,
        )
        # A's reply ran to its end, untouched by anything B did
        completed = await until(ws, "generation.completed", timeout=30)
        assert completed["generation_id"] == running["generation_id"]
        assert completed["message"]["status"] == "complete"
    stored = await history(server, user, accepted["conversation_id"])
    assert [m["status"] for m in stored] == ["complete"] * 4


def still_streaming(server: RunningServer, a: WorldOfA) -> bool:
    """A's reply was running all along (the fixture then sees it complete)."""
    response = httpx.get(
        f"{server.base_url}/api/v1/conversations/{a.conversation_id}/messages",
        headers=bearer(a.user),
    )
    statuses = {m["id"]: m["status"] for m in response.json()["items"]}
    return statuses[a.running_generation_id] == "streaming"


def _normalized(text: str, *ids: str) -> str:
    for value in ids:
        text = text.replace(value, "<id>")
    return text


def test_rest_and_sse_answer_as_for_unknown_ids(server: RunningServer, a: WorldOfA) -> None:
    b = bearer(new_user())
    unknown = str(uuid.uuid4())
    base = server.base_url

    def answer(method: str, path: str, **kwargs: Any) -> tuple[int, str]:
        if "/events" in path:
            headers = kwargs.pop("headers", b)
            with httpx.stream(method, base + path, headers=headers, timeout=10, **kwargs) as r:
                r.read()
                return r.status_code, r.text
        response = httpx.request(method, base + path, headers=b, timeout=10, **kwargs)
        return response.status_code, response.text

    paths: list[tuple[str, str, dict[str, Any]]] = [
        ("GET", "/api/v1/conversations/{c}", {}),
        ("GET", "/api/v1/conversations/{c}/messages", {}),
        ("GET", "/api/v1/conversations/{c}/messages?before={m}", {}),
        (
            "POST",
            "/api/v1/conversations/{c}/messages",
            {"json": {"client_id": str(uuid.uuid4()), "content": "mine now"}},
        ),
        ("GET", "/api/v1/conversations/{c}/events", {}),
        ("GET", "/api/v1/conversations/{c}/events?last_event_id={g}:0", {}),
        ("GET", "/api/v1/generations/{g}/events", {}),
        ("GET", "/api/v1/generations/{d}/events", {}),
        ("GET", "/api/v1/generations/{m}/events", {}),
        ("POST", "/api/v1/generations/{g}/cancel", {}),
        ("POST", "/api/v1/generations/{d}/cancel", {}),
        ("DELETE", "/api/v1/conversations/{c}", {}),
    ]
    for method, template, kwargs in paths:
        theirs = template.format(
            c=a.conversation_id,
            m=a.user_message_id,
            g=a.running_generation_id,
            d=a.done_generation_id,
        )
        mine = template.format(c=unknown, m=unknown, g=unknown, d=unknown)
        got = answer(method, theirs, **kwargs)
        expected = answer(method, mine, **kwargs)
        assert got[0] == 404, (method, theirs, got)
        assert _normalized(got[1], *a.ids) == _normalized(expected[1], unknown), (method, theirs)
        assert a.secret_text not in got[1]

    # a ticket of B's on A's streams: the same 404
    for template in ("/api/v1/conversations/{c}/events", "/api/v1/generations/{g}/events"):
        path = template.format(c=a.conversation_id, g=a.running_generation_id)
        ticket = mint_ticket(server, b)
        status, _ = answer("GET", f"{path}?ticket={ticket}", headers={})
        assert status == 404

    # B's list holds none of A's conversations; A's is intact
    assert still_streaming(server, a)
    listed = httpx.get(f"{base}/api/v1/conversations", headers=b).json()
    assert listed["items"] == []
    assert (
        httpx.get(
            f"{base}/api/v1/conversations/{a.conversation_id}", headers=bearer(a.user)
        ).status_code
        == 200
    )


async def test_websocket_frames_answer_as_for_unknown_ids(
    server: RunningServer, a: WorldOfA
) -> None:
    unknown = str(uuid.uuid4())
    b_user = new_user()
    async with ws_connect(server, bearer(b_user)) as ws:
        # B has a conversation of its own, to aim cross-conversation frames from
        own = await chat(ws, "B's own words")
        b_conversation = own[0]["conversation_id"]
        received: list[dict[str, Any]] = []

        async def answer(frame: dict[str, Any]) -> dict[str, Any]:
            await send(ws, **frame)
            got = await recv(ws)
            received.append(got)
            return got

        frames: list[dict[str, Any]] = [
            {"type": "conversation.subscribe", "conversation_id": "{c}"},
            {
                "type": "conversation.subscribe",
                "conversation_id": "{c}",
                "generation_id": "{g}",
                "offset": 0,
            },
            {
                "type": "conversation.subscribe",
                "conversation_id": b_conversation,
                "generation_id": "{g}",
                "offset": 0,
            },
            {"type": "generation.resume", "generation_id": "{g}", "offset": 0},
            {"type": "generation.resume", "generation_id": "{d}", "offset": 0},
            {"type": "generation.resume", "generation_id": "{m}", "offset": 0},
            {"type": "generation.cancel", "generation_id": "{g}"},
            {"type": "generation.cancel", "generation_id": "{d}"},
            {
                "type": "message.create",
                "client_id": "{k}",
                "content": "hi",
                "conversation_id": "{c}",
            },
        ]
        for template in frames:
            theirs = json.loads(
                json.dumps(template)
                .replace("{c}", a.conversation_id)
                .replace("{g}", a.running_generation_id)
                .replace("{d}", a.done_generation_id)
                .replace("{m}", a.user_message_id)
                .replace("{k}", str(uuid.uuid4()))
            )
            mine = json.loads(
                json.dumps(template)
                .replace("{k}", str(uuid.uuid4()))
                .replace("{c}", unknown)
                .replace("{g}", unknown)
                .replace("{d}", unknown)
                .replace("{m}", unknown)
            )
            got, expected = await answer(theirs), await answer(mine)
            assert got["type"] == "error" and got["code"] == "not_found", (template, got)
            got.pop("ref", None)
            expected.pop("ref", None)
            assert got == expected, template

        # A's client_id reused by B makes B's own conversation, never A's
        reused = await chat(ws, "B reusing A's client id", client_id=a.client_id)
        assert reused[0]["type"] == "message.accepted"
        assert reused[0]["conversation_id"] != a.conversation_id
        assert reused[0]["message"]["content"] == "B reusing A's client id"

        # nothing of A's reaches B, though A's reply is still streaming
        await ws.send('{"type": "ping"}')
        while (frame := await recv(ws))["type"] != "pong":
            received.append(frame)
        with pytest.raises(TimeoutError):
            received.append(await recv(ws, timeout=0.5))
    leaked = [
        f
        for f in received
        if a.secret_text in json.dumps(f)
        or any(i in json.dumps({k: v for k, v in f.items() if k != "ref"}) for i in a.ids)
    ]
    assert leaked == []
    assert still_streaming(server, a)
