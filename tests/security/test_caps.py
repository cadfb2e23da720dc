"""Connection and reply caps: per user only when there are users (``jwt``),
per process always."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import AsyncExitStack
from pathlib import Path

import pytest
from websockets.exceptions import InvalidStatus

from sanic_chat.config import ConfigError, Settings
from tests.server import RunningServer

from .support import chat, recv, refused_upgrade, send, serve_jwt, ws_connect

JWT = {"SANIC_CHAT_AUTH": "jwt", "SANIC_CHAT_JWT_SECRET": "s" * 40}


def settings(tmp_path: Path, **env: str) -> Settings:
    return Settings.from_env({"SANIC_CHAT_DATA_DIR": str(tmp_path), **env})


def caps(s: Settings) -> tuple[int | None, int | None, int]:
    return s.max_connections_per_user, s.max_running_replies_per_user, s.max_connections


def test_with_no_auth_the_per_user_caps_are_off_and_the_process_cap_holds(tmp_path: Path) -> None:
    assert caps(settings(tmp_path)) == (None, None, 10_000)
    assert caps(settings(tmp_path, SANIC_CHAT_AUTH="none")) == (None, None, 10_000)


def test_with_jwt_each_user_has_20_connections_and_4_running_replies(tmp_path: Path) -> None:
    assert caps(settings(tmp_path, **JWT)) == (20, 4, 10_000)


def test_explicit_caps_are_honoured_with_either_auth(tmp_path: Path) -> None:
    explicit = {
        "SANIC_CHAT_MAX_CONNECTIONS_PER_USER": "7",
        "SANIC_CHAT_MAX_RUNNING_REPLIES_PER_USER": "2",
        "SANIC_CHAT_MAX_CONNECTIONS": "300",
    }
    assert caps(settings(tmp_path, SANIC_CHAT_AUTH="none", **explicit)) == (7, 2, 300)
    assert caps(settings(tmp_path, **JWT, **explicit)) == (7, 2, 300)
    off = {
        "SANIC_CHAT_MAX_CONNECTIONS_PER_USER": "off",
        "SANIC_CHAT_MAX_RUNNING_REPLIES_PER_USER": "OFF",
    }
    assert caps(settings(tmp_path, **JWT, **off)) == (None, None, 10_000)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("MAX_CONNECTIONS_PER_USER", "0"),
        ("MAX_RUNNING_REPLIES_PER_USER", "many"),
        ("MAX_CONNECTIONS", "off"),
        ("MAX_CONNECTIONS", "0"),
    ],
)
def test_a_wrong_cap_names_its_variable(tmp_path: Path, name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=f"SANIC_CHAT_{name}="):
        settings(tmp_path, **{f"SANIC_CHAT_{name}": value})


# --------------------------------------------------------------------------- a real server

PROCESS_CAP = 3


@pytest.fixture(scope="module")
def capped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    yield from serve_jwt(
        tmp_path_factory,
        "caps",
        SANIC_CHAT_AUTH="none",
        SANIC_CHAT_MAX_CONNECTIONS=str(PROCESS_CAP),
    )


async def test_the_process_cap_refuses_the_next_connection_with_429_until_one_closes(
    capped: RunningServer,
) -> None:
    async with AsyncExitStack() as stack:
        sockets = [await stack.enter_async_context(ws_connect(capped)) for _ in range(PROCESS_CAP)]
        status, body = await refused_upgrade(capped)
        assert status == 429
        assert body["error"] == {
            "code": "rate_limited",
            "message": f"the server is at its limit of {PROCESS_CAP} open connections: "
            "retry in a moment",
        }
        # the connections that are in still work
        assert (await chat(sockets[0], "still served"))[-1]["type"] == "generation.completed"
        await sockets[-1].close()
        for _ in range(50):  # the handler gives its slot back as it ends
            try:
                async with ws_connect(capped) as again:
                    await send(again, type="ping")
                    assert (await recv(again))["type"] == "pong"
                break
            except (OSError, InvalidStatus):
                await asyncio.sleep(0.1)
        else:
            raise AssertionError("the slot of a closed connection was not freed")
    assert "this process has its maximum of 3 open connections" in capped.log()
