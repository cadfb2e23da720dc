"""Helpers for the security tests: real servers, tokens (honest and forged),
and small WebSocket / HTTP clients."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus

from tests.server import RunningServer, migrated_schema, run_server

SECRET = "test-secret-" + "x" * 52  # 64 bytes: enough even for HS512
TERMINAL = {"generation.completed", "generation.cancelled", "generation.failed"}
#: client frame types (docs/protocol.md) the hostile-input tests draw frames from
CLIENT_FRAME_TYPES = [
    "message.create",
    "generation.cancel",
    "conversation.subscribe",
    "generation.resume",
    "ping",
]

#: ``demo`` is quick; ``slow`` runs a few seconds (time to act while it runs)
MODELS_TOML = """
default = "demo"
[models.demo]
provider = "demo"
ttft_ms = 10
tokens_per_second = 400
reply_tokens = 20
[models.slow]
provider = "demo"
ttft_ms = 10
tokens_per_second = 20
reply_tokens = 60
"""


def models_file(directory: Path) -> str:
    path = directory / "models.toml"
    path.write_text(MODELS_TOML)
    return str(path)


def jwt_env(directory: Path, **extra: str) -> dict[str, str]:
    return {
        "SANIC_CHAT_AUTH": "jwt",
        "SANIC_CHAT_JWT_SECRET": SECRET,
        "SANIC_CHAT_MODELS": models_file(directory),
        "SANIC_CHAT_CHECKPOINT_INTERVAL_S": "0.1",
        **extra,
    }


@contextlib.contextmanager
def server_with(env: Mapping[str, str], *, args: tuple[str, ...] = ()) -> Iterator[RunningServer]:
    with run_server(env, args=args) as running:
        yield running


def serve_jwt(
    tmp_path_factory: pytest.TempPathFactory,
    name: str,
    *,
    args: tuple[str, ...] = (),
    **settings: str,
) -> Iterator[RunningServer]:
    """A server on ``jwt_env`` and ``settings``, its files in a fresh directory ``name``;
    a fixture's whole body is ``yield from serve_jwt(...)`` (stopped when it ends)."""
    with server_with(jwt_env(tmp_path_factory.mktemp(name), **settings), args=args) as running:
        yield running


@contextlib.contextmanager
def postgres_schema() -> Iterator[str]:
    """A database URL on a fresh, migrated PostgreSQL schema, dropped afterwards."""
    with migrated_schema(f"test_security_{uuid.uuid4().hex[:12]}") as url:
        yield url


# --------------------------------------------------------------------------- tokens


def token(sub: str | None = None, *, secret: str = SECRET, **claims: Any) -> str:
    now = int(time.time())
    body: dict[str, Any] = {"exp": now + 600, "iat": now, **claims}
    if sub is not None:
        body["sub"] = sub
    return jwt.encode(body, secret, algorithm="HS256")


def new_user() -> str:
    return f"user-{uuid.uuid4().hex[:12]}"


def bearer(user: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token(user)}"}


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forged(header: dict[str, Any], claims: dict[str, Any], key: bytes | None) -> str:
    """A JWT built by hand: ``key`` None leaves the signature empty (alg none);
    otherwise HMAC-SHA256 with ``key`` -- whatever the header claims. PyJWT
    itself refuses to make these, which is the point."""
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
    if key is None:
        return signing_input + "."
    signature = hmac.new(key, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64(signature)}"


# --------------------------------------------------------------------------- clients


def mint_ticket(server: RunningServer, headers: Mapping[str, str]) -> str:
    response = httpx.post(f"{server.base_url}/api/v1/tickets", headers=dict(headers))
    assert response.status_code == 201, response.text
    ticket: str = response.json()["ticket"]
    return ticket


@contextlib.asynccontextmanager
async def ws_connect(
    server: RunningServer,
    headers: Mapping[str, str] | None = None,
    *,
    query: str = "",
    origin: str | None = None,
    max_size: int | None = 16 * 1024 * 1024,
) -> AsyncIterator[ClientConnection]:
    url = server.ws_url + (f"?{query}" if query else "")
    async with connect(
        url,
        additional_headers=dict(headers or {}),
        origin=origin,  # type: ignore[arg-type]
        max_size=max_size,
        open_timeout=10,
        max_queue=None,  # a test that stops reading must still see the close handshake
    ) as ws:
        yield ws


