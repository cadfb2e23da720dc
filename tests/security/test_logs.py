"""No secrets in logs: tickets (they ride in query strings), tokens and the JWT
secret never reach the server log, even with the access log on; user content
only when SANIC_CHAT_LOG_CONTENT=1 asks for it."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest

from tests.server import RunningServer

from .support import (
    SECRET,
    bearer,
    chat,
    mint_ticket,
    new_user,
    refused_upgrade,
    serve_jwt,
    sse_lines,
    token,
    ws_connect,
)


async def test_tickets_tokens_secrets_and_content_stay_out_of_the_log(
    jwt_server: RunningServer,
) -> None:
    """The shared server runs with --access-log, which prints every URL."""
    user = new_user()
    jwt = token(user)
    content = f"private words {uuid.uuid4()}"
    ticket = mint_ticket(jwt_server, {"Authorization": f"Bearer {jwt}"})
    async with ws_connect(jwt_server, query=f"ticket={ticket}") as ws:
        frames = await chat(ws, content)
    used_twice, _ = await refused_upgrade(jwt_server, query=f"ticket={ticket}")
    assert used_twice == 401
    sse_ticket = mint_ticket(jwt_server, bearer(user))
    status, _ = sse_lines(
        jwt_server, f"/api/v1/generations/{frames[-1]['generation_id']}/events", ticket=sse_ticket
    )
    assert status == 200
    bad_jwt = token(user, exp=int(time.time()) - 10)
    await refused_upgrade(jwt_server, {"Authorization": f"Bearer {bad_jwt}"})
    await asyncio.sleep(0.3)  # the access log line is written after the response
    log = jwt_server.log()
    assert "ticket=[redacted]" in log  # the access log did print those URLs
    for secret in (ticket, sse_ticket, jwt, bad_jwt, SECRET, content):
        assert secret not in log


@pytest.fixture(scope="module")
def chatty_server(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    yield from serve_jwt(
        tmp_path_factory, "chatty", SANIC_CHAT_LOG_CONTENT="1", SANIC_CHAT_LOG_LEVEL="DEBUG"
    )


async def test_content_is_logged_only_when_asked_for(chatty_server: RunningServer) -> None:
    content = f"words meant for the log {uuid.uuid4()}"
    async with ws_connect(chatty_server, bearer(new_user())) as ws:
        await chat(ws, content)
    await asyncio.sleep(0.2)
    assert content in chatty_server.log()
