"""Browser origins: the server's own and the configured ones may use the API
and open /ws; any other page gets 403 JSON before an upgrade. Clients that
send no Origin (scripts, servers) are judged by their credentials alone."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.server import RunningServer

from .support import (
    bearer,
    new_user,
    refused_upgrade,
    request,
    serve_jwt,
    until,
    ws_connect,
)

ALLOWED = "https://app.example.com"


@pytest.fixture(scope="module")
def listed_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    yield from serve_jwt(
        tmp_path_factory, "origins", SANIC_CHAT_ALLOWED_ORIGINS=f"{ALLOWED},http://localhost:5173"
    )


def own_origin(server: RunningServer) -> str:
    return server.base_url  # http://127.0.0.1:PORT, which is also the Host httpx sends


async def _ws_opens(server: RunningServer, headers: dict[str, str], origin: str | None) -> None:
    async with ws_connect(server, headers, origin=origin) as ws:
        await ws.send('{"type": "ping"}')
        await until(ws, "pong")


@pytest.mark.parametrize("which", ["none", "own", "listed", "listed-dev"])
async def test_allowed_origins_reach_the_api_and_open_the_websocket(
    listed_server: RunningServer, which: str
) -> None:
    origin = {
        "none": None,
        "own": own_origin(listed_server),
        "listed": ALLOWED,
        "listed-dev": "http://localhost:5173",
    }[which]
    headers = bearer(new_user())
    api_headers = {**headers, **({"Origin": origin} if origin else {})}
    response = await request(
        "GET", f"{listed_server.base_url}/api/v1/conversations", headers=api_headers
    )
    assert response.status_code == 200
    if origin is not None and which != "own":
        assert response.headers["access-control-allow-origin"] == origin
    await _ws_opens(listed_server, headers, origin)


@pytest.mark.parametrize(
    "origin",
    [
        "https://evil.example",
        "https://app.example.com.evil.example",
        "http://app.example.com",  # the listed host on another scheme
        "https://app.example.com:8443",  # ... or another port
        "null",  # sandboxed iframes, file:// pages
        "http://127.0.0.1:1",  # the server's host on another port
        "not an origin",
    ],
)
async def test_other_origins_are_refused_with_403_before_any_upgrade(
    listed_server: RunningServer, origin: str
) -> None:
    headers = bearer(new_user())
    response = await request(
        "GET",
        f"{listed_server.base_url}/api/v1/conversations",
        headers={**headers, "Origin": origin},
    )
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "unauthorized"
    assert "access-control-allow-origin" not in response.headers
    posted = await request(
        "POST",
        f"{listed_server.base_url}/api/v1/conversations",
        headers={**headers, "Origin": origin},
        json={"title": "csrf"},
    )
    assert posted.status_code == 403
    status, body = await refused_upgrade(listed_server, headers, origin=origin)
    assert (status, body["error"]["code"]) == (403, "unauthorized")


def test_a_cors_preflight_from_a_listed_origin_is_answered(listed_server: RunningServer) -> None:
    response = httpx.options(
        f"{listed_server.base_url}/api/v1/conversations",
        headers={
            "Origin": ALLOWED,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization,content-type",
        },
    )
    assert response.status_code == 204
    assert response.headers["access-control-allow-origin"] == ALLOWED
    assert "authorization" in response.headers["access-control-allow-headers"].lower()
    assert "access-control-allow-credentials" not in response.headers


async def test_by_default_only_the_servers_own_origin_is_allowed(
    jwt_server: RunningServer,
) -> None:
    headers = bearer(new_user())
    await _ws_opens(jwt_server, headers, own_origin(jwt_server))
    await _ws_opens(jwt_server, headers, None)
    port = jwt_server.base_url.rsplit(":", 1)[1]
    for origin in (f"http://localhost:{port}", "https://app.example.com"):
        # localhost is not the Host 127.0.0.1 this client sends: another origin
        status, _ = await refused_upgrade(jwt_server, headers, origin=origin)
        assert status == 403
        response = await request(
            "GET",
            f"{jwt_server.base_url}/api/v1/conversations",
            headers={**headers, "Origin": origin},
        )
        assert response.status_code == 403


# --------------------------------------------------------------------------- no auth


async def test_without_auth_a_rebound_host_name_is_refused(open_server: RunningServer) -> None:
    """DNS rebinding: evil.example re-resolved to 127.0.0.1 is same-origin with
    itself, but its Host header gives it away."""
    port = open_server.base_url.rsplit(":", 1)[1]
    rebound = {"Host": f"evil.example:{port}", "Origin": f"http://evil.example:{port}"}
    response = await request("GET", f"{open_server.base_url}/api/v1/conversations", headers=rebound)
    assert response.status_code == 403
    # a same-origin GET carries no Origin at all: the Host alone must give it away
    response = await request(
        "GET", f"{open_server.base_url}/api/v1/conversations", headers={"Host": rebound["Host"]}
    )
    assert response.status_code == 403
    status, _ = await refused_upgrade(open_server, rebound)
    assert status == 403
    for host in (f"localhost:{port}", f"127.0.0.1:{port}", f"[::1]:{port}"):
        response = await request(
            "GET", f"{open_server.base_url}/api/v1/conversations", headers={"Host": host}
        )
        assert response.status_code == 200, host