async def refused_upgrade(
    server: RunningServer,
    headers: Mapping[str, str] | None = None,
    *,
    query: str = "",
    origin: str | None = None,
) -> tuple[int, dict[str, Any]]:
    """Open /ws expecting a refusal over HTTP; (status, JSON body)."""
    try:
        async with ws_connect(server, headers, query=query, origin=origin):
            pass
    except InvalidStatus as exc:
        body = exc.response.body or b"{}"
        return exc.response.status_code, json.loads(body)
    raise AssertionError("the upgrade was accepted")


async def recv(ws: ClientConnection, timeout: float = 10.0) -> dict[str, Any]:
    frame: dict[str, Any] = json.loads(await asyncio.wait_for(ws.recv(), timeout))
    return frame


async def send(ws: ClientConnection, **frame: Any) -> None:
    await ws.send(json.dumps(frame))


def create(content: str = "hello", **extra: Any) -> dict[str, Any]:
    return {"type": "message.create", "client_id": str(uuid.uuid4()), "content": content, **extra}


async def chat(ws: ClientConnection, content: str = "hello", **extra: Any) -> list[dict[str, Any]]:
    """Send one message and collect frames up to its reply's terminal event."""
    await send(ws, **create(content, **extra))
    frames = []
    while True:
        frame = await recv(ws)
        frames.append(frame)
        if frame["type"] in TERMINAL or frame["type"] == "error":
            return frames


async def until(ws: ClientConnection, kind: str, timeout: float = 10.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        frame = await recv(ws, max(0.1, deadline - time.monotonic()))
        if frame["type"] == kind:
            return frame


def sse_lines(
    server: RunningServer, path: str, headers: Mapping[str, str] | None = None, **params: str
) -> tuple[int, str]:
    """GET an SSE endpoint; (status, the body up to the first event or error)."""
    with httpx.stream(
        "GET", f"{server.base_url}{path}", headers=dict(headers or {}), params=params, timeout=10
    ) as response:
        if response.status_code != 200:
            response.read()
            return response.status_code, response.text
        for line in response.iter_lines():
            if line.startswith("event:") or line.startswith(":"):
                return 200, line
    return 200, ""


async def request(method: str, url: str, **kwargs: Any) -> httpx.Response:
    """An HTTP request that does not block the event loop (other clients of
    the same test keep running)."""
    async with httpx.AsyncClient(timeout=10) as client:
        return await client.request(method, url, **kwargs)


async def new_conversation(server: RunningServer, user: str) -> dict[str, Any]:
    """A conversation of ``user``'s, created over HTTP (the created resource)."""
    response = await request(
        "POST", f"{server.base_url}/api/v1/conversations", headers=bearer(user), json={}
    )
    return dict(response.json())


async def post_message(
    server: RunningServer, user: str, conversation_id: str, content: str
) -> httpx.Response:
    """``user`` posts ``content`` to a conversation over HTTP, with a fresh client id."""
    return await request(
        "POST",
        f"{server.base_url}/api/v1/conversations/{conversation_id}/messages",
        headers=bearer(user),
        json={"client_id": str(uuid.uuid4()), "content": content},
    )


async def history(
    server: RunningServer, user: str, conversation_id: str, query: str = ""
) -> list[dict[str, Any]]:
    """A conversation's messages as ``user`` reads them over HTTP (``query``: e.g.
    ``?limit=200``)."""
    response = await request(
        "GET",
        f"{server.base_url}/api/v1/conversations/{conversation_id}/messages{query}",
        headers=bearer(user),
    )
    return list(response.json()["items"])


async def whole_history(
    server: RunningServer, user: str, conversation_id: str
) -> list[dict[str, Any]]:
    """Every message of a conversation, oldest first, following ``next_before``."""
    items: list[dict[str, Any]] = []
    query = "?limit=200"
    while True:
        response = await request(
            "GET",
            f"{server.base_url}/api/v1/conversations/{conversation_id}/messages{query}",
            headers=bearer(user),
        )
        page = response.json()
        items = list(page["items"]) + items
        if not page["next_before"]:
            return items
        query = f"?limit=200&before={page['next_before']}"
