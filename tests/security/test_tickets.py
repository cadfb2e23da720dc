"""One-time tickets: minted by an authenticated POST, good once, for a short
while, on /ws and the SSE streams only -- and on any node sharing the Redis."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from tests.server import RunningServer

from .support import (
    bearer,
    chat,
    mint_ticket,
    new_user,
    refused_upgrade,
    request,
    sse_lines,
    until,
    ws_connect,
)


async def test_a_ticket_opens_one_websocket_as_its_user_and_only_once(
    jwt_server: RunningServer,
) -> None:
    user = new_user()
    ticket = mint_ticket(jwt_server, bearer(user))
    async with ws_connect(jwt_server, query=f"ticket={ticket}") as ws:
        frames = await chat(ws, "hello over a ticket")
        assert frames[-1]["type"] == "generation.completed"
        conversation_id = frames[0]["conversation_id"]
    # the conversation belongs to the ticket's user
    response = await request(
        "GET", f"{jwt_server.base_url}/api/v1/conversations/{conversation_id}", headers=bearer(user)
    )
    assert response.status_code == 200
    status, body = await refused_upgrade(jwt_server, query=f"ticket={ticket}")
    assert (status, body["error"]["code"]) == (401, "unauthorized")


async def test_a_ticket_opens_either_sse_stream_once(jwt_server: RunningServer) -> None:
    user = new_user()
    async with ws_connect(jwt_server, bearer(user)) as ws:
        frames = await chat(ws, "something to stream")
    conversation_id = frames[0]["conversation_id"]
    generation_id = frames[-1]["generation_id"]
    for path in (
        f"/api/v1/conversations/{conversation_id}/events",
        f"/api/v1/generations/{generation_id}/events",
    ):
        ticket = mint_ticket(jwt_server, bearer(user))
        status, first = sse_lines(jwt_server, path, ticket=ticket)
        assert status == 200, first
        status, again = sse_lines(jwt_server, path, ticket=ticket)
        assert status == 401 and '"unauthorized"' in again


async def test_an_expired_ticket_is_refused(jwt_server: RunningServer) -> None:
    ticket = mint_ticket(jwt_server, bearer(new_user()))  # the shared server's tickets live 2 s
    await asyncio.sleep(2.3)
    status, body = await refused_upgrade(jwt_server, query=f"ticket={ticket}")
    assert (status, body["error"]["code"]) == (401, "unauthorized")


@pytest.mark.parametrize(
    "ticket", ["", "x", "A" * 43, "../../etc/passwd", "%00", "ticket" * 100, "' OR 1=1 --"]
)
async def test_made_up_tickets_are_refused(jwt_server: RunningServer, ticket: str) -> None:
    status, _ = await refused_upgrade(jwt_server, query=f"ticket={ticket}")
    # a raw space ends the request target: the request line is malformed, refused
    # before there is anything to authenticate
    assert status == (400 if " " in ticket else 401)


def test_a_ticket_is_not_a_credential_for_the_rest_of_the_api(jwt_server: RunningServer) -> None:
    user = new_user()
    for method, path in (
        ("GET", "/api/v1/conversations"),
        ("POST", "/api/v1/conversations"),
        ("POST", "/api/v1/tickets"),  # a ticket cannot mint more tickets
    ):
        ticket = mint_ticket(jwt_server, bearer(user))
        response = httpx.request(method, f"{jwt_server.base_url}{path}", params={"ticket": ticket})
        assert response.status_code == 401, (method, path)


def test_minting_needs_authentication_and_answers_no_store(jwt_server: RunningServer) -> None:
    refused = httpx.post(f"{jwt_server.base_url}/api/v1/tickets")
    assert refused.status_code == 401
    assert refused.json()["error"]["code"] == "unauthorized"
    minted = httpx.post(f"{jwt_server.base_url}/api/v1/tickets", headers=bearer(new_user()))
    assert minted.status_code == 201
    assert minted.headers["cache-control"] == "no-store"
    body = minted.json()
    assert len(body["ticket"]) >= 32 and body["expires_in"] == 2


def test_minting_is_capped_per_user(jwt_server: RunningServer) -> None:
    user = new_user()
    with httpx.Client(base_url=jwt_server.base_url, headers=bearer(user)) as client:
        statuses = [client.post("/api/v1/tickets").status_code for _ in range(65)]
        assert statuses[:60] == [201] * 60
        assert set(statuses[60:]) == {429}
        assert client.post("/api/v1/tickets").headers.get("retry-after")
        # another user is not affected
        assert client.post("/api/v1/tickets", headers=bearer(new_user())).status_code == 201


# --------------------------------------------------------------------------- no auth


async def test_without_auth_the_ticket_endpoint_still_answers(open_server: RunningServer) -> None:
    ticket = mint_ticket(open_server, {})
    async with ws_connect(open_server, query=f"ticket={ticket}") as ws:
        await ws.send('{"type": "ping"}')
        await until(ws, "pong")
